"""Everything `make tables` writes, from a results tree: Tables I-IV (Markdown, LaTeX, tidy CSV),
the cost table, Figures 2-5, learning curves and rank over time (each as PDF and PNG, one per
setup, with their captions in figures/captions.md), DyLoRA's per-rank table
(dylora_ranks.md/.tex/.csv, when a DyLoRA run has one), runs.csv (one line per run found) and
left_out.csv (every finished run a table does not show, with the reason).

Tables and figures show one setup (``setup=None``: the paper setup when the tree has it, else the
setup with most runs), a named one, or ``"all"``; the summary names the other setups and how to
select them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from adarank.analysis import costs as cost_table
from adarank.analysis import curves, dylora_ranks, fair_report, figures, tables
from adarank.analysis.defaults import DefaultConfigs
from adarank.analysis.runs import load_runs
from adarank.results import writes_folder_whole

TABLES = ("table1", "table2", "table3", "table4")
LEFT_OUT_COLUMNS = ["table", "task", "arm", "seed", "setup", "reason", "run_dir"]


class UnknownSetupError(ValueError):
    """``--setup`` names no setup of the tree."""


@dataclass
class Report:
    runs: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    costs: pd.DataFrame
    setups: list[str] = field(default_factory=list)  # the setups shown
    all_setups: list[str] = field(default_factory=list)
    left_out: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LEFT_OUT_COLUMNS))
    figures: list[Path] = field(default_factory=list)
    drawn: list[figures.Drawn] = field(default_factory=list)  # each figure with its setup, caption and runs
    dylora_ranks: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=dylora_ranks.COLUMNS))
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # why an expected figure was not drawn

    def summary(self) -> str:
        lines = [f"{len(self.runs)} finished run(s) in {len(self.all_setups)} setup(s); shown: "
                 + "; ".join(f"'{s}'" for s in self.setups)]
        for other in self.all_setups:
            if other not in self.setups:
                count = int((self.runs["setup"] == other).sum())
                lines.append(f"  not shown: '{other}' ({count} runs): --setup '{other}' (or --setup all)")
        for name, tidy in self.tables.items():
            printed = ~tidy["column"].isin([tables.AVG, *tables.csv_only_columns(name)]) if not tidy.empty else None
            cells = tidy[printed] if not tidy.empty else tidy
            filled = int((cells["n"] > 0).sum()) if not cells.empty else 0
            left = self.left_out[self.left_out["table"] == name]
            lines.append(f"{name}: {filled}/{len(cells)} cells with runs" + (f", {len(left)} run(s) left out" if len(left) else ""))
            for reason, count in left["reason"].value_counts().items():
                lines.append(f"  {count} left out: {reason}")
        every = self.left_out[self.left_out["table"] == "all"]
        for reason, count in every["reason"].value_counts().items():
            lines.append(f"{count} run(s) left out of every table: {reason}")
        lines.append(f"figures: {len(self.figures)}")
        lines += [f"  {note}" for note in self.notes]
        if not self.left_out.empty:
            lines.append("every left-out run with its reason: left_out.csv")
        return "\n".join(lines)


def build_report(results: str | Path, conf_dir: str | Path | None = None, setup: str | None = None) -> Report:
    """Aggregate without writing anything (the notebook uses this). ``setup``: None (the preferred
    setup), a setup label as printed in the summary, or ``"all"``."""
    dropped: list = []
    runs = load_runs(results, DefaultConfigs(conf_dir), dropped=dropped)
    all_setups = tables.ordered_setups(runs)
    if setup is None:
        shown = all_setups[:1]
    elif setup == "all":
        shown = all_setups
    elif setup in all_setups:
        shown = [setup]
    else:
        raise UnknownSetupError(f"no setup {setup!r} in {results}; the setups are: "
                                + "; ".join(f"'{s}'" for s in all_setups) + " (or all)")
    built = {name: tables.build_table(runs, name, shown) for name in TABLES}
    left = [tables.left_out(runs, name, shown) for name in TABLES]
    left.append(pd.DataFrame([{"table": "all", "task": None, "arm": None, "seed": None, "setup": None,
                               "reason": reason, "run_dir": run_dir} for run_dir, reason in dropped],
                             columns=LEFT_OUT_COLUMNS))
    left = [frame for frame in left if not frame.empty]
    shown_runs = runs[runs["setup"].isin(shown) & (runs["status"] == "completed")]  # no costs of diverged runs
    report = Report(runs=runs, tables=built, costs=cost_table.build_costs(shown_runs), setups=shown,
                    all_setups=all_setups, dylora_ranks=dylora_ranks.build(shown_runs),
                    left_out=pd.concat(left, ignore_index=True) if left else pd.DataFrame(columns=LEFT_OUT_COLUMNS))
    hidden = dylora_ranks.build(runs[~runs["setup"].isin(shown) & (runs["status"] == "completed")])
    for other in dict.fromkeys(hidden["setup"]):
        report.notes.append(f"DyLoRA per-rank table: runs in setup '{other}', not shown (--setup '{other}' or --setup all)")
    return report


@writes_folder_whole(marker="runs.csv")  # into a temporary folder, swapped in once complete
def write_report(results: str | Path, out: str | Path, conf_dir: str | Path | None = None,
                 setup: str | None = None, paper: str = "delta") -> Report:
    """Write everything into ``out``; ``paper``: how the LaTeX tables show the paper's numbers
    (tables.PAPER_LAYOUTS)."""
    out = Path(out)
    figure_dir = out / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(results, conf_dir, setup)
    for name, tidy in report.tables.items():
        left = report.left_out[report.left_out["table"] == name]
        report.files += [
            _write(out / f"{name}.md", tables.to_markdown(tidy, name, left)),
            _write(out / f"{name}.tex", tables.to_latex(tidy, name, paper)),
            _write_csv(out / f"{name}.csv", tidy),
        ]
    report.files += [
        _write(out / "costs.md", cost_table.costs_markdown(report.costs)),
        _write(out / "costs.tex", cost_table.costs_latex(report.costs)),
        _write_csv(out / "costs.csv", report.costs),
        _write_csv(out / "runs.csv", report.runs.drop(columns=["best", "final", "identity", "by_rank"])),
        _write_csv(out / "left_out.csv", report.left_out),
    ]
    if not report.dylora_ranks.empty:
        report.files += [_write(out / "dylora_ranks.md", dylora_ranks.to_markdown(report.dylora_ranks)),
                         _write(out / "dylora_ranks.tex", dylora_ranks.to_latex(report.dylora_ranks)),
                         _write_csv(out / "dylora_ranks.csv", report.dylora_ranks)]
    shown = report.runs[report.runs["setup"].isin(report.setups) & (report.runs["status"] == "completed")]
    kinds = {"Figure 2": [], "Figures 3-5": [], "learning curves": [], "rank over time": []}
    for one in report.setups:  # one figure per setup: setups are never pooled
        runs = shown[shown["setup"] == one]
        kinds["Figure 2"] += figures.figure2(runs, figure_dir)
        for name in figures.SENSITIVITY:
            kinds["Figures 3-5"] += figures.sensitivity_figure(runs, name, figure_dir)
        kinds["learning curves"] += curves.learning_curves(runs, figure_dir)
        kinds["rank over time"] += curves.rank_over_time(runs, figure_dir)
    # the fair protocol's LR selection, budgets, Pareto figures, protocol effect (fair_report.py)
    fair_files, fair_drawn, fair_notes = fair_report.build(report.runs, shown, figure_dir, str(results))
    report.files += [_write(out / name, content) if isinstance(content, str) else _write_csv(out / name, content)
                     for name, content in fair_files.items()]
    report.notes += fair_notes
    missing = {  # why a kind of figure was not drawn (Figure 2's reason reads every rank pattern: only when needed)
        "Figure 2": lambda: figures.figure2_note(report.runs, report.setups),
        "Figures 3-5": lambda: "Figures 3-5: no growing arm has runs at two or more values of init_warmup, "
                               "incre_interval or reference_rank in the shown setup (conf/sweep/fig3-5.yaml)",
        "learning curves": lambda: "learning curves: no run of the shown setup has two or more evaluations in "
                                   "its train_log.jsonl (train.eval_interval)",
        "rank over time": lambda: "rank over time: no growth_log.jsonl event in the shown growing/masking runs",
    }
    for kind, drawn in kinds.items():
        if not drawn:
            report.notes.append(missing[kind]())
        report.drawn += drawn
    report.drawn += fair_drawn
    report.figures = [d.path for d in report.drawn]
    if report.drawn:
        report.files.append(_write(figure_dir / "captions.md", captions_markdown(report.drawn)))
    report.files += report.figures + [path.with_suffix(".pdf") for path in report.figures]
    return report


def captions_markdown(drawn: list[figures.Drawn]) -> str:
    """Every figure's caption (the setup label and seeds per line, which the figures leave out)."""
    parts = ["# Figure captions", "",
             "Each figure is written twice: `<name>.png` for the screen and `<name>.pdf` (vector) for print; "
             "the copies published under docs/ keep the PNG only.", "",
             "Setups (the id ends each file name):", ""]
    for setup in dict.fromkeys(d.setup for d in drawn):
        sentence = figures.setup_sentence(setup).removeprefix(f"Setup {tables.setup_id(setup)}: ")
        parts.append(f"- `{tables.setup_id(setup)}`: {sentence}")
    parts.append("")
    for d in drawn:
        parts += [f"## {d.path.stem}", "", d.caption, ""]
    return "\n".join(parts)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path
