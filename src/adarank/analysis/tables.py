"""Tables I-IV: mean +- std over seeds of the best dev score, beside the paper's number.

Each table is first built as a tidy frame (one row per setup x table row x column, with
``mean, std, n, paper, paper_std, diff, picked``), then rendered as Markdown and LaTeX. A missing
cell is printed as ``missing (0/3 seeds)``, never as a blank or a zero.

* Table I: GLUE, one row per method arm; the plain TriAdaptLoRA row is, per task, the better (by
  mean) of the Linear and Non-Linear cells (reading A18), marked [L] or [N].
* Table II: Non-Linear TriAdaptLoRA with method.orth_reg true / false.
* Table III: Non-Linear TriAdaptLoRA with method.norm r / none / sqrt_r.
* Table IV: SQuAD 2.0 EM and F1 (both taken at the evaluation with the best F1); the .csv also has
  HasAns F1 and NoAns F1 (``csv_columns`` in paper_numbers.yaml), which the paper does not print.
* Avg.: the mean of the 8 task means (how the paper's Avg. column is computed), only when all 8
  cells have runs.
Std is the sample standard deviation (ddof=1) over seeds; one seed gives no std.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from adarank.analysis.paper import glue_tasks, load_paper, paper_avg, paper_cell, task_label
from adarank.analysis.runs import AXES, PAPER_SETUP

EXPECTED_SEEDS = 3
AVG = "avg"
#: the row every other row is tested against (Welch's t-test over seeds), per table
REFERENCE_ROW = {"table1": "triadapt_best", "table2": "orthogonal", "table3": "norm_r", "table4": "triadapt_linear"}
ALPHA = 0.05  # significance level of the mark
SQUAD_TASK = "squad_v2"
# alternative names a SQuAD metric may be recorded under
METRIC_ALIASES = {"exact": ("exact", "exact_match", "em"), "f1": ("f1",)}

Selector = Callable[[pd.DataFrame], pd.DataFrame]


@dataclass(frozen=True)
class RowSpec:
    key: str
    label: str
    select: Selector | None  # None for a derived (best-of) row
    best_of: tuple[str, ...] = ()


def axes_unchanged(frame: pd.DataFrame, allowed: tuple[str, ...] = ()) -> pd.Series:
    """True for runs whose swept hyperparameters are all at the default, except those ``allowed``."""
    mask = pd.Series(True, index=frame.index)
    for column in AXES.values():
        if column not in allowed:
            mask &= ~frame[f"{column}_changed"].astype(bool)
    return mask


def by_arm(arm: str) -> Selector:
    return lambda f: f[(f["arm"] == arm) & axes_unchanged(f)]


def by_axis(arm: str, axis: str, value) -> Selector:
    def select(f: pd.DataFrame) -> pd.DataFrame:
        picked = f[(f["arm"] == arm) & axes_unchanged(f, (axis,))]
        mask = picked[axis].map(lambda v: _equal(v, value)).astype(bool)
        return picked.loc[mask]

    return select


def _equal(a, b) -> bool:
    if isinstance(b, bool) or isinstance(a, bool):
        return bool(a) == bool(b) if a is not None else False
    return a == b


def table_rows(table: str) -> list[RowSpec]:
    spec = load_paper()[table]["rows"]
    rows = []
    for key, row in spec.items():
        label = row["label"]
        if row.get("best_of"):
            rows.append(RowSpec(key, label, None, tuple(row["best_of"])))
        elif table in ("table1", "table4"):
            rows.append(RowSpec(key, label, by_arm(key)))
        elif table == "table2":
            rows.append(RowSpec(key, label, by_axis("triadapt_nonlinear", "orth_reg", key == "orthogonal")))
        elif table == "table3":
            rows.append(RowSpec(key, label, by_axis("triadapt_nonlinear", "norm", key.removeprefix("norm_"))))
    return rows


# --- building the tidy frames -------------------------------------------------------------------


def build_table(runs: pd.DataFrame, table: str, setups: list[str] | None = None) -> pd.DataFrame:
    """Tidy cells of one table for each of ``setups`` (default: every setup in ``runs``, the paper
    setup first, then by number of runs)."""
    frames = []
    for setup in ordered_setups(runs) if setups is None else setups:
        frames.append(_build_for_setup(runs[runs["setup"] == setup], table, setup))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def ordered_setups(runs: pd.DataFrame) -> list[str]:
    """Setups found in ``runs``: the paper setup first, then the one with most runs."""
    counts = runs["setup"].value_counts()
    return sorted(counts.index, key=lambda s: (s != PAPER_SETUP, -counts[s], s))


def table_tasks(table: str) -> list[str]:
    return [SQUAD_TASK] if table == "table4" else glue_tasks()


def left_out(runs: pd.DataFrame, table: str, setups: list[str]) -> pd.DataFrame:
    """The finished runs a table could hold (its tasks; for Tables II-III the Non-Linear arm) that
    it does not show, each with the reason: another setup, no row for its method arm, or a swept
    hyperparameter away from the setup's default."""
    candidates = runs[runs["task"].isin(table_tasks(table))]
    if table in ("table2", "table3"):
        candidates = candidates[candidates["arm"] == "triadapt_nonlinear"]
    used: set = set()
    for setup in setups:
        part = candidates[candidates["setup"] == setup]
        for row in table_rows(table):
            if row.select is not None:
                used |= set(row.select(part).index)
    arms = {row.key for row in table_rows(table)}
    records = []
    for index, run in candidates.iterrows():
        if index in used:
            continue
        if run["setup"] not in setups:
            reason = f"setup '{run['setup']}' (select it with --setup '{run['setup']}' or --setup all)"
        elif table in ("table1", "table4") and run["arm"] not in arms:
            reason = f"no row for method arm {run['arm']}"
        else:
            changed = [f"{c}={run[c]}" for c in AXES.values() if bool(run[f"{c}_changed"])]
            reason = ("swept value " + ", ".join(changed) + " (a Table II/III or figure run)") if changed else "not selected"
        records.append({"table": table, "task": run["task"], "arm": run["arm"], "seed": run["seed"],
                        "setup": run["setup"], "reason": reason, "run_dir": run["run_dir"]})
    return pd.DataFrame(records, columns=["table", "task", "arm", "seed", "setup", "reason", "run_dir"])


