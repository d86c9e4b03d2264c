"""Figures as vector PDF and PNG (300 dpi) in one style: Figure 2 (final rank heatmaps), Figures
3-5 (sensitivity on RTE); learning curves and rank over time are in curves.py.

Sizes are in inches at print size (one column = 3.5 in, two columns = 7.2 in) so that the fonts of
``STYLE`` (8-9 pt) stay readable in the paper; figures are never scaled down much."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from adarank.analysis.paper import task_label  # noqa: E402
from adarank.analysis.rank_pattern import WEIGHT_TYPES, load_rank_pattern, rank_matrix  # noqa: E402
from adarank.analysis.runs import PAPER_SETUP  # noqa: E402
from adarank.analysis.tables import axes_unchanged, ordered_setups  # noqa: E402

ARM_LABELS = {
    "triadapt_linear": "TriAdaptLoRA (Linear)",
    "triadapt_fixed": "TriAdaptLoRA (Fixed-k)",
    "triadapt_nonlinear": "TriAdaptLoRA (Non-Linear)",
    "adalora": "AdaLoRA",
    "increlora": "IncreLoRA",
    "eva": "EVA",
    "sora": "SoRA",
}
FIG2_ARMS = ["triadapt_linear", "triadapt_fixed", "triadapt_nonlinear", "adalora", "increlora", "eva", "sora"]
SENSITIVITY = {
    "fig3": ("init_warmup", "initial warm-up steps $t_0$ (no growth before)"),
    "fig4": ("incre_interval", "rank update interval (optimizer steps)"),
    "fig5": ("reference_rank", "reference rank $r^{ref}$"),
}
SENSITIVITY_ARMS = ["triadapt_linear", "triadapt_nonlinear", "triadapt_fixed", "increlora"]
COLUMN_WIDTH, PAGE_WIDTH = 3.5, 7.2  # inches, a two-column paper
DPI = 300
STYLE = {
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,  # TrueType in the PDF: editable, accepted by publishers
}


def save(fig, path: Path) -> Path:
    """Write ``path`` (PNG, 300 dpi) and the same figure as vector PDF beside it; return the PNG."""
    fig.savefig(path, dpi=DPI)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)
    return path


def in_preferred_setup(runs: pd.DataFrame) -> tuple[str | None, pd.DataFrame]:
    """The preferred setup among ``runs`` and their rows in it (None and no rows when empty)."""
    setups = ordered_setups(runs)
    setup = setups[0] if setups else None
    return setup, runs[runs["setup"] == setup]


def figure2(runs: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One PNG per task with rank patterns: a heatmap (layer x weight type) per method arm, from the
    lowest-seed run at the default hyperparameters of the preferred setup."""
    picked = runs[runs["arm"].isin(FIG2_ARMS) & axes_unchanged(runs)]
    setup, picked = in_preferred_setup(picked)
    written = []
    for task in sorted(set(picked["task"])):
        panels = []
        for arm in FIG2_ARMS:
            candidates = picked[(picked["task"] == task) & (picked["arm"] == arm)].sort_values("seed")
            for _, run in candidates.iterrows():
                pattern = load_rank_pattern(run["run_dir"])
                if pattern:
                    matrix, _ = rank_matrix(pattern)
                    if matrix.size:
                        panels.append((arm, int(run["seed"]), matrix))
                        break
        if panels:
            path = out_dir / f"fig2_rank_pattern_{task}.png"
            with plt.rc_context(STYLE):
                _draw_heatmaps(panels, task, setup, path)
            written.append(path)
    return written


def figure2_note(runs: pd.DataFrame, setups: list[str]) -> str:
    """Why Figure 2 has no panel: no rank pattern at all, or none in the arms and setup it draws."""
    with_pattern = [run for _, run in runs.iterrows() if load_rank_pattern(run["run_dir"])]
    if not with_pattern:
        return "Figure 2: no run has a rank pattern (rank_pattern.json) yet"
    shown = [run for run in with_pattern if run["setup"] in setups]
    usable = [run for run in shown if run["arm"] in FIG2_ARMS]
    return (f"Figure 2: {len(with_pattern)} run(s) have rank patterns, {len(shown)} in the shown setup, "
            f"{len(usable)} of the arms it draws ({', '.join(FIG2_ARMS)}) but none at the default "
            "hyperparameters" if usable else
            f"Figure 2: {len(with_pattern)} run(s) have rank patterns, {len(usable)} of them of the arms it "
            f"draws ({', '.join(FIG2_ARMS)}) in the shown setup; another setup may have them (--setup)")


