"""The cost table: trainable parameters, wall time, seconds in rank allocation and final total rank
per method arm and task (means over seeds of the runs with the ablation / sensitivity axes at
their defaults)."""

from __future__ import annotations

import pandas as pd

from adarank.analysis.paper import load_paper, task_label
from adarank.analysis.runs import PAPER_SETUP
from adarank.analysis.tables import axes_unchanged, ordered_setups

#: which runs a cost or budget row averages (tables.axes_unchanged)
AT_DEFAULTS = ("runs with the ablation and sensitivity axes (orth_reg, norm, reference rank, init_warmup, "
               "interval) at their defaults")

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
             f"Means over the seeds found, {AT_DEFAULTS}. "
             "allocation s = wall seconds spent scoring and allocating ranks.", ""]
    if costs.empty:
        return "\n".join(parts + ["No runs."]) + "\n"
    shown = costs_display(costs)
    for setup in dict.fromkeys(costs["setup"]):
        heading = "Paper setup" if setup == PAPER_SETUP else f"Setup: {setup}"
        parts += [f"## {heading}", "", shown[shown["setup"] == setup].drop(columns="setup").to_markdown(index=False), ""]
    return "\n".join(parts) + "\n"


#: LaTeX column headings (two lines each; the note says what they hold)
LATEX_HEADERS = {
    "task": "Task", "arm": "Method", "seeds": "Seeds",
    "trainable_params_start": "Params\nstart", "trainable_params_end": "Params\nend",
    "wall_seconds": "Wall\ns", "train_seconds": "Train\ns", "allocation_seconds": "Alloc.\ns",
    "allocation share %": "Alloc.\n%", "median_step_seconds": "Step\ns", "peak_memory_mb": "Memory\nMB",
    "total_rank": "Final\nrank",
}
LATEX_NOTE = (f"Means over the seeds found, {AT_DEFAULTS}. Params: trainable "
              "parameters at the start and the end of training; Wall / Train s: wall-clock and training "
              "seconds; Alloc. s / %: seconds spent scoring and allocating ranks and their share of the "
              "wall time; Step s: median optimizer-step time; Memory MB: peak memory; Final rank: total "
              "rank at the end; –: not recorded.")


def costs_latex(costs: pd.DataFrame) -> str:
    """One float per setup (continued in further floats when long), rows grouped by task, laid out
    by latex.py to print at 7-8 pt in a two-column article."""
    from adarank.analysis import latex
    from adarank.analysis.tables import MODEL_LABELS, setup_id, setup_model

    out = ["% Costs per method and task (means over seeds, ablation / sensitivity axes at their defaults)",
           "% needs \\usepackage{booktabs}"]
    if costs.empty:
        return "\n".join(out + ["% No runs."]) + "\n"
    shown = costs_display(costs).rename(columns={v: k for k, v in {**COLUMNS, "arm": "method"}.items()})
    rows_spec = load_paper()["table1"]["rows"]
    shown["arm"] = [rows_spec.get(arm, {}).get("short", label) for arm, label in zip(costs["arm"], shown["arm"])]
    for number, setup in enumerate(dict.fromkeys(costs["setup"])):
        frame = shown[shown["setup"] == setup]
        rows, groups = [], []
        for task, block in frame.groupby("task", sort=False):
            for i, record in enumerate(block.to_dict("records")):
                rows.append([str(record[c]) if c != "task" or i == 0 else "" for c in LATEX_HEADERS])
            groups.append(len(block))
        model = MODEL_LABELS.get(setup_model(setup), setup_model(setup))
        caption = f"Costs per method and task, {model}"
        if setup != PAPER_SETUP:
            caption += f"; setup {setup_id(setup)}"
        note = LATEX_NOTE + ("" if setup == PAPER_SETUP else f" Setup {setup_id(setup)}: {setup}.")
        table = latex.Table(header=list(LATEX_HEADERS.values()), rows=rows, caption=caption + ".", note=note,
                            label="tab:costs" + (f"-{setup_id(setup)}" if number else ""), keep=2,
                            align="ll" + "r" * (len(LATEX_HEADERS) - 2), groups=groups)
        out.append(latex.render(table))
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