def _build_for_setup(runs: pd.DataFrame, table: str, setup: str) -> pd.DataFrame:
    squad = table == "table4"
    columns = [*load_paper()["table4"]["columns"], *csv_only_columns(table)] if squad else glue_tasks()
    runs = runs[runs["task"].isin(table_tasks(table))]
    records = []
    cells: dict[tuple[str, str], dict] = {}
    rows = table_rows(table)
    for row in sorted(rows, key=lambda r: r.select is None):  # derived (best-of) rows last
        picked = row.select(runs) if row.select is not None else None
        for column in columns:
            if picked is None:
                cells[(row.key, column)] = _best_of(cells, row.best_of, column)
            else:
                cells[(row.key, column)] = {**_stats(_values(picked, column, squad)), "diverged": _diverged(picked, column, squad)}
    _significance(cells, rows, columns, table)
    for row in rows:
        for column in columns:
            cell = cells[(row.key, column)]
            paper, paper_std = paper_cell(table, row.key, column)
            records.append(_record(table, setup, row, column, cell, paper, paper_std))
        if not squad:
            means = [cells[(row.key, c)]["mean"] for c in columns]
            found = [m for m in means if m is not None]
            avg = sum(found) / len(found) if len(found) == len(columns) else None
            cell = {"mean": avg, "std": None, "n": len(found), "picked": None}
            records.append(_record(table, setup, row, AVG, cell, paper_avg(table, row.key), None))
    return pd.DataFrame(records)


