"""DyLoRA's per-rank table: one trained adapter evaluated at every rank 1..r_max (metrics.json
``by_rank``), mean ± std over seeds of the task's primary metric, one row per task and rank."""

from __future__ import annotations

import pandas as pd

COLUMNS = ["setup", "task", "rank", "n", "mean", "std"]


def build(runs: pd.DataFrame) -> pd.DataFrame:
    """Tidy per-rank rows of the DyLoRA runs that carry ``by_rank`` (empty without any)."""
    if "by_rank" not in runs.columns:
        return pd.DataFrame(columns=COLUMNS)
    rows = []
    for _, run in runs[runs["method"] == "dylora"].iterrows():
        for rank, score in (run["by_rank"] or {}).items():
            rows.append({"setup": run["setup"], "task": run["task"], "rank": int(rank), "seed": run["seed"], "score": score})
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.DataFrame(rows).groupby(["setup", "task", "rank"])["score"]
    table = frame.agg(n="count", mean="mean", std=lambda s: s.std(ddof=1) if len(s) > 1 else float("nan"))
    return table.reset_index()[COLUMNS]


def to_markdown(table: pd.DataFrame) -> str:
    """Tasks as columns, ranks as rows: 'mean ± std (n)' of the primary metric."""
    if table.empty:
        return "No DyLoRA run with per-rank evaluations (metrics.json by_rank).\n"
    parts = []
    for setup, block in table.groupby("setup"):
        cells = block.assign(cell=[_cell(r) for r in block.itertuples()])
        wide = cells.pivot(index="rank", columns="task", values="cell").sort_index()
        parts.append(f"DyLoRA at every rank (one adapter, dev primary metric, mean ± std over seeds); setup: {setup}\n\n"
                     + wide.to_markdown() + "\n")
    return "\n".join(parts)


def _cell(row) -> str:
    spread = "" if pd.isna(row.std) else f" ± {row.std:.2f}"
    return f"{row.mean:.2f}{spread} (n={row.n})"
