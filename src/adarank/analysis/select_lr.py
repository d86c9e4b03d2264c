"""Pick each method's learning rate from a fair-protocol LR search, on the validation split only.

    python -m adarank.analysis.select_lr RESULTS [--out results/tables] [--setup SETUP]

Reads the LR-search runs of a results tree (``protocol=fair`` runs whose LR was set by
``protocol.lr_scale``, +sweep=lr_search), and per (task, method arm) picks the peak LR with the
best validation score: the primary metric of the run's best validation evaluation (metrics.json
``best`` under the fair protocol), averaged over the seeds run at that LR. Dev ("test") scores
are never read for the choice. Ties go to the smaller LR. Writes

* ``selected_lr.yaml``: ``lr: {task: {arm: LR}}`` (what ``protocol.lr_table`` reads, e.g.
  ``python train.py -m +sweep=fair_table1 protocol.lr_table=.../selected_lr.yaml``), plus the
  validation score at every LR of the grid and where they came from;
* ``lr_search.md`` / ``lr_search.csv``: the grid, validation mean (and test, for reading only),
  the selected LR marked;
* ``figures/lr_sensitivity_<task>.png`` (and .pdf): validation score vs LR, one line per method,
  the selected LR circled: whether a method is robust to its learning rate.

A tree with LR searches of several setups (another model, another length) needs ``--setup``.

``--edge-runs`` prints instead what widening the grid needs: one line ``TASK ARM SCALE`` per
(task, arm) whose selected LR is the lowest or the highest it was searched at, with the next
``protocol.lr_scale`` beyond that edge (half the lowest, twice the highest; within x1/64 ... x64,
and never a scale already tried, a diverged run included). Run those, select again, and repeat
until it prints nothing: the selected LR is then inside its grid (``make mini-fair`` does this).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd
import yaml

from adarank.analysis.labels import arm_color, arm_label, arm_order
from adarank.analysis.paper import task_label
from adarank.analysis.runs import NoResultsError, load_runs, without_lr

SELECTED_FILE = "selected_lr.yaml"


class SelectionError(ValueError):
    """The tree holds no LR search, or several that --setup must choose between."""


def search_runs(runs: pd.DataFrame, finished_only: bool = True) -> pd.DataFrame:
    """The finished LR-search runs (fair protocol, LR = lr_scale x the default), with their
    ``search_setup`` (the setup label without the LR part, runs.without_lr); with
    ``finished_only=False`` the diverged ones too."""
    if "lr_source" not in runs:
        return runs.iloc[0:0].assign(search_setup=[])
    picked = runs[(runs["protocol"] == "fair") & (runs["lr_source"] == "scale")]
    if finished_only:
        picked = picked[picked["status"] == "completed"]
    return picked.assign(search_setup=picked["setup"].map(without_lr))


def lr_grid(runs: pd.DataFrame, setup: str | None = None) -> pd.DataFrame:
    """One row per (task, arm, LR) of the search: validation mean/std over seeds, seeds, test mean
    (never used for the choice), and ``selected`` (the validation argmax per task and arm)."""
    search = search_runs(runs)
    setups = sorted(set(search["search_setup"]))
    if not setups:
        raise SelectionError("no LR-search run (protocol=fair with protocol.lr_scale, +sweep=lr_search) in the results")
    if setup is None and len(setups) > 1:
        raise SelectionError("LR searches of several setups; choose one with --setup: " + "; ".join(f"'{s}'" for s in setups))
    chosen = setup or setups[0]
    if chosen not in setups:
        raise SelectionError(f"no LR search in setup {chosen!r}; the searched setups are: " + "; ".join(f"'{s}'" for s in setups))
    search = search[search["search_setup"] == chosen]
    grouped = search.groupby(["task", "arm", "lr"])
    grid = grouped.agg(val_mean=("val_score", "mean"), val_std=("val_score", "std"), seeds=("seed", "nunique"),
                       test_mean=("score", "mean"), primary_metric=("primary_metric", "first"),
                       lr_scale=("lr_scale", "first")).reset_index()
    grid["selected"] = False
    for _, cell in grid.groupby(["task", "arm"]):
        best = cell.sort_values(["val_mean", "lr"], ascending=[False, True]).index[0]  # ties: the smaller LR
        grid.loc[best, "selected"] = True
    grid = grid.assign(order=grid["arm"].map(arm_order)).sort_values(["task", "order", "lr"]).drop(columns="order")
    return grid.assign(setup=chosen).reset_index(drop=True)


def selected(grid: pd.DataFrame) -> dict[str, dict[str, float]]:
    """``{task: {arm: LR}}``."""
    out: dict[str, dict[str, float]] = {}
    for row in grid[grid["selected"]].itertuples():
        out.setdefault(row.task, {})[row.arm] = float(row.lr)
    return out


def at_grid_edge(grid: pd.DataFrame) -> dict[tuple[str, str], str]:
    """``{(task, arm): "lowest" | "highest"}`` for the arms whose selected LR is the lowest or the
    highest of the several LRs searched for them: the optimum may lie outside the grid."""
    edges = {}
    for (task, arm), cell in grid.groupby(["task", "arm"], sort=False):
        if cell["lr"].nunique() < 2:
            continue
        lr = float(cell.loc[cell["selected"], "lr"].iloc[0])
        if lr == cell["lr"].min():
            edges[(task, arm)] = "lowest"
        elif lr == cell["lr"].max():
            edges[(task, arm)] = "highest"
    return edges


#: how far edge_runs widens a grid: lr_scale within [1 / WIDEST_SCALE, WIDEST_SCALE]
WIDEST_SCALE = 64.0


def edge_runs(runs: pd.DataFrame, grid: pd.DataFrame) -> list[tuple[str, str, float]]:
    """``(task, arm, lr_scale)`` of the runs that widen the grid past each edge of
    :func:`at_grid_edge` by a factor of 2; none where that scale was tried already (a diverged
    run counts: its LR was searched, it just has no score) or lies beyond :data:`WIDEST_SCALE`."""
    tried = search_runs(runs, finished_only=False)
    tried = tried[tried["search_setup"] == grid["setup"].iloc[0]]
    out = []
    for (task, arm), where in at_grid_edge(grid).items():
        scored = grid.loc[(grid["task"] == task) & (grid["arm"] == arm), "lr_scale"].astype(float)
        scale = scored.min() / 2 if where == "lowest" else scored.max() * 2
        attempted = tried.loc[(tried["task"] == task) & (tried["arm"] == arm), "lr_scale"].astype(float)
        if 1 / WIDEST_SCALE <= scale <= WIDEST_SCALE and not (attempted == scale).any():
            out.append((task, arm, float(scale)))
    return out


def table_yaml(grid: pd.DataFrame, source: str) -> str:
    """The text of selected_lr.yaml (protocol.lr_table reads its ``lr`` section)."""
    validation: dict = {}
    for row in grid.itertuples():
        validation.setdefault(row.task, {}).setdefault(row.arm, {})[float(row.lr)] = round(float(row.val_mean), 4)
    header = (f"# Learning rates selected on the validation split (fair protocol; dev never read), by\n"
              f"#   python -m adarank.analysis.select_lr {source}\n"
              f"# Use: python train.py -m +sweep=fair_table1 protocol.lr_table=<this file>\n")
    body = {"protocol": "fair", "setup": str(grid["setup"].iloc[0]),
            "criterion": "validation primary metric at the best validation evaluation, mean over seeds; ties: smaller LR",
            "lr": selected(grid), "validation": validation}
    return header + yaml.safe_dump(body, sort_keys=False)


def grid_markdown(grid: pd.DataFrame) -> str:
    lines = ["# LR search (fair protocol): validation score per peak LR", "",
             f"Setup: {grid['setup'].iloc[0]}. Validation: the primary metric at the best validation evaluation, "
             "mean ± std over seeds; **bold** = the LR selected (validation argmax). Test (dev, at the "
             "best-validation checkpoint) is shown for reading only: it takes no part in the choice.", ""]
    for task, part in grid.groupby("task", sort=False):
        rows = []
        for row in part.itertuples():
            val = f"{row.val_mean:.2f}" + (f" ± {row.val_std:.2f}" if pd.notna(row.val_std) else "")
            lr = f"**{row.lr:.3g}**" if row.selected else f"{row.lr:.3g}"
            rows.append({"method": arm_label(row.arm), "LR": lr, "validation": val, "seeds": row.seeds,
                         "test (reading only)": f"{row.test_mean:.2f}"})
        lines += [f"## {task_label(task)} ({part['primary_metric'].iloc[0]})", "", pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True), ""]
        edge = [f"{arm_label(arm)} ({where})" for (_, arm), where in at_grid_edge(part).items()]
        if edge:
            lines += ["At the edge of the searched grid, the selected LR being the lowest or the highest "
                      "searched (the best LR may lie outside it; widen the grid with protocol.lr_scale=...): "
                      + ", ".join(edge) + ".", ""]
    return "\n".join(lines) + "\n"


def sensitivity_figures(grid: pd.DataFrame, out_dir: Path) -> list:
    """One column-wide figure per task of the search's setup: validation score vs peak LR (log
    scale), one line per method: ``lr_sensitivity_<task>_<setup id>.png`` (figures.Drawn)."""
    from adarank.analysis.figures import Drawn, file_name, legend_below, line_figure, plt, save, setup_sentence, STYLE, title_tag

    out_dir.mkdir(parents=True, exist_ok=True)
    setup = str(grid["setup"].iloc[0])
    drawn = []
    for task, part in grid.groupby("task", sort=False):
        with plt.rc_context(STYLE):
            fig, ax = line_figure(part["arm"].nunique())
            for arm, line in part.groupby("arm", sort=False):
                bars = ax.errorbar(line["lr"], line["val_mean"], yerr=line["val_std"].fillna(0.0), marker="o",
                                   capsize=2, label=arm_label(arm), color=arm_color(arm))
                pick = line[line["selected"]]
                ax.plot(pick["lr"], pick["val_mean"], "o", markersize=8, markerfacecolor="none",
                        color=bars.lines[0].get_color())
            ax.set_xscale("log")
            ax.set_xlabel("peak learning rate")
            ax.set_ylabel(f"validation {part['primary_metric'].iloc[0]}")
            ax.set_title(f"{task_label(task)}: LR sensitivity" + title_tag(setup))
            legend_below(fig, ax)
            path = save(fig, out_dir / file_name(f"lr_sensitivity_{task}", setup))
        seeds = int(part["seeds"].max())
        caption = (f"{task_label(task)}: validation {part['primary_metric'].iloc[0]} at the best validation "
                   f"evaluation against the peak learning rate (fair protocol; mean over {seeds} seed(s), bars = std; "
                   f"circled = the LR selected, the validation argmax; dev never read). " + setup_sentence(setup))
        drawn.append(Drawn(path, setup, caption))
    return drawn


def outputs(grid: pd.DataFrame, source: str) -> dict[str, str | pd.DataFrame]:
    """File name -> content (text, or a frame for a .csv) of a selection."""
    return {SELECTED_FILE: table_yaml(grid, source), "lr_search.md": grid_markdown(grid), "lr_search.csv": grid}


def write_selection(runs: pd.DataFrame, out: Path, source: str, setup: str | None = None) -> list[Path]:
    """selected_lr.yaml, lr_search.md/.csv and the sensitivity figures under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    grid = lr_grid(runs, setup)
    files = []
    for name, content in outputs(grid, source).items():
        files.append(out / name)
        if isinstance(content, str):
            files[-1].write_text(content)
        else:
            content.to_csv(files[-1], index=False)
    return files + [d.path for d in sensitivity_figures(grid, out / "figures")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results tree holding the LR-search runs")
    parser.add_argument("--out", default="results/tables", help="folder for selected_lr.yaml, lr_search.md and figures/")
    parser.add_argument("--setup", default=None, help="the LR search's setup, when the tree has several")
    parser.add_argument("--edge-runs", action="store_true",
                        help="print 'TASK ARM SCALE' per run that widens the grid past a selected edge; write nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.edge_runs:
            runs = load_runs(args.results)
            for task, arm, scale in edge_runs(runs, lr_grid(runs, args.setup)):
                print(f"{task} {arm} {scale:g}")
            return 0
        files = write_selection(load_runs(args.results), Path(args.out), args.results, args.setup)
    except (NoResultsError, SelectionError) as err:
        print(f"select_lr: {err}", file=sys.stderr)
        return 2
    print(f"wrote {files[0]} (protocol.lr_table reads it) and {len(files) - 1} more files to {args.out}")
    print(Path(files[0]).read_text().split("\nvalidation:")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