def _values(picked: pd.DataFrame, column: str, squad: bool) -> list[float]:
    if not squad:
        picked = picked[picked["task"] == column]
        return [v for v in picked["score"] if v is not None and not math.isnan(v)]
    values = []
    for best in picked["best"]:
        for alias in METRIC_ALIASES.get(column, (column,)):
            if best.get(alias) is not None:
                values.append(float(best[alias]))
                break
    return values


def _diverged(picked: pd.DataFrame, column: str, squad: bool) -> int:
    """Runs of the cell whose loss became NaN/inf (metrics.json status diverged)."""
    if "status" not in picked:
        return 0
    return int(((picked["status"] == "diverged") & (squad or picked["task"] == column)).sum())


def _stats(values: list[float]) -> dict:
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "picked": None, "values": []}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n, "picked": None, "values": list(values)}


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (unequal variances) between two seed samples; None
    with fewer than 2 seeds on a side or no spread at all."""
    if len(a) < 2 or len(b) < 2:
        return None
    import warnings

    from scipy.stats import ttest_ind

    with warnings.catch_warnings():  # near-identical seeds: scipy warns, the p-value stays usable
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def _significance(cells: dict, rows: list[RowSpec], columns: list[str], table: str) -> None:
    """p-value of each row against the table's reference row (REFERENCE_ROW), per column."""
    reference = REFERENCE_ROW.get(table)
    keys = {row.key: row for row in rows}
    if reference not in keys:
        return
    skip = {reference, *keys[reference].best_of}  # the reference's own sources
    for row in rows:
        for column in columns:
            cell = cells[(row.key, column)]
            cell["p_value"] = None if row.key in skip else welch_p(cells[(reference, column)]["values"], cell["values"])


def _best_of(cells: dict, sources: tuple[str, ...], column: str) -> dict:
    candidates = [(key, cells[(key, column)]) for key in sources if cells[(key, column)]["mean"] is not None]
    if not candidates:
        return {"mean": None, "std": None, "n": 0, "picked": None, "values": []}
    key, cell = max(candidates, key=lambda kc: kc[1]["mean"])  # ties: the first source (Linear)
    return {**cell, "picked": key}


def _record(table, setup, row: RowSpec, column, cell, paper, paper_std) -> dict:
    diff = cell["mean"] - paper if cell["mean"] is not None and paper is not None else None
    return {
        "table": table,
        "setup": setup,
        "row": row.key,
        "label": row.label,
        "column": column,
        "mean": cell["mean"],
        "std": cell["std"],
        "n": cell["n"],
        "diverged": cell.get("diverged", 0),
        "picked": cell["picked"],
        "paper": paper,
        "paper_std": paper_std,
        "diff": diff,
        "p_value": cell.get("p_value"),
    }


# --- rendering ----------------------------------------------------------------------------------

MARK = "†"


def legend(table: str) -> str:
    reference = load_paper()[table]["rows"].get(REFERENCE_ROW.get(table), {}).get("label", "the reference row")
    return (
        "Ours: mean ± std over seeds of the best dev score ((n=k) when fewer or more than "
        f"{EXPECTED_SEEDS} seeds); Paper: the number the paper reports; Δ = ours − paper. Bold: the best "
        f"mean of each column. {MARK}: the row differs from {reference} on that task beyond seed noise "
        f"(Welch's t-test over seeds, p < {ALPHA}; every p-value is in the .csv). [L]/[N]: the "
        "TriAdaptLoRA row took the Linear / Non-Linear cell. Avg. = mean of the 8 task means (needs all 8). "
        "Missing cells say so (\"missing\"; – in LaTeX)."
    )


def column_label(table: str, column: str) -> str:
    if column == AVG:
        return "Avg."
    if table == "table4":
        return f"SQuAD 2.0 ({load_paper()['table4']['columns'][column]})"
    return task_label(column)


