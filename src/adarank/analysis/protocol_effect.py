"""The protocol-effect table (docs/fair-protocol.md): the same methods under the paper protocol and
the fair one, side by side, per task: each protocol's mean ± std over seeds and the methods'
rank under it, the score change (fair − paper), and Kendall's tau between the two rankings.

A paper setup is paired with the fair setup that differs from it only by the protocol: the fair
runs at their selected LRs (``lr=selected on validation``) when the tree has them, else the fair
runs at the default LR. The two protocols' runs are never pooled: each side of a row is computed
from its own protocol's runs only."""

from __future__ import annotations

import math
import re

import pandas as pd

from adarank.analysis.labels import arm_label, arm_order
from adarank.analysis.paper import task_label
from adarank.analysis.runs import LR_LABEL, PAPER_MODEL, PAPER_SETUP, without_lr
from adarank.analysis.tables import axes_unchanged

_FAIR_PART = re.compile(r"(, )?\bprotocol=fair")
SELECTED = f"{LR_LABEL}=selected on validation"


def base_setup(setup: str) -> str:
    """A setup label without its protocol parts (what a paper setup and a fair one share)."""
    if setup == PAPER_SETUP:
        return f"model={PAPER_MODEL}"
    return _FAIR_PART.sub("", without_lr(setup))


def setup_pairs(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(paper setup, fair setup) pairs that differ only by the protocol."""
    paper = {base_setup(s): s for s in dict.fromkeys(runs.loc[runs["protocol"] == "paper", "setup"])}
    fair: dict[str, str] = {}
    for setup in dict.fromkeys(runs.loc[runs["protocol"] == "fair", "setup"]):
        if SELECTED in setup or (f"{LR_LABEL}=" not in setup and base_setup(setup) not in fair):
            fair[base_setup(setup)] = setup  # the selected-LR runs win over the default-LR ones
    return [(paper[base], fair[base]) for base in paper if base in fair]


def build_effect(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (paper setup, task, arm) present under both protocols, with each side's mean,
    std and seeds, its rank (1 = best mean; ties share the average rank), the change, and per
    (setup, task) Kendall's tau and its p-value between the two rankings."""
    from scipy.stats import kendalltau

    done = runs[(runs["status"] == "completed") & axes_unchanged(runs)]
    rows = []
    for paper_setup, fair_setup in setup_pairs(done):
        sides = {name: done[done["setup"] == setup].groupby(["task", "arm"])["score"].agg(["mean", "std", "count"])
                 for name, setup in (("paper", paper_setup), ("fair", fair_setup))}
        both = sides["paper"].join(sides["fair"], lsuffix="_paper", rsuffix="_fair", how="inner").dropna(
            subset=["mean_paper", "mean_fair"])
        for task, part in both.groupby(level="task", sort=False):
            part = part.reset_index()
            part["rank_paper"] = part["mean_paper"].rank(ascending=False, method="average")
            part["rank_fair"] = part["mean_fair"].rank(ascending=False, method="average")
            tau, p = (kendalltau(part["mean_paper"], part["mean_fair"]) if len(part) >= 2 else (math.nan, math.nan))
            for row in part.itertuples():
                rows.append({"paper_setup": paper_setup, "fair_setup": fair_setup, "task": task, "arm": row.arm,
                             "paper_mean": row.mean_paper, "paper_std": row.std_paper, "paper_seeds": row.count_paper,
                             "paper_rank": row.rank_paper, "fair_mean": row.mean_fair, "fair_std": row.std_fair,
                             "fair_seeds": row.count_fair, "fair_rank": row.rank_fair,
                             "change": row.mean_fair - row.mean_paper, "kendall_tau": tau, "tau_p_value": p,
                             "methods": len(part)})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return frame.assign(_a=frame["arm"].map(arm_order)).sort_values(["paper_setup", "task", "_a"]).drop(columns="_a")


def effect_markdown(effect: pd.DataFrame) -> str:
    parts = ["# Protocol effect: the paper protocol vs the fair protocol", "",
             "Paper: Table V's learning rate, the best of the periodic dev evaluations, the whole training set. "
             "Fair: each method at the learning rate selected on a validation split held out of train, the dev "
             "(test) score at the checkpoint chosen on that split. Mean ± std over each protocol's own seeds "
             "(n); rank 1 = best mean of the task; change = fair − paper; Kendall's τ compares the two "
             "rankings (1: same order, −1: reversed; p from scipy.stats.kendalltau, few methods give wide "
             "p-values).", ""]
    if effect.empty:
        return "\n".join(parts + ["No setup has runs under both protocols."]) + "\n"
    for (paper_setup, fair_setup), block in effect.groupby(["paper_setup", "fair_setup"], sort=False):
        parts += [f"## Paper: {paper_setup}", f"## Fair: {fair_setup}", ""]
        for task, part in block.groupby("task", sort=False):
            shown = pd.DataFrame({
                "method": part["arm"].map(arm_label),
                "paper": [_cell(m, s, n) for m, s, n in zip(part["paper_mean"], part["paper_std"], part["paper_seeds"])],
                "paper rank": part["paper_rank"].map(_rank),
                "fair": [_cell(m, s, n) for m, s, n in zip(part["fair_mean"], part["fair_std"], part["fair_seeds"])],
                "fair rank": part["fair_rank"].map(_rank),
                "change": part["change"].map(lambda v: f"{v:+.2f}"),
            })
            tau, p = part["kendall_tau"].iloc[0], part["tau_p_value"].iloc[0]
            summary = ("Kendall's τ: n/a (fewer than 2 methods or no spread)" if pd.isna(tau)
                       else f"Kendall's τ = {tau:.2f} (p = {p:.2f}, {int(part['methods'].iloc[0])} methods)")
            parts += [f"### {task_label(task)}", "", shown.to_markdown(index=False, disable_numparse=True), "", summary, ""]
    return "\n".join(parts) + "\n"


def _cell(mean, std, n) -> str:
    return f"{mean:.2f}" + ("" if pd.isna(std) else f" ± {std:.2f}") + f" (n={int(n)})"


def _rank(value) -> str:
    return f"{value:g}"
