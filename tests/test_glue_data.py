"""Reading GLUE TSV files: real quirks, clear errors."""

import pytest
from omegaconf import OmegaConf

from adarank.data.glue import TSV_LAYOUTS, GlueDataError, check_local_files, load_local, read_tsv
from tests.conftest import CONF_DIR


def task_cfg(name):
    return OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml")


@pytest.mark.parametrize(
    "task,train_rows,dev_rows",
    [("rte", 2490, 277), ("mrpc", 3668, 408), ("stsb", 5749, 1500), ("cola", 8551, 1043)],
)
def test_real_glue_files_give_the_documented_row_counts(real_glue_dir, task, train_rows, dev_rows):
    data = load_local(task_cfg(task), str(real_glue_dir))
    assert len(data["train"].labels) == train_rows
    assert len(data["validation"].labels) == dev_rows


def test_real_quirks_bom_quotes_and_labels(real_glue_dir):
    mrpc = load_local(task_cfg("mrpc"), str(real_glue_dir))
    # MRPC starts with a BOM and has quote characters inside sentences
    assert set(mrpc["train"].labels) == {0, 1}
    assert any('"' in a for a, _ in mrpc["train"].texts)
    rte = load_local(task_cfg("rte"), str(real_glue_dir))
    assert set(rte["validation"].labels) == {0, 1}  # entailment / not_entailment
    stsb = load_local(task_cfg("stsb"), str(real_glue_dir))
    assert stsb["train"].labels[0] == 5.0 and isinstance(stsb["train"].labels[0], float)


def test_a_short_row_is_reported_with_file_and_line(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta .\tb .\tentailment\n1\tonly two\n")
    with pytest.raises(GlueDataError, match=r"dev.tsv:3: expected 4"):
        read_tsv(str(path), TSV_LAYOUTS["rte"])


def test_an_unknown_label_is_reported(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta .\tb .\tmaybe\n")
    with pytest.raises(GlueDataError, match=r"dev.tsv:2: unreadable label 'maybe'"):
        read_tsv(str(path), TSV_LAYOUTS["rte"])


def test_missing_files_name_the_expected_layout(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text("x")
    with pytest.raises(GlueDataError, match=r"RTE/dev.tsv"):
        check_local_files(task_cfg("rte"), str(tmp_path))


def test_mnli_reads_both_dev_sets(tiny_glue_dir):
    data = load_local(task_cfg("mnli"), str(tiny_glue_dir))
    assert set(data) == {"train", "validation_matched", "validation_mismatched"}
    assert set(data["train"].labels) == {0, 1, 2}


def test_trivial_baseline_is_on_the_scored_examples(make_cfg, tiny_glue_dir):
    """train.max_eval_samples=7 scores the first 7 dev examples: the constant prediction's metrics
    are computed on those 7 (the majority class among them), and metrics.json says on how many."""
    from adarank.data.glue import load_glue_task
    from adarank.models import load_tokenizer

    cfg, _ = make_cfg(["task=rte", "train.max_eval_samples=7"])
    data = load_glue_task(cfg.task, cfg.data, cfg.train, load_tokenizer(cfg.model, cfg.data.cache_dir))
    scored = load_local(cfg.task, str(tiny_glue_dir))["validation"].labels[:7]
    majority = max(scored.count(0), scored.count(1))
    assert data.info["trivial_baseline_examples"] == data.info["validation_examples"] == 7
    assert data.info["trivial_baseline"]["accuracy"] == pytest.approx(100 * majority / 7)
    assert data.info["majority_class_accuracy"] == pytest.approx(100 * majority / 7)