def ours_text(rec: dict) -> str:
    if rec["column"] == AVG:
        return f"{rec['mean']:.2f}" if rec["mean"] is not None else f"missing ({rec['n']:.0f}/8 tasks)"
    diverged = rec.get("diverged") or 0
    if rec["mean"] is None:
        return f"diverged ({diverged:.0f}/{EXPECTED_SEEDS} seeds)" if diverged else f"missing (0/{EXPECTED_SEEDS} seeds)"
    spread = f" ± {rec['std']:.2f}" if rec["std"] is not None else ""
    note = f"n={rec['n']:.0f}" if rec["n"] != EXPECTED_SEEDS or diverged else ""
    note += f", {diverged:.0f} diverged" if diverged else ""
    seeds = f" ({note})" if note else ""
    pick = f" [{'L' if rec['picked'].endswith('_linear') else 'N'}]" if rec["picked"] else ""
    mark = MARK if rec.get("p_value") is not None and rec["p_value"] < ALPHA else ""
    return f"{rec['mean']:.2f}{spread}{seeds}{pick}{mark}"


def paper_text(rec: dict) -> str:
    if rec["paper"] is None:
        return "–"
    return f"{rec['paper']:.2f}" + (f" ± {rec['paper_std']:.1f}" if rec["paper_std"] is not None else "")


def diff_text(rec: dict) -> str:
    return "–" if rec["diff"] is None else f"{rec['diff']:+.2f}"


BLOCKS = {"Ours": ("mean", ours_text), "Paper": ("paper", paper_text), "Δ (ours − paper)": (None, diff_text)}


def blocks(tidy: pd.DataFrame, table: str, setup: str) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Per block (Ours, Paper, Δ): the cell texts and where the bold (best mean per column) goes,
    rows = method labels, columns = task labels. The paper's setup keeps every column of the
    paper's table; another setup (a mini sweep on two tasks) shows only the columns it has runs in."""
    part = tidy[tidy["setup"] == setup]
    columns = [c for c in dict.fromkeys(part["column"]) if c not in csv_only_columns(table)]
    if setup != PAPER_SETUP:
        columns = [c for c in columns if part.loc[part["column"] == c, "mean"].notna().any()] or columns
    labels = list(dict.fromkeys(part["label"]))
    out = {}
    for name, (value_key, text) in BLOCKS.items():
        texts = pd.DataFrame("", index=labels, columns=[column_label(table, c) for c in columns])
        bold = pd.DataFrame(False, index=texts.index, columns=texts.columns)
        for column in columns:
            recs = [_clean(r) for r in part[part["column"] == column].to_dict("records")]
            values = [r[value_key] for r in recs if value_key and r[value_key] is not None]
            best = max(values) if values else None
            for rec in recs:
                texts.loc[rec["label"], column_label(table, column)] = text(rec)
                if best is not None and rec[value_key] is not None and math.isclose(rec[value_key], best):
                    bold.loc[rec["label"], column_label(table, column)] = True
        out[name] = (texts, bold)
    return out


def csv_only_columns(table: str) -> dict:
    """Columns written to the table's .csv but not printed (Table IV's HasAns / NoAns F1)."""
    return load_paper()[table].get("csv_columns") or {}


