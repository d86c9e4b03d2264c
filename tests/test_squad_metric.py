"""The SQuAD 2.0 scorer against hand-worked values (all scores on the 0-100 scale)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adarank.metrics.squad_v2 import (
    best_threshold,
    effective_golds,
    exact_match,
    normalize_answer,
    squad_v2_scores,
    token_f1,
)


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  An apple,  a day!  ", "apple day"),
        ("Théâtre and theater", "théâtre and theater"),  # "the" only as a whole word
        ("U.S.A.", "usa"),
        ("well-known", "wellknown"),  # punctuation is deleted, not replaced by a space
        ("a", ""),
        ("", ""),
        ("The\tanswer\n is 42.", "answer is 42"),
    ],
)
def test_normalisation(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_exact_match_after_normalisation():
    assert exact_match("the Eiffel Tower", "Eiffel Tower") == 1
    assert exact_match("Eiffel Tower", "eiffel tower.") == 1
    assert exact_match("Eiffel Tower", "Eiffel") == 0
    assert exact_match("", "") == 1
    assert exact_match("", "Paris") == 0


def test_token_f1_hand_worked():
    # pred {paris, france} vs gold {paris}: precision 1/2, recall 1 -> 2/3
    assert token_f1("Paris", "Paris France") == pytest.approx(2 / 3)
    # multiset overlap: gold "a b b c" normalises to tokens b b c ("a" is an article), pred b b b:
    # overlap 2 (b twice) -> precision 2/3, recall 2/3 -> F1 2/3
    assert token_f1("a b b c", "b b b") == pytest.approx(2 / 3)
    assert token_f1("red apple tree", "green tree apple") == pytest.approx(2 / 3)
    assert token_f1("Paris", "London") == 0.0
    # empty on either side: 1 only when both are empty
    assert token_f1("", "") == 1.0
    assert token_f1("", "Paris") == 0.0
    assert token_f1("Paris", "") == 0.0
    assert token_f1("the", "a") == 1.0  # both normalise to no tokens


def test_golds_normalising_to_empty_are_dropped():
    assert effective_golds(["The", "Paris"]) == ["Paris"]
    assert effective_golds([]) == [""]
    assert effective_golds(["a", "!"]) == [""]


def test_three_question_golden_case():
    """The case verified against the official script (ecosystem.md section 3)."""
    references = {"q1": ["Eiffel Tower"], "q2": [], "q3": ["Paris"]}
    predictions = {"q1": "the Eiffel Tower", "q2": "", "q3": "Paris France"}
    m = squad_v2_scores(references, predictions)
    assert m["exact"] == pytest.approx(200 / 3)
    assert m["f1"] == pytest.approx(100 * (1 + 1 + 2 / 3) / 3)  # 88.89
    assert m["total"] == 3
    assert m["HasAns_exact"] == pytest.approx(50.0)
    assert m["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)  # 83.33
    assert m["HasAns_total"] == 2
    assert m["NoAns_exact"] == m["NoAns_f1"] == 100.0
    assert m["NoAns_total"] == 1


def test_several_gold_answers_take_the_maximum():
    references = {"q": ["Denver Broncos", "Broncos", "the Denver Broncos team"]}
    assert squad_v2_scores(references, {"q": "Broncos"})["exact"] == 100.0
    m = squad_v2_scores(references, {"q": "Denver"})
    # best gold for F1 is "Denver Broncos": p 1, r 1/2 -> 2/3
    assert m["exact"] == 0.0
    assert m["f1"] == pytest.approx(200 / 3)


def test_unanswerable_answered_and_not_answered():
    references = {"answered": [], "abstained": []}
    m = squad_v2_scores(references, {"answered": "Paris", "abstained": ""})
    assert m["exact"] == m["f1"] == 50.0
    assert m["NoAns_exact"] == 50.0
    assert "HasAns_exact" not in m
    # an answerable question answered with "" scores 0
    m = squad_v2_scores({"q": ["Paris"]}, {"q": ""})
    assert m["exact"] == m["f1"] == 0.0
    assert "NoAns_exact" not in m


# A small prediction file worked by hand:
#   q1 golds "Denver Broncos" / "The Denver Broncos", pred "Broncos"          EM 0  F1 2/3
#   q2 gold "1889", pred "in 1889"                                            EM 0  F1 2/3
#   q3 unanswerable, pred ""                                                  EM 1  F1 1
#   q4 unanswerable, pred "Paris"                                             EM 0  F1 0
#   q5 gold "Gustave Eiffel", pred "gustave eiffel."                          EM 1  F1 1
#   q6 gold "red apple tree", pred "green tree apple"                         EM 0  F1 2/3
REFERENCES = {
    "q1": ["Denver Broncos", "The Denver Broncos"],
    "q2": ["1889"],
    "q3": [],
    "q4": [],
    "q5": ["Gustave Eiffel"],
    "q6": ["red apple tree"],
}
PREDICTIONS = {"q1": "Broncos", "q2": "in 1889", "q3": "", "q4": "Paris", "q5": "gustave eiffel.", "q6": "green tree apple"}
NO_ANSWER_PROBS = {"q1": 0.1, "q2": 0.2, "q3": 0.9, "q4": 0.8, "q5": 0.05, "q6": 0.3}


def test_small_prediction_file_by_hand():
    m = squad_v2_scores(REFERENCES, PREDICTIONS)
    assert m["exact"] == pytest.approx(100 * 2 / 6)
    assert m["f1"] == pytest.approx(100 * (2 / 3 + 2 / 3 + 1 + 0 + 1 + 2 / 3) / 6)  # 66.67
    assert m["HasAns_exact"] == pytest.approx(25.0)
    assert m["HasAns_f1"] == pytest.approx(75.0)
    assert m["NoAns_exact"] == m["NoAns_f1"] == pytest.approx(50.0)
    assert (m["total"], m["HasAns_total"], m["NoAns_total"]) == (6, 4, 2)


def test_no_answer_threshold_abstains_above_it():
    # threshold 0.5: q3 (0.9) and q4 (0.8) abstain -> both unanswerable questions score 1
    m = squad_v2_scores(REFERENCES, PREDICTIONS, NO_ANSWER_PROBS, no_answer_threshold=0.5)
    assert m["exact"] == pytest.approx(50.0)
    assert m["f1"] == pytest.approx(100 * 5 / 6)
    assert m["NoAns_exact"] == 100.0
    assert m["HasAns_f1"] == pytest.approx(75.0)
    # threshold 0.15: q2 (0.2) and q6 (0.3) abstain too and lose their partial F1
    m = squad_v2_scores(REFERENCES, PREDICTIONS, NO_ANSWER_PROBS, no_answer_threshold=0.15)
    assert m["f1"] == pytest.approx(100 * (2 / 3 + 0 + 1 + 1 + 1 + 0) / 6)
    # the probability must be strictly above the threshold: at 0.8, q4 (0.8) still answers "Paris"
    m = squad_v2_scores(REFERENCES, PREDICTIONS, NO_ANSWER_PROBS, no_answer_threshold=0.8)
    assert m["NoAns_exact"] == 50.0
    m = squad_v2_scores(REFERENCES, PREDICTIONS, NO_ANSWER_PROBS, no_answer_threshold=0.79)
    assert m["NoAns_exact"] == 100.0
    # the official default threshold 1.0 with probabilities below it changes nothing
    m = squad_v2_scores(REFERENCES, PREDICTIONS, NO_ANSWER_PROBS, no_answer_threshold=1.0)
    assert m["exact"] == pytest.approx(100 * 2 / 6)


def test_best_threshold_search_by_hand():
    # walk in order q5 .05, q1 .1, q2 .2, q6 .3, q4 .8, q3 .9 from 2 (all abstain):
    #   EM: 3 (.05) 3 3 3 2 2          -> best 3/6 at .05
    #   F1: 3 (.05) 3.67 4.33 5 (.3) 4 4 -> best 5/6 at .3
    m = squad_v2_scores(REFERENCES, PREDICTIONS, NO_ANSWER_PROBS)
    assert m["best_exact"] == pytest.approx(50.0)
    assert m["best_exact_thresh"] == pytest.approx(0.05)
    assert m["best_f1"] == pytest.approx(100 * 5 / 6)
    assert m["best_f1_thresh"] == pytest.approx(0.3)
    # and the threshold found reproduces the best score when applied
    at_best = squad_v2_scores(REFERENCES, PREDICTIONS, NO_ANSWER_PROBS, no_answer_threshold=m["best_f1_thresh"])
    assert at_best["f1"] == pytest.approx(m["best_f1"])


def test_best_threshold_when_abstaining_everywhere_is_best():
    has_answer = {"a": False, "b": False}
    score, thresh = best_threshold({"a": "x", "b": "y"}, {"a": 0, "b": 0}, {"a": 1.0, "b": 2.0}, has_answer)
    assert (score, thresh) == (100.0, 0.0)


def test_missing_prediction_is_an_error():
    with pytest.raises(KeyError, match="q2"):
        squad_v2_scores({"q1": ["a b"], "q2": []}, {"q1": "a b"})


#: the official SQuAD 2.0 script (MIT), read where it lies and never copied into the repository:
#: ../shared/reference/squad/evaluate-v2.0.py next to the checkout, or the path in the variable
SHARED_OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "reference" / "squad" / "evaluate-v2.0.py"
OFFICIAL = os.environ.get("ADARANK_SQUAD_V2_OFFICIAL_SCRIPT") or (str(SHARED_OFFICIAL) if SHARED_OFFICIAL.is_file() else None)


@pytest.mark.skipif(
    not OFFICIAL,
    reason=f"the official evaluate-v2.0.py is neither at {SHARED_OFFICIAL} nor in ADARANK_SQUAD_V2_OFFICIAL_SCRIPT",
)
def test_parity_with_the_official_script(tmp_path):
    """The same numbers as the official script on the hand-worked file (runs whenever the script
    is there)."""
    data = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": [
        {"id": qid, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in golds],
         "is_impossible": not golds}
        for qid, golds in REFERENCES.items()
    ]}]}]}
    (tmp_path / "data.json").write_text(json.dumps(data))
    (tmp_path / "pred.json").write_text(json.dumps(PREDICTIONS))
    (tmp_path / "na.json").write_text(json.dumps(NO_ANSWER_PROBS))
    out = subprocess.run(
        [sys.executable, OFFICIAL, str(tmp_path / "data.json"), str(tmp_path / "pred.json"),
         "--na-prob-file", str(tmp_path / "na.json"), "--na-prob-thresh", "0.5"],
        capture_output=True, text=True, check=True,
    )
    official = json.loads(out.stdout)
    ours = squad_v2_scores(REFERENCES, PREDICTIONS, NO_ANSWER_PROBS, no_answer_threshold=0.5)
    for key, value in official.items():
        assert ours[key] == pytest.approx(value), key
