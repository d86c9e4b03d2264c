"""Pareto figures per task (docs/fair-protocol.md): the score each method reports against what it
cost, one point per method (mean over seeds, bars = std over seeds), in two panels: trainable
parameters at the peak (log scale) and wall time per run. The methods on the Pareto front (no
other method scores higher at no greater cost) are joined by a line. The score is the setup's
protocol's (paper: best periodic dev evaluation; fair: dev at the checkpoint chosen on validation),
which the title names."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from adarank.analysis.budgets import build_budgets
from adarank.analysis.labels import arm_color, arm_label
from adarank.analysis.paper import task_label
from adarank.analysis.runs import is_fair

PANELS = (("trainable_peak_total", "trainable parameters (peak)", True), ("wall_seconds", "wall time per run (s)", False))
#: the marker goes by row, the colour by method (labels.arm_color: one per Table I arm, grey for
#: the others, which the markers then tell apart, up to 11 of them)
MARKERS = "osD^vP*Xh<>"
LEGEND_COLUMNS = 4


def front(points: pd.DataFrame, cost: str) -> pd.DataFrame:
    """The Pareto-optimal rows of ``points`` (columns ``cost`` and ``score``): sorted by cost, each
    scoring strictly higher than every cheaper one."""
    best, keep = float("-inf"), []
    for index, row in points.sort_values([cost, "score"], ascending=[True, False]).iterrows():
        if row["score"] > best:
            keep.append(index)
            best = row["score"]
    return points.loc[keep]


def pareto_figures(runs: pd.DataFrame, out_dir: Path) -> list:
    """One page-wide figure per (setup, task) with at least two methods:
    ``pareto_<task>_<setup id>.png``; the setup's whole label goes in the caption (figures.Drawn)."""
    from adarank.analysis.figures import (
        LEGEND_ROW,
        PAGE_WIDTH,
        STYLE,
        Drawn,
        file_name,
        plt,
        save,
        setup_sentence,
        title_tag,
    )

    budgets = build_budgets(runs)
    if budgets.empty:
        return []
    budgets["trainable_peak_total"] = budgets["trainable_peak_total"].fillna(budgets["trainable_params_end"])
    wall_std = runs[runs["status"] == "completed"].groupby(["setup", "task", "arm"])["wall_seconds"].std()
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = []
    for (setup, task), part in budgets.groupby(["setup", "task"], sort=False):
        part = part.dropna(subset=["score"])
        if part["arm"].nunique() < 2:
            continue
        protocol = "fair" if is_fair(setup) else "paper"
        with plt.rc_context(STYLE):
            legend_rows = -(-(len(part) + 1) // LEGEND_COLUMNS)
            fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 2.8 + LEGEND_ROW * legend_rows), sharey=True,
                                     layout="constrained")
            for ax, (cost, xlabel, log) in zip(axes, PANELS):
                for number, row in enumerate(part.itertuples()):
                    xerr = wall_std.get((setup, task, row.arm)) if cost == "wall_seconds" else None
                    ax.errorbar(getattr(row, cost), row.score, yerr=0.0 if pd.isna(row.score_std) else row.score_std,
                                xerr=None if xerr is None or pd.isna(xerr) else xerr, capsize=2, linestyle="none",
                                marker=MARKERS[number % len(MARKERS)], color=arm_color(row.arm),
                                label=arm_label(row.arm))
                best = front(part.dropna(subset=[cost]), cost)
                ax.plot(best[cost], best["score"], "--", color="grey", linewidth=0.8, label="Pareto front")
                ax.set_xscale("log" if log else "linear")
                ax.set_xlabel(xlabel)
            axes[0].set_ylabel(f"{task_label(task)} score")
            handles, labels = axes[1].get_legend_handles_labels()  # below both panels, never over the data
            fig.legend(handles, labels, loc="outside lower center", ncols=LEGEND_COLUMNS, frameon=False)
            fig.suptitle(f"{task_label(task)}: score ({protocol} protocol) vs cost" + title_tag(setup).replace("\n", ", "))
            path = save(fig, out_dir / file_name(f"pareto_{task}", setup))
        seeds = ", ".join(f"{arm_label(row.arm)} {row.seeds}" for row in part.itertuples()) if "seeds" in part else ""
        caption = (f"{task_label(task)}: score ({protocol} protocol) against trainable parameters at the peak (left, "
                   f"log scale) and wall time per run (right); mean over seeds, bars = std"
                   + (f" (seeds: {seeds})" if seeds else "") + "; dashed: the Pareto front. " + setup_sentence(setup))
        shown = runs[(runs["setup"] == setup) & (runs["task"] == task) & runs["arm"].isin(part["arm"])]
        drawn.append(Drawn(path, setup, caption, list(shown["run_dir"])))
    return drawn
