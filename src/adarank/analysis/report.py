"""Everything `make tables` writes, from a results tree: Tables I-IV (Markdown, LaTeX, tidy CSV),
the cost table, Figures 2-5 (PNG) and runs.csv (one line per run found)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from adarank.analysis import costs as cost_table
from adarank.analysis import figures, tables
from adarank.analysis.defaults import DefaultConfigs
from adarank.analysis.runs import load_runs

TABLES = ("table1", "table2", "table3", "table4")


@dataclass
class Report:
    runs: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    costs: pd.DataFrame
    figures: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{len(self.runs)} finished run(s), setups: {', '.join(sorted(set(self.runs['setup'])))}"]
        for name, tidy in self.tables.items():
            cells = tidy[tidy["column"] != tables.AVG] if not tidy.empty else tidy
            filled = int((cells["n"] > 0).sum()) if not cells.empty else 0
            lines.append(f"{name}: {filled}/{len(cells)} cells with runs")
        lines.append(f"figures: {len(self.figures)}")
        return "\n".join(lines)


def build_report(results: str | Path, conf_dir: str | Path | None = None) -> Report:
    """Aggregate without writing anything (the notebook uses this)."""
    runs = load_runs(results, DefaultConfigs(conf_dir))
    built = {name: tables.build_table(runs, name) for name in TABLES}
    return Report(runs=runs, tables=built, costs=cost_table.build_costs(runs))


def write_report(results: str | Path, out: str | Path, conf_dir: str | Path | None = None) -> Report:
    out = Path(out)
    figure_dir = out / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(results, conf_dir)
    for name, tidy in report.tables.items():
        report.files += [
            _write(out / f"{name}.md", tables.to_markdown(tidy, name)),
            _write(out / f"{name}.tex", tables.to_latex(tidy, name)),
            _write_csv(out / f"{name}.csv", tidy),
        ]
    report.files += [
        _write(out / "costs.md", cost_table.costs_markdown(report.costs)),
        _write(out / "costs.tex", cost_table.costs_latex(report.costs)),
        _write_csv(out / "costs.csv", report.costs),
        _write_csv(out / "runs.csv", report.runs.drop(columns=["best", "final", "identity"])),
    ]
    report.figures += figures.figure2(report.runs, figure_dir)
    for name in figures.SENSITIVITY:
        report.figures += figures.sensitivity_figure(report.runs, name, figure_dir)
    report.files += report.figures
    return report


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path
