"""From start/end logits of the windows of a question to its answer (SQuAD 2.0 post-processing).

The rule is the one of transformers' ``run_qa.py`` post-processing (``postprocess_qa_predictions``
with ``version_2_with_negative``), which both reference codes use:

* **Span candidates** of a window: the ``n_best_size`` highest start logits crossed with the
  ``n_best_size`` highest end logits; a pair is valid when both tokens lie in the context,
  ``end >= start`` and the span has at most ``max_answer_length`` tokens. Its score is
  ``start_logit + end_logit``. Candidates are ranked over the real tokens of the window (padding
  is never a candidate, so the result does not depend on how a batch was padded; run_qa pads every
  window to max length and lets padding take top-k slots, which it then discards).
* **Best span** of a question: the highest-scoring valid candidate over *all* its windows; its
  text is the context slice from the first token's start character to the last token's end
  character.
* **Null score** of a question: the *minimum* over its windows of
  ``start_logit[CLS] + end_logit[CLS]``.
* **Decision**: ``score_diff = null_score - best_span_score``; the answer is ``""`` (no answer)
  when ``score_diff > null_score_diff_threshold``, else the best span's text. A question with no
  valid span in any window gets ``score_diff = +inf`` (always "no answer").

Only the best span survives, so the n-best list itself is not kept. ``score_diff`` is kept per
question: it is the no-answer score the SQuAD 2.0 scorer's best-threshold search needs.

**Answerability diagnostics** (:func:`window_losses`, :func:`gap_summary`): what a user watches
to see whether a run learns to answer at all. A model that predicts CLS everywhere reaches a low
loss on CLS-labelled windows (two thirds of the windows at 192 tokens) long before it finds spans,
and then answers "no answer" to every question: the per-window loss split into CLS-labelled and
span-labelled windows, and the distribution of ``score_diff`` over answerable and unanswerable
questions, show how far it is from answering (docs/mini-reproduction.md, SQuAD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

GAP_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass
class WindowBest:
    """The best valid span of each window of a batch (token indices; score -inf when none)."""

    start: torch.Tensor  # [B] long
    end: torch.Tensor  # [B] long
    score: torch.Tensor  # [B] float
    null_score: torch.Tensor  # [B] float: start_logit[CLS] + end_logit[CLS]


def best_spans_in_windows(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    context_mask: torch.Tensor,
    real_mask: torch.Tensor,
    cls_index: torch.Tensor,
    n_best_size: int,
    max_answer_length: int,
) -> WindowBest:
    """Best valid span and null score of each window (all arguments batched, shape [B, L] / [B]).

    ``context_mask`` marks context tokens (valid span ends), ``real_mask`` the non-padding tokens
    among which the top ``n_best_size`` starts and ends are taken.
    """
    start_logits = start_logits.float()
    end_logits = end_logits.float()
    rows = torch.arange(start_logits.shape[0], device=start_logits.device)
    null_score = start_logits[rows, cls_index] + end_logits[rows, cls_index]

    neg_inf = torch.finfo(start_logits.dtype).min
    k = min(n_best_size, start_logits.shape[1])
    top_start_val, top_start_idx = start_logits.masked_fill(~real_mask, neg_inf).topk(k, dim=1)
    top_end_val, top_end_idx = end_logits.masked_fill(~real_mask, neg_inf).topk(k, dim=1)
    start_ok = context_mask.gather(1, top_start_idx) & real_mask.gather(1, top_start_idx)
    end_ok = context_mask.gather(1, top_end_idx) & real_mask.gather(1, top_end_idx)

    length = top_end_idx[:, None, :] - top_start_idx[:, :, None] + 1  # [B, k_start, k_end]
    valid = (length >= 1) & (length <= max_answer_length) & start_ok[:, :, None] & end_ok[:, None, :]
    scores = top_start_val[:, :, None] + top_end_val[:, None, :]
    scores = scores.masked_fill(~valid, -math.inf)
    flat_best, flat_arg = scores.flatten(1).max(dim=1)
    start = top_start_idx.gather(1, (flat_arg // k)[:, None]).squeeze(1)
    end = top_end_idx.gather(1, (flat_arg % k)[:, None]).squeeze(1)
    return WindowBest(start=start, end=end, score=flat_best, null_score=null_score)


@dataclass
class QuestionPrediction:
    """What post-processing keeps per question."""

    span_text: str = ""  # text of the best span over all windows ("" when no valid span)
    span_score: float = -math.inf  # its start + end logit
    null_score: float = math.inf  # min over windows of the CLS start + end logit

    @property
    def score_diff(self) -> float:
        """Null score minus best span score (+inf without a valid span): the no-answer score."""
        if self.span_score == -math.inf:
            return math.inf
        return self.null_score - self.span_score

    def answer(self, null_score_diff_threshold: float = 0.0) -> str:
        """``""`` when the null score beats the best span by more than the threshold."""
        if self.score_diff > null_score_diff_threshold:
            return ""
        return self.span_text


class QuestionAggregator:
    """Collects window results into one :class:`QuestionPrediction` per question."""

    def __init__(self):
        self.predictions: dict[str, QuestionPrediction] = {}

    def add_window(
        self,
        question_id: str,
        context: str,
        offsets,
        start: int,
        end: int,
        span_score: float,
        null_score: float,
    ) -> None:
        """Fold one window in: ``offsets[t]`` is token ``t``'s (start, end) character span."""
        pred = self.predictions.setdefault(question_id, QuestionPrediction())
        pred.null_score = min(pred.null_score, float(null_score))
        if span_score > pred.span_score:
            pred.span_score = float(span_score)
            pred.span_text = context[int(offsets[start][0]) : int(offsets[end][1])]


