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


def to_latex(table: pd.DataFrame) -> str:
    """One float per setup (latex.py's layout): a row per rank, a column per task."""
    from adarank.analysis import latex
    from adarank.analysis.paper import task_label
    from adarank.analysis.runs import PAPER_SETUP
    from adarank.analysis.tables import MODEL_LABELS, setup_id, setup_model

    out = ["% DyLoRA at every rank (needs \\usepackage{booktabs})"]
    if table.empty:
        return "\n".join(out + ["% No DyLoRA run with per-rank evaluations."]) + "\n"
    for number, (setup, block) in enumerate(table.groupby("setup", sort=False)):
        tasks = list(dict.fromkeys(block["task"]))
        rows = []
        for rank, part in block.groupby("rank"):
            cells = {r.task: _latex_cell(r) for r in part.itertuples()}
            rows.append([str(rank), *(cells.get(task, "–") for task in tasks)])
        model = MODEL_LABELS.get(setup_model(setup), setup_model(setup))
        where = "" if setup == PAPER_SETUP else f"; setup {setup_id(setup)}"
        note = ("One DyLoRA adapter per seed, evaluated on the whole dev set at every rank b (the first b rows of A "
                "and columns of B, scaling alpha/b); mean ± std over seeds of the task's primary metric; n=k: k seeds "
                "where not 3." + ("" if setup == PAPER_SETUP else f" Setup {setup_id(setup)}: {setup}."))
        out.append(latex.render(latex.Table(
            header=["Rank", *(task_label(t) for t in tasks)], rows=rows, note=note,
            caption=f"DyLoRA at every rank, {model}{where}.",
            label="tab:dylora-ranks" + (f"-{setup_id(setup)}" if number else ""))))
    return "\n".join(out) + "\n"


def _latex_cell(row) -> str:
    spread = "" if pd.isna(row.std) else f"±{row.std:.1f}"
    return f"{row.mean:.2f}{spread}" + ("" if row.n == 3 else f"\nn={row.n}")


def _cell(row) -> str:
    spread = "" if pd.isna(row.std) else f" ± {row.std:.2f}"
    return f"{row.mean:.2f}{spread} (n={row.n})"
