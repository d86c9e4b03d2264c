"""What `make tables` adds for the fair protocol (docs/fair-protocol.md), beside Tables I-IV:

* ``selected_lr.yaml``, ``lr_search.md/.csv`` and ``figures/lr_sensitivity_<task>_<setup id>``, when the
  tree holds a fair-protocol LR search (select_lr.py);
* ``budgets.md/.csv`` and ``figures/pareto_<task>_<setup id>`` for the shown setups (budgets.py, pareto.py);
* ``protocol_effect.md/.csv`` when a setup has runs under both protocols (protocol_effect.py).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from adarank.analysis import budgets, pareto, protocol_effect


def build(runs: pd.DataFrame, shown: pd.DataFrame, figure_dir: Path, source: str
          ) -> tuple[dict[str, str | pd.DataFrame], list, list[str]]:
    """(file name -> text or frame, the figures drawn under ``figure_dir`` (figures.Drawn, one setup
    each), notes on what is missing)."""
    # imported here: ``python -m adarank.analysis.select_lr`` must not find it imported by the package
    from adarank.analysis import select_lr

    files: dict[str, str | pd.DataFrame] = {}
    figures: list = []
    notes: list[str] = []
    if not select_lr.search_runs(runs).empty:
        try:
            grid = select_lr.lr_grid(runs)
            files.update(select_lr.outputs(grid, source))
            figures += select_lr.sensitivity_figures(grid, figure_dir)
        except select_lr.SelectionError as err:
            notes.append(f"LR selection: {err} (python -m adarank.analysis.select_lr {source} --setup ...)")
    table = budgets.build_budgets(shown)
    files.update({"budgets.md": budgets.budgets_markdown(table), "budgets.csv": table})
    drawn = pareto.pareto_figures(shown, figure_dir)
    if not drawn:
        notes.append("Pareto figures: no task of the shown setup has finished runs of two or more methods")
    figures += drawn
    effect = protocol_effect.build_effect(runs)
    if effect.empty:
        notes.append("protocol effect: no setup has finished runs under both protocols (protocol=paper and protocol=fair)")
    else:
        files.update({"protocol_effect.md": protocol_effect.effect_markdown(effect), "protocol_effect.csv": effect})
    return files, figures, notes