def postprocess_windows(
    windows,
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    n_best_size: int,
    max_answer_length: int,
) -> dict[str, QuestionPrediction]:
    """Post-process a list of windows in one call (tests, small sets).

    Each window is a dict with ``question_id``, ``context``, ``offsets`` (one (start, end) pair per
    token, ``None`` for tokens outside the context), ``cls_index`` and ``length`` (real tokens).
    ``start_logits``/``end_logits`` are [num_windows, L].
    """
    n, width = start_logits.shape
    context_mask = torch.zeros(n, width, dtype=torch.bool)
    real_mask = torch.zeros(n, width, dtype=torch.bool)
    for i, window in enumerate(windows):
        real_mask[i, : window["length"]] = True
        for t, offset in enumerate(window["offsets"]):
            context_mask[i, t] = offset is not None
    cls_index = torch.tensor([w["cls_index"] for w in windows], dtype=torch.long)
    best = best_spans_in_windows(
        start_logits, end_logits, context_mask, real_mask, cls_index, n_best_size, max_answer_length
    )
    aggregator = QuestionAggregator()
    for i, window in enumerate(windows):
        aggregator.add_window(
            window["question_id"],
            window["context"],
            window["offsets"],
            int(best.start[i]),
            int(best.end[i]),
            float(best.score[i]),
            float(best.null_score[i]),
        )
    return aggregator.predictions


def window_losses(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    real_mask: torch.Tensor,
    start_positions: torch.Tensor,
    end_positions: torch.Tensor,
) -> torch.Tensor:
    """Per-window training loss [B]: (cross-entropy of the start + that of the end) / 2, the loss of
    transformers' ``*ForQuestionAnswering`` heads, taken over the window's real tokens only (so it
    does not depend on how a batch was padded; training takes it over the padded width)."""
    def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float().masked_fill(~real_mask, -math.inf)
        return torch.nn.functional.cross_entropy(logits, target, reduction="none")

    return (cross_entropy(start_logits, start_positions) + cross_entropy(end_logits, end_positions)) / 2


def gap_summary(score_diffs, null_score_diff_threshold: float = 0.0) -> dict:
    """Distribution of ``null_score - best_span_score`` over a set of questions: ``questions``,
    ``answered`` (percent with a span answer, i.e. ``score_diff <= threshold``), ``no_span``
    (questions without any valid span, score_diff +inf), and ``mean`` and the quantiles ``q10``,
    ``q25``, ``q50``, ``q75``, ``q90`` of the finite differences (None when there is none)."""
    diffs = np.asarray(list(score_diffs), dtype=np.float64)
    finite = diffs[np.isfinite(diffs)]
    out = {
        "questions": int(diffs.size),
        "answered": float(100.0 * np.mean(diffs <= null_score_diff_threshold)) if diffs.size else None,
        "no_span": int(diffs.size - finite.size),
        "mean": float(finite.mean()) if finite.size else None,
    }
    for q in GAP_QUANTILES:
        out[f"q{round(q * 100)}"] = float(np.quantile(finite, q)) if finite.size else None
    return out
