"""GLUE metrics against values computed by hand."""

import math

import pytest

from adarank.metrics.glue import glue_metrics


def test_matthews_correlation():
    # TP=2, TN=1, FP=0, FN=1: (2*1 - 0*1) / sqrt(2*3*1*2) = 2 / sqrt(12)
    out = glue_metrics("cola", [1, 0, 0, 1], [1, 0, 1, 1])
    assert out == {"matthews_correlation": pytest.approx(100 * 2 / math.sqrt(12))}


def test_accuracy_and_binary_f1():
    # preds 1,1,0,0 vs refs 1,0,0,1: accuracy 2/4; precision 1/2, recall 1/2 -> F1 1/2
    out = glue_metrics("mrpc", [1, 1, 0, 0], [1, 0, 0, 1])
    assert out == {"accuracy": pytest.approx(50.0), "f1": pytest.approx(50.0)}


def test_pearson_and_spearman():
    # y = 2x exactly linear -> pearson 1; ranks of [1,3,2] vs [1,2,3] -> spearman 0.5
    assert glue_metrics("stsb", [2.0, 4.0, 6.0], [1.0, 2.0, 3.0])["pearson"] == pytest.approx(100.0)
    assert glue_metrics("stsb", [1.0, 3.0, 2.0], [1.0, 2.0, 3.0])["spearman"] == pytest.approx(50.0)


def test_constant_prediction_has_zero_correlation():
    assert glue_metrics("stsb", [1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0}
    # a constant whose float std is 4e-16, not 0 (the STS-B trivial baseline printed nan before)
    assert glue_metrics("stsb", [2.7] * 7, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 2.5]) == {"pearson": 0.0, "spearman": 0.0}


def test_mismatched_lengths_and_unknown_tasks_are_errors():
    with pytest.raises(ValueError, match="predictions"):
        glue_metrics("rte", [1, 0], [1])
    with pytest.raises(ValueError, match="no GLUE metrics"):
        glue_metrics("wnli", [1], [1])