def _draw_heatmaps(panels, task: str, setup: str, path: Path) -> None:
    vmax = max(np.nanmax(m) for _, _, m in panels)
    layers = max(m.shape[0] for _, _, m in panels)
    per_row = min(len(panels), 3)  # at most 3 panels side by side on a page-wide figure
    rows = -(-len(panels) // per_row)
    fig, axes = plt.subplots(rows, per_row, figsize=(PAGE_WIDTH, rows * (0.2 * layers + 1.0) + 0.4),
                             squeeze=False, constrained_layout=True)
    image = None
    flat = axes.flatten()
    for ax, (arm, seed, matrix) in zip(flat, panels):
        image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=vmax, aspect="auto", origin="lower")
        ax.set_title(f"{ARM_LABELS.get(arm, arm)}\nseed {seed}, total rank {int(np.nansum(matrix))}")
        ax.set_xticks(range(len(WEIGHT_TYPES)), [f"${w}$" for w in WEIGHT_TYPES])
        ax.set_yticks(range(matrix.shape[0]), [str(i + 1) for i in range(matrix.shape[0])])
        ax.set_xlabel("weight matrix")
        ax.set_ylabel("layer")
        ax.grid(False)
        if matrix.size <= 120:
            for (i, j), value in np.ndenumerate(matrix):
                if not np.isnan(value):
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if value < 0.6 * vmax else "black")
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=flat[: len(panels)].tolist(), label="final rank", shrink=0.8)
    title = f"Final rank per layer and weight matrix, {task_label(task)}"
    if setup != PAPER_SETUP:
        title += f"\n({setup})"
    fig.suptitle(title)
    save(fig, path)


def sensitivity_points(runs: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Runs that differ from the default only in ``axis`` (or not at all), for the growing methods."""
    picked = runs[runs["arm"].isin(SENSITIVITY_ARMS) & axes_unchanged(runs, (axis,))]
    picked = picked[picked[axis].notna() & picked["score"].notna()]
    return picked


def sensitivity_figure(runs: pd.DataFrame, name: str, out_dir: Path) -> list[Path]:
    """Figures 3-5: best dev score against the swept value, one line per method arm (mean over
    seeds, band = min..max over seeds, dots = single seeds); one PNG per task with at least one arm
    at two or more values."""
    axis, xlabel = SENSITIVITY[name]
    points = sensitivity_points(runs, axis)
    setup, points = in_preferred_setup(points)
    written = []
    for task in sorted(set(points["task"])):
        data = points[points["task"] == task]
        if data.groupby("arm")[axis].nunique().max() < 2:
            continue
        path = out_dir / f"{name}_{axis}_{task}.png"
        with plt.rc_context(STYLE):
            _draw_lines(data, axis, xlabel, task, setup, path)
        written.append(path)
    return written


def _draw_lines(data: pd.DataFrame, axis: str, xlabel: str, task: str, setup: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.6))
    for arm in SENSITIVITY_ARMS:
        part = data[data["arm"] == arm]
        if part[axis].nunique() < 2:  # a single point (e.g. a Table I run) is no curve
            continue
        stats = part.groupby(axis)["score"].agg(["mean", "min", "max", "count"]).sort_index()
        x = stats.index.to_numpy(dtype=float)
        line = ax.plot(x, stats["mean"], marker="o", label=f"{ARM_LABELS[arm]} (seeds: {int(stats['count'].max())})")[0]
        ax.fill_between(x, stats["min"], stats["max"], color=line.get_color(), alpha=0.2)
        ax.scatter(part[axis].astype(float), part["score"], color=line.get_color(), s=10, alpha=0.6)
    default = data.loc[~data[f"{axis}_changed"].astype(bool), axis]
    if not default.empty:
        ax.axvline(float(default.iloc[0]), color="grey", linestyle="--", linewidth=1, label="paper setting (Table V)")
    metric = data["primary_metric"].iloc[0]
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"best dev {metric} (%)")
    title = f"{task_label(task)}: sensitivity to {xlabel.split(' $')[0].split(' (')[0]}"
    if setup != PAPER_SETUP:
        title += f"\n({setup})"
    ax.set_title(title)
    if data[axis].nunique() > 1 and data[axis].min() > 0 and data[axis].max() / data[axis].min() >= 8:
        ax.set_xscale("log", base=2)
        ticks = sorted(set(data[axis].astype(float)))
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.legend()
    save(fig, path)
