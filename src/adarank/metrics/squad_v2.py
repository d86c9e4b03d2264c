"""The SQuAD 2.0 exact-match and F1 scores, written from the official definition.

The definition is that of the "Official evaluation script for SQuAD version 2.0"
(``evaluate-v2.0.py``, also wrapped by the ``squad_v2`` metric of ``evaluate``):

* **Normalisation** of an answer string: lower case, remove every character of
  ``string.punctuation``, replace the articles ``a``/``an``/``the`` (whole words) by a space,
  then collapse runs of whitespace to single spaces (and strip the ends).
* **Exact match** (EM) is 1 when the normalised prediction equals the normalised gold, else 0.
* **F1** is the token F1 between the whitespace tokens of the normalised strings, the overlap
  counted as a multiset intersection. When either side has no tokens, F1 is 1 if both are empty
  and 0 otherwise.
* **Gold answers** that normalise to the empty string are ignored; a question with no (remaining)
  gold answer is unanswerable and its only gold is ``""``. A question's EM and F1 are the maxima
  over its gold answers. Whether a question is answerable (``HasAns``) is decided by whether it
  has any gold answer at all.
* **No-answer threshold**: each question has a no-answer probability (any score where larger
  means "more likely unanswerable"). When it is above the threshold the prediction is replaced by
  "no answer", which scores 1 on an unanswerable question and 0 on an answerable one.
* **Reported scores** (0-100 scale): ``exact``, ``f1`` and ``total`` over all questions, the same
  restricted to answerable (``HasAns_*``) and unanswerable (``NoAns_*``) questions when there are
  any, and ``best_exact``/``best_f1`` with their thresholds ``best_exact_thresh``/``best_f1_thresh``:
  the best scores reachable by choosing the no-answer threshold after the fact (see
  :func:`best_threshold`).

The harness passes, per question, the best non-empty span as the prediction and the null-score
difference (``score_diff`` of :mod:`adarank.data.qa_postprocess`) as the no-answer probability,
with ``no_answer_threshold`` equal to the post-processing's ``null_score_diff_threshold``. Then
``exact``/``f1`` are exactly the scores of the post-processed answers and ``best_*`` is a real
threshold search over the null-score difference (its thresholds are in logit units, not 0-100).
"""

from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Mapping

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, replace articles by a space, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    """Whitespace tokens of the normalised answer ([] for an empty or falsy string)."""
    if not text:
        return []
    return normalize_answer(text).split()


def exact_match(gold: str, prediction: str) -> int:
    """1 when the normalised strings are equal, else 0."""
    return int(normalize_answer(gold) == normalize_answer(prediction))


def token_f1(gold: str, prediction: str) -> float:
    """Token F1 of the normalised strings (1 if both have no tokens, 0 if only one has none)."""
    gold_toks = answer_tokens(gold)
    pred_toks = answer_tokens(prediction)
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    overlap = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_toks)
    recall = overlap / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def effective_golds(gold_texts: Iterable[str]) -> list[str]:
    """Gold answers that do not normalise to ""; ``[""]`` when none is left (unanswerable)."""
    golds = [text for text in gold_texts if normalize_answer(text)]
    return golds or [""]


def raw_scores(
    references: Mapping[str, list[str]], predictions: Mapping[str, str]
) -> tuple[dict[str, int], dict[str, float]]:
    """Per-question EM and F1 (max over gold answers), before any no-answer threshold."""
    exact, f1 = {}, {}
    for qid, gold_texts in references.items():
        if qid not in predictions:
            raise KeyError(f"no prediction for question {qid!r}")
        prediction = predictions[qid]
        golds = effective_golds(gold_texts)
        exact[qid] = max(exact_match(gold, prediction) for gold in golds)
        f1[qid] = max(token_f1(gold, prediction) for gold in golds)
    return exact, f1


def apply_no_answer_threshold(
    scores: Mapping[str, float],
    no_answer_probs: Mapping[str, float],
    has_answer: Mapping[str, bool],
    threshold: float,
) -> dict[str, float]:
    """Scores after abstaining where the no-answer probability is above ``threshold``."""
    return {
        qid: float(not has_answer[qid]) if no_answer_probs[qid] > threshold else float(score)
        for qid, score in scores.items()
    }


def best_threshold(
    predictions: Mapping[str, str],
    scores: Mapping[str, float],
    no_answer_probs: Mapping[str, float],
    has_answer: Mapping[str, bool],
) -> tuple[float, float]:
    """The best score (0-100) over no-answer thresholds, and the threshold that reaches it.

    Start from abstaining on every question (each unanswerable question scores 1), then lower
    the bar question by question in increasing order of no-answer probability: answering an
    answerable question adds its raw score; answering an unanswerable one costs 1 if the
    prediction is non-empty (and nothing if it is empty). The threshold reported is the
    no-answer probability of the last question answered at the best cumulative score (0.0 when
    abstaining everywhere is best), as the official script does (ties in the probabilities are
    walked one question at a time, as there).
    """
    current = best = sum(1 for qid in scores if not has_answer[qid])
    best_thresh = 0.0
    for qid in sorted(scores, key=lambda q: no_answer_probs[q]):
        if has_answer[qid]:
            current += scores[qid]
        elif predictions[qid]:
            current -= 1
        if current > best:
            best = current
            best_thresh = float(no_answer_probs[qid])
    return 100.0 * best / len(scores), best_thresh


def _mean_100(values: Iterable[float]) -> float:
    values = list(values)
    return 100.0 * sum(values) / len(values)


def squad_v2_scores(
    references: Mapping[str, list[str]],
    predictions: Mapping[str, str],
    no_answer_probs: Mapping[str, float] | None = None,
    no_answer_threshold: float = 1.0,
) -> dict[str, float]:
    """The official SQuAD 2.0 scores on a 0-100 scale.

    ``references`` maps each question id to its gold answer texts (empty list: unanswerable);
    ``predictions`` maps it to the predicted text (``""``: no answer); ``no_answer_probs``
    (default 0.0 for every question, as the official script) maps it to a no-answer score, and a
    question whose score is above ``no_answer_threshold`` is treated as unanswered.
    """
    if not references:
        raise ValueError("no questions to score")
    if no_answer_probs is None:
        no_answer_probs = {qid: 0.0 for qid in references}
    has_answer = {qid: bool(golds) for qid, golds in references.items()}
    exact_raw, f1_raw = raw_scores(references, predictions)
    exact = apply_no_answer_threshold(exact_raw, no_answer_probs, has_answer, no_answer_threshold)
    f1 = apply_no_answer_threshold(f1_raw, no_answer_probs, has_answer, no_answer_threshold)

    metrics: dict[str, float] = {
        "exact": _mean_100(exact.values()),
        "f1": _mean_100(f1.values()),
        "total": len(references),
    }
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [qid for qid in references if has_answer[qid] is wanted]
        if qids:
            metrics[f"{prefix}_exact"] = _mean_100(exact[q] for q in qids)
            metrics[f"{prefix}_f1"] = _mean_100(f1[q] for q in qids)
            metrics[f"{prefix}_total"] = len(qids)
    metrics["best_exact"], metrics["best_exact_thresh"] = best_threshold(
        predictions, exact_raw, no_answer_probs, has_answer
    )
    metrics["best_f1"], metrics["best_f1_thresh"] = best_threshold(
        predictions, f1_raw, no_answer_probs, has_answer
    )
    return metrics
