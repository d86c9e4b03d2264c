"""The budget table: what each method spent per task, beside what it scored (docs/fair-protocol.md).

Per setup, task and method arm (means over the finished seeds): trainable parameters at the start,
the peak and the end of training (metrics.json ``costs.trainable``, budget.py), the peak split
into adapter / head / other, peak memory, wall time and training tokens processed, and the score
the setup's protocol reports (paper: best periodic dev evaluation; fair: dev at the checkpoint
chosen on validation). Runs recorded before the split existed show their start/end totals and "–"
for the split."""

from __future__ import annotations

import pandas as pd

from adarank.analysis.costs import AT_DEFAULTS, _count
from adarank.analysis.labels import arm_label, arm_order
from adarank.analysis.paper import task_label
from adarank.analysis.runs import protocol_note
from adarank.analysis.tables import axes_unchanged, ordered_setups

COLUMNS = {
    "score": "score",
    "trainable_params_start": "params start",
    "trainable_peak_total": "params peak",
    "trainable_params_end": "params end",
    "trainable_peak_adapter": "peak: adapter",
    "trainable_peak_head": "peak: head",
    "trainable_peak_other": "peak: other",
    "peak_memory_mb": "peak memory MB",
    "wall_seconds": "wall s",
    "tokens_processed": "train tokens",
}
COUNTS = [c for c in COLUMNS if c.startswith("trainable")]


def build_budgets(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (setup, task, arm) of finished runs with the ablation / sensitivity axes
    (runs.AXES) at their defaults: seeds, the mean of every COLUMNS entry and the score's std."""
    done = runs[(runs["status"] == "completed") & axes_unchanged(runs)]
    if done.empty:
        return pd.DataFrame(columns=["setup", "task", "arm", "seeds", *COLUMNS, "score_std"])
    done = done.assign(**{c: done.get(c, pd.Series(index=done.index, dtype=float)) for c in COLUMNS})
    grouped = done.groupby(["setup", "task", "arm"], sort=False)
    table = grouped[list(COLUMNS)].mean()
    table.insert(0, "seeds", grouped.size())
    table["score_std"] = grouped["score"].std()
    table = table.reset_index()
    setups = {s: i for i, s in enumerate(ordered_setups(done))}
    table = table.assign(_s=table["setup"].map(setups), _a=table["arm"].map(arm_order))
    return table.sort_values(["_s", "task", "_a"]).drop(columns=["_s", "_a"]).reset_index(drop=True)


def budgets_markdown(budgets: pd.DataFrame) -> str:
    parts = ["# Budgets per method and task", "",
             f"Means over the finished seeds ({AT_DEFAULTS}; the learning rate is the setup's). "
             "Trainable parameters at the start, the peak and the end of training, the peak split into "
             "adapter (added by the method) / head (classifier, pooler, QA head) / other (backbone weights "
             "trained in place); peak memory; wall time; non-padding training tokens. The score is the one "
             "the setup's protocol reports (mean ± std over seeds).", ""]
    if budgets.empty:
        return "\n".join(parts + ["No runs."]) + "\n"
    for setup, part in budgets.groupby("setup", sort=False):
        shown = pd.DataFrame({
            "task": part["task"].map(task_label),
            "method": part["arm"].map(arm_label),
            "seeds": part["seeds"],
            "score": [_score(m, s) for m, s in zip(part["score"], part["score_std"])],
            **{COLUMNS[c]: part[c].map(_count) for c in COUNTS},
            "peak memory MB": part["peak_memory_mb"].map(lambda v: "–" if pd.isna(v) else f"{v:.0f}"),
            "wall s": part["wall_seconds"].map(lambda v: "–" if pd.isna(v) else f"{v:.1f}"),
            "train tokens": part["tokens_processed"].map(_count),
        })
        parts += [f"## Setup: {setup}", "", f"Scores: {protocol_note(setup)}.", "", shown.to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(parts) + "\n"


def _score(mean, std) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.2f}" + ("" if pd.isna(std) else f" ± {std:.2f}")
