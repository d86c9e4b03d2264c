"""GLUE metrics as the GLUE benchmark defines them, on a 0-100 scale.

Computed with scikit-learn / scipy (``evaluate.load`` needs the hub):
CoLA Matthews correlation; STS-B Pearson and Spearman correlation; MRPC and QQP accuracy and
binary F1 (positive class 1); the others accuracy.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

METRICS_BY_TASK = {
    "cola": ("matthews_correlation",),
    "stsb": ("pearson", "spearman"),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "mnli": ("accuracy",),
    "sst2": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
}


def glue_metrics(task: str, predictions, references) -> dict[str, float]:
    """All metrics of ``task`` for class ids (or, for STS-B, scores), scaled to 0-100."""
    if task not in METRICS_BY_TASK:
        raise ValueError(f"no GLUE metrics for task {task!r}")
    preds = np.asarray(predictions)
    refs = np.asarray(references)
    if preds.shape != refs.shape:
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
    out: dict[str, float] = {}
    for name in METRICS_BY_TASK[task]:
        if name == "accuracy":
            value = float((preds == refs).mean())
        elif name == "f1":
            value = float(f1_score(refs, preds))
        elif name == "matthews_correlation":
            value = float(matthews_corrcoef(refs, preds))
        elif name == "pearson":
            value = _correlation(pearsonr, preds, refs)
        else:
            value = _correlation(spearmanr, preds, refs)
        out[name] = 100.0 * value
    return out


def _correlation(fn, preds, refs) -> float:
    # a constant prediction (e.g. an untrained regressor) has no defined correlation: report 0
    # (np.ptp, not np.std: the std of equal floats can come out as 1e-16 instead of 0)
    if np.ptp(preds) == 0 or np.ptp(refs) == 0:
        return 0.0
    return float(fn(preds.astype(np.float64), refs.astype(np.float64))[0])
