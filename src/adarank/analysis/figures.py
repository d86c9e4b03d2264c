"""Figures as vector PDF and PNG (300 dpi) in one style: Figure 2 (final rank heatmaps), Figures
3-5 (sensitivity on RTE); learning curves and rank over time are in curves.py.

Every figure shows the runs of one setup (``make tables SETUP=all`` draws each setup's figures
apart, never pooled) and its file name ends with the setup's short id (``tables.setup_id``:
``paper``, ``minilm-3f9a2c``). Each is exactly one column (3.5 in) or the page (7 in) wide at print
size, so the fonts of ``STYLE`` (7-9 pt) print at that size; the legend sits below the plot, and
what does not fit a title (the whole setup label, seeds per line) goes into the figure's caption
(``Drawn.caption``, written to figures/captions.md). Heatmap cells are vector rectangles."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from adarank.analysis.labels import arm_color  # noqa: E402
from adarank.analysis.paper import task_label  # noqa: E402
from adarank.analysis.rank_pattern import WEIGHT_TYPES, load_rank_pattern, rank_matrix  # noqa: E402
from adarank.analysis.runs import PAPER_SETUP, is_fair, score_words  # noqa: E402
from adarank.analysis.tables import axes_unchanged, ordered_setups, setup_id  # noqa: E402

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
COLUMN_WIDTH, PAGE_WIDTH = 3.5, 7.0  # inches, a two-column paper
PLOT_HEIGHT = 2.3  # inches of a one-column line plot, without its legend
LEGEND_ROW = 0.16  # inches per legend row below the plot
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
    "savefig.bbox": None,  # keep the figure's own width: a tight box would widen it to its longest text
    "pdf.fonttype": 42,  # TrueType in the PDF: editable, accepted by publishers
}


@dataclass
class Drawn:
    """One figure written: the PNG (a vector PDF beside it), its setup, its caption and the run
    folders it draws."""

    path: Path
    setup: str
    caption: str
    runs: list[str] = field(default_factory=list)


def save(fig, path: Path) -> Path:
    """Write ``path`` (PNG, 300 dpi) and the same figure as vector PDF beside it; return the PNG."""
    fig.savefig(path, dpi=DPI)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)
    return path


def file_name(stem: str, setup: str) -> str:
    return f"{stem}_{setup_id(setup)}.png"


def title_tag(setup: str) -> str:
    """What a figure title says about a setup other than the paper's: its short id, on a line of
    its own (a one-column title has room for about 45 characters)."""
    return "" if setup == PAPER_SETUP else f"\nsetup {setup_id(setup)}"


def setup_sentence(setup: str) -> str:
    if setup == PAPER_SETUP:
        return "Paper setup (DeBERTaV3-base, Table V/VI hyperparameters)."
    return f"Setup {setup_id(setup)}: {setup} (not comparable with the paper's numbers)."


def line_figure(legend_entries: int, width: float = COLUMN_WIDTH):
    """A one-column line plot with room for its legend (two entries per row) below the axes."""
    rows = -(-legend_entries // 2)
    return plt.subplots(figsize=(width, PLOT_HEIGHT + LEGEND_ROW * rows), layout="constrained")


def legend_below(fig, ax) -> None:
    """The legend under the plot, never over the data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(2, len(handles)), frameon=False)


def in_preferred_setup(runs: pd.DataFrame) -> tuple[str | None, pd.DataFrame]:
    """The preferred setup among ``runs`` and their rows in it (None and no rows when empty): a
    figure never pools setups, even when given runs of several."""
    setups = ordered_setups(runs)
    setup = setups[0] if setups else None
    return setup, runs[runs["setup"] == setup]


