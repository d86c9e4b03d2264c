"""What `make tables` adds for the fair protocol (docs/fair-protocol.md), beside Tables I-IV:

* ``selected_lr.yaml``, ``lr_search.md/.csv`` and ``figures/lr_sensitivity_<task>``, when the
  tree holds a fair-protocol LR search (select_lr.py);
* ``budgets.md/.csv`` and ``figures/pareto_<task>`` for the shown setups (budgets.py, pareto.py);
* ``protocol_effect.md/.csv`` when a setup has runs under both protocols (protocol_effect.py).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from adarank.analysis import budgets, pareto, protocol_effect, select_lr


def write(runs: pd.DataFrame, shown: pd.DataFrame, out: Path, source: str) -> tuple[list[Path], list[Path], list[str]]:
    """Write the files under ``out`` (figures under ``out/figures``); return (files, figures, notes)."""
    files, figures, notes = [], [], []
    if not select_lr.search_runs(runs).empty:
        try:
            written = select_lr.write_selection(runs, out, source)
            files += written[:3]
            figures += written[3:]
        except select_lr.SelectionError as err:
            notes.append(f"LR selection: {err} (python -m adarank.analysis.select_lr {source} --setup ...)")
    table = budgets.build_budgets(shown)
    files += [_write(out / "budgets.md", budgets.budgets_markdown(table)), _csv(out / "budgets.csv", table)]
    drawn = pareto.pareto_figures(shown, out / "figures")
    if not drawn:
        notes.append("Pareto figures: no task of the shown setup has finished runs of two or more methods")
    figures += drawn
    effect = protocol_effect.build_effect(runs)
    if effect.empty:
        notes.append("protocol effect: no setup has finished runs under both protocols (protocol=paper and protocol=fair)")
    else:
        files += [_write(out / "protocol_effect.md", protocol_effect.effect_markdown(effect)),
                  _csv(out / "protocol_effect.csv", effect)]
    return files, figures, notes


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path
