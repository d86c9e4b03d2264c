"""The cost table: trainable parameters, wall time, seconds in rank allocation and final total rank
per method arm and task (means over seeds of the runs at the default hyperparameters)."""

from __future__ import annotations

import pandas as pd

from adarank.analysis.paper import load_paper, task_label
from adarank.analysis.runs import PAPER_SETUP
from adarank.analysis.tables import axes_unchanged, ordered_setups

ARM_ORDER = [
    "full", "bitfit", "hadapter", "lora", "adalora", "increlora",
    "triadapt_fixed", "triadapt_linear", "triadapt_nonlinear", "dylora", "alora",
    "dora", "rslora", "pissa", "loraplus", "eva", "sora",
]
COLUMNS = {
    "trainable_params_start": "trainable params (start)",
    "trainable_params_end": "trainable params (end)",
    "wall_seconds": "wall s",
    "train_seconds": "train s",
    "allocation_seconds": "allocation s",
    "median_step_seconds": "median step s",
    "peak_memory_mb": "peak memory MB",
    "total_rank": "final total rank",
}


def build_costs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (setup, task, arm): seeds found and the mean of each cost column."""
    picked = runs[axes_unchanged(runs)]
    if picked.empty:
        return pd.DataFrame(columns=["setup", "task", "arm", "seeds", *COLUMNS])
    grouped = picked.groupby(["setup", "task", "arm"], sort=False)
    table = grouped[list(COLUMNS)].mean()
    table.insert(0, "seeds", grouped.size())
    table = table.reset_index()
    table["allocation share %"] = 100 * table["allocation_seconds"] / table["wall_seconds"]
    order = {arm: i for i, arm in enumerate(ARM_ORDER)}
    setups = {s: i for i, s in enumerate(ordered_setups(picked))}
    table = table.sort_values(
        ["setup", "task", "arm"],
        key=lambda col: col.map(setups) if col.name == "setup" else (col.map(order).fillna(99) if col.name == "arm" else col),
    )
    return table.reset_index(drop=True)


def costs_display(costs: pd.DataFrame) -> pd.DataFrame:
    shown = costs.copy()
    shown["task"] = shown["task"].map(task_label)
    labels = {key: row["label"] for key, row in load_paper()["table1"]["rows"].items()}
    shown["arm"] = shown["arm"].map(lambda arm: labels.get(arm, arm))
    for column in ("trainable_params_start", "trainable_params_end"):
        shown[column] = shown[column].map(_count)
    for column in ("wall_seconds", "train_seconds", "allocation_seconds", "peak_memory_mb", "total_rank", "allocation share %"):
        shown[column] = shown[column].map(lambda v: "–" if pd.isna(v) else f"{v:.1f}")
    shown["median_step_seconds"] = shown["median_step_seconds"].map(lambda v: "–" if pd.isna(v) else f"{v:.4f}")
    return shown.rename(columns={**COLUMNS, "arm": "method"})


def costs_markdown(costs: pd.DataFrame) -> str:
    parts = ["# Costs per method and task", "",
             "Means over the seeds found, runs at the default hyperparameters only. "
             "allocation s = wall seconds spent scoring and allocating ranks.", ""]
    if costs.empty:
        return "\n".join(parts + ["No runs."]) + "\n"
    shown = costs_display(costs)
    for setup in dict.fromkeys(costs["setup"]):
        heading = "Paper setup" if setup == PAPER_SETUP else f"Setup: {setup}"
        parts += [f"## {heading}", "", shown[shown["setup"] == setup].drop(columns="setup").to_markdown(index=False), ""]
    return "\n".join(parts) + "\n"


def costs_latex(costs: pd.DataFrame) -> str:
    """One booktabs ``table*`` per setup (pandas' Styler), scaled to the text width."""
    from adarank.analysis.tables import latex_escape

    out = ["% Costs per method and task (means over seeds, default hyperparameters)",
           "% needs \\usepackage{booktabs,graphicx}"]
    if costs.empty:
        return "\n".join(out + ["% No runs."]) + "\n"
    shown = costs_display(costs)
    for number, setup in enumerate(dict.fromkeys(costs["setup"])):
        frame = shown[shown["setup"] == setup].drop(columns="setup").map(latex_escape)
        frame.columns = [latex_escape(c) for c in frame.columns]
        heading = "Paper setup" if setup == PAPER_SETUP else f"Setup: {setup}"
        text = frame.style.hide(axis="index").to_latex(
            hrules=True, environment="table*", position="t", position_float="centering",
            caption=latex_escape(f"Costs per method and task (means over seeds). {heading}."),
            label="tab:costs" + (f"-{number + 1}" if number else ""), column_format="ll" + "r" * (frame.shape[1] - 2),
        )
        text = text.replace("\\begin{tabular}", "\\resizebox{\\textwidth}{!}{%\n\\begin{tabular}")
        out.append(text.replace("\\end{tabular}", "\\end{tabular}}"))
    return "\n".join(out) + "\n"


def _count(value) -> str:
    if pd.isna(value):
        return "–"
    value = float(value)
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}K"
    return f"{value:.0f}"