def figure2(runs: pd.DataFrame, out_dir: Path) -> list[Drawn]:
    """One figure per task with rank patterns: a heatmap (layer x weight type) per method arm, from
    the lowest-seed run at the default hyperparameters of the (preferred) setup of ``runs``."""
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
                        panels.append((arm, int(run["seed"]), matrix, run["run_dir"]))
                        break
        if panels:
            path = out_dir / file_name(f"fig2_rank_pattern_{task}", setup)
            with plt.rc_context(STYLE):
                _draw_heatmaps(panels, task, setup, path)
            caption = (f"Figure 2, {task_label(task)}: final rank of every adapted weight matrix (W_q, W_k, W_v: "
                       "query, key, value; W_a: attention output; W_m: intermediate; W_o: output) per layer, one "
                       "panel per method (its lowest seed). " + setup_sentence(setup))
            written.append(Drawn(path, setup, caption, [p[3] for p in panels]))
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
    vmax = max(np.nanmax(m) for _, _, m, _ in panels)
    layers = max(m.shape[0] for _, _, m, _ in panels)
    per_row = min(len(panels), 3)  # at most 3 panels side by side on a page-wide figure
    rows = -(-len(panels) // per_row)
    fig, axes = plt.subplots(rows, per_row, figsize=(PAGE_WIDTH, rows * (0.2 * layers + 1.0) + 0.4),
                             squeeze=False, layout="constrained")
    mesh = None
    flat = axes.flatten()
    for ax, (arm, seed, matrix, _) in zip(flat, panels):
        # pcolormesh: one vector rectangle per cell in the PDF (imshow would embed a bitmap)
        mesh = ax.pcolormesh(np.arange(matrix.shape[1] + 1) - 0.5, np.arange(matrix.shape[0] + 1) - 0.5,
                             np.ma.masked_invalid(matrix), cmap="viridis", vmin=0, vmax=vmax)
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
    bar = fig.colorbar(mesh, ax=flat[: len(panels)].tolist(), label="final rank", shrink=0.8)
    bar.solids.set_rasterized(False)  # matplotlib rasterises a many-level colour bar; keep it vector
    fig.suptitle(f"Final rank per layer and weight matrix, {task_label(task)}{title_tag(setup)}")
    save(fig, path)


def sensitivity_points(runs: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Runs that differ from the default only in ``axis`` (or not at all), for the growing methods."""
    picked = runs[runs["arm"].isin(SENSITIVITY_ARMS) & axes_unchanged(runs, (axis,))]
    picked = picked[picked[axis].notna() & picked["score"].notna()]
    return picked


def sensitivity_figure(runs: pd.DataFrame, name: str, out_dir: Path) -> list[Drawn]:
    """Figures 3-5: the score (its setup's protocol's) against the swept value, one line per arm (mean over
    seeds, band = min..max over seeds, dots = single seeds); one figure per task with at least one
    arm at two or more values, from the (preferred) setup of ``runs``."""
    axis, xlabel = SENSITIVITY[name]
    points = sensitivity_points(runs, axis)
    setup, points = in_preferred_setup(points)
    written = []
    for task in sorted(set(points["task"])):
        data = points[points["task"] == task]
        if data.groupby("arm")[axis].nunique().max() < 2:
            continue
        path = out_dir / file_name(f"{name}_{axis}_{task}", setup)
        with plt.rc_context(STYLE):
            seeds = _draw_lines(data, axis, xlabel, task, setup, path)
        seed_counts = ", ".join(f"{ARM_LABELS[a]} {n} seeds" for a, n in seeds.items())
        caption = (f"Figure {name[3:]}, {task_label(task)}: score ({score_words([setup])}) against {axis}, mean "
                   f"over seeds (band: min..max, dots: single seeds; {seed_counts}); dashed: the paper's setting. "
                   + setup_sentence(setup))
        written.append(Drawn(path, setup, caption, list(data["run_dir"])))
    return written


def _draw_lines(data: pd.DataFrame, axis: str, xlabel: str, task: str, setup: str, path: Path) -> dict[str, int]:
    arms = [arm for arm in SENSITIVITY_ARMS if data.loc[data["arm"] == arm, axis].nunique() >= 2]
    default = data.loc[~data[f"{axis}_changed"].astype(bool), axis]
    fig, ax = line_figure(len(arms) + (not default.empty))
    seeds = {}
    for arm in arms:  # a single point (e.g. a Table I run) is no curve
        part = data[data["arm"] == arm]
        stats = part.groupby(axis)["score"].agg(["mean", "min", "max", "count"]).sort_index()
        seeds[arm] = int(stats["count"].max())
        x = stats.index.to_numpy(dtype=float)
        line = ax.plot(x, stats["mean"], marker="o", label=ARM_LABELS[arm], color=arm_color(arm))[0]
        ax.fill_between(x, stats["min"], stats["max"], color=line.get_color(), alpha=0.2)
        ax.scatter(part[axis].astype(float), part["score"], color=line.get_color(), s=10, alpha=0.6)
    if not default.empty:
        ax.axvline(float(default.iloc[0]), color="grey", linestyle="--", linewidth=1, label="paper setting (Table V)")
    metric = data["primary_metric"].iloc[0]
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"dev {metric} at the val.-best step (%)" if is_fair(setup) else f"best dev {metric} (%)")
    ax.set_title(f"{task_label(task)}: sensitivity to {xlabel.split(' $')[0].split(' (')[0]}{title_tag(setup)}")
    if data[axis].nunique() > 1 and data[axis].min() > 0 and data[axis].max() / data[axis].min() >= 8:
        ax.set_xscale("log", base=2)
        ticks = sorted(set(data[axis].astype(float)))
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    legend_below(fig, ax)
    save(fig, path)
    return seeds