def _clean(rec: dict) -> dict:
    """pandas turns None into NaN in numeric columns: back to None."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}


def setup_heading(setup: str) -> str:
    if setup == PAPER_SETUP:
        return "Paper setup (DeBERTaV3-base, Table V/VI hyperparameters)"
    return f"Other setup ({setup}): not comparable with the paper's numbers"


def to_markdown(tidy: pd.DataFrame, table: str, left: pd.DataFrame | None = None) -> str:
    title = load_paper()[table]["title"]
    parts = [f"# {title}", "", legend(table), ""]
    if tidy.empty:
        parts += ["No runs for this table.", ""]
    else:
        for setup in dict.fromkeys(tidy["setup"]):
            parts += [f"## {setup_heading(setup)}", ""]
            for name, (texts, bold) in blocks(tidy, table, setup).items():
                shown = texts.where(~bold, "**" + texts + "**")
                parts += [f"### {name}", "", shown.rename_axis("Method").reset_index().to_markdown(index=False), ""]
        parts += ["Row sources:", ""]
        for key, row in load_paper()[table]["rows"].items():
            parts.append(f"- {row['label']}: {row['source']}")
    if left is not None and not left.empty:
        parts += ["", left_out_markdown(left)]
    return "\n".join(parts) + "\n"


def left_out_markdown(left: pd.DataFrame) -> str:
    """The runs a table leaves out, grouped by reason (task/arm/seed each)."""
    lines = [f"## Finished runs left out of this table ({len(left)})", ""]
    for reason, group in left.groupby("reason", sort=False):
        runs = ", ".join(f"{t}/{a}/seed{s}" for t, a, s in group[["task", "arm", "seed"]].itertuples(index=False))
        lines.append(f"- {reason}: {runs}")
    return "\n".join(lines)


def to_latex(tidy: pd.DataFrame, table: str) -> str:
    """One ``table*`` per setup (booktabs rules through pandas' Styler, bold best means, the
    blocks Ours / Paper / Δ as row groups, scaled to the text width of a two-column page)."""
    title = load_paper()[table]["title"]
    out = [f"% {title}", "% needs \\usepackage{booktabs,multirow,graphicx}"]
    if tidy.empty:
        return "\n".join(out + ["% No runs for this table."]) + "\n"
    caption = title.split(": ", 1)[-1] if title.startswith("Table") else title  # LaTeX numbers it
    for number, setup in enumerate(dict.fromkeys(tidy["setup"])):
        parts = blocks(tidy, table, setup)
        texts = pd.concat({latex_escape(k): v[0] for k, v in parts.items()})
        bold = pd.concat({latex_escape(k): v[1] for k, v in parts.items()})
        texts = texts.map(lambda v: "--" if v.startswith("missing") else latex_escape(v))  # -- : no run
        texts.index = pd.MultiIndex.from_tuples([(b, latex_escape(m)) for b, m in texts.index])
        texts.columns = [latex_escape(c) for c in texts.columns]
        bold.index, bold.columns = texts.index, texts.columns
        styler = texts.style.apply(lambda _: bold.replace({True: "font-weight: bold;", False: ""}), axis=None)
        label = f"tab:{table}" + (f"-{number + 1}" if number else "")
        text = styler.to_latex(
            hrules=True, convert_css=True, environment="table*", position="t", position_float="centering",
            caption=f"{latex_escape(caption)}. {latex_escape(setup_heading(setup))}.", label=label,
            multirow_align="t", clines="skip-last;data", column_format="ll" + "c" * texts.shape[1],
        )
        text = text.replace("\\cline{1-" + str(texts.shape[1] + 2) + "}", "\\midrule")
        text = text.replace("\\begin{tabular}", "\\resizebox{\\textwidth}{!}{%\n\\begin{tabular}")
        text = text.replace("\\end{tabular}", "\\end{tabular}}\n\\par\\smallskip\\footnotesize " + latex_escape(legend(table)))
        out += [text]
    return "\n".join(out) + "\n"


def latex_escape(text: str, keep_math: bool = False) -> str:
    text = str(text)
    if keep_math:  # cell_text(latex=True) already wrote $\pm$ and $\Delta$
        pieces = text.split("$")
        return "$".join(p if i % 2 else _escape_plain(p) for i, p in enumerate(pieces))
    return _escape_plain(text)


def _escape_plain(text: str) -> str:
    for char, repl in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(char, repl)
    return (text.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("−", "-").replace("–", "--")
            .replace("†", r"$^\dagger$"))
