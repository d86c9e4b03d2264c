"""Tables I-IV: mean +- std over seeds of the score (the best periodic dev evaluation under the paper
protocol, dev at the checkpoint chosen on validation under the fair one), beside the paper's number.

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

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from adarank.analysis import latex
from adarank.analysis.paper import glue_tasks, load_paper, paper_avg, paper_cell, task_label
from adarank.analysis.runs import AXES, PAPER_MODEL, PAPER_SETUP, is_fair, protocol_note, score_words

EXPECTED_SEEDS = 3
#: the fair protocol's seeds per cell (conf/sweep/fair_table1.yaml, mini_fair.yaml: seeds 1-5)
FAIR_SEEDS = 5
AVG = "avg"
#: the row every other row is tested against (Welch's t-test over seeds), per table
REFERENCE_ROW = {"table1": "triadapt_best", "table2": "orthogonal", "table3": "norm_r", "table4": "triadapt_linear"}
ALPHA = 0.05  # significance level of the mark
SQUAD_TASK = "squad_v2"
# alternative names a SQuAD metric may be recorded under
METRIC_ALIASES = {"exact": ("exact", "exact_match", "em"), "f1": ("f1",)}


def expected_seeds(setup: str) -> int:
    """Seeds a cell of this setup should have: n=k is printed only where k differs."""
    return FAIR_SEEDS if is_fair(setup) else EXPECTED_SEEDS

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
    model = ", ".join(sorted(set(map(str, runs["model"])))) if "model" in runs else None
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
    frame = pd.DataFrame(records)
    frame.insert(2, "model", model)  # the model(s) of the setup's runs, which captions name
    return frame


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
    """p-value of each row against the table's reference row (REFERENCE_ROW), per column. When the
    reference is a best-of row (Table I's TriAdaptLoRA), the source it took is the reference
    itself (no p-value) and the other source is tested against it: Linear vs Non-Linear."""
    reference = REFERENCE_ROW.get(table)
    keys = {row.key: row for row in rows}
    if reference not in keys:
        return
    for row in rows:
        for column in columns:
            cell = cells[(row.key, column)]
            itself = row.key == reference or row.key == cells[(reference, column)].get("picked")
            cell["p_value"] = None if itself else welch_p(cells[(reference, column)]["values"], cell["values"])


def _best_of(cells: dict, sources: tuple[str, ...], column: str) -> dict:
    candidates = [(key, cells[(key, column)]) for key in sources if cells[(key, column)]["mean"] is not None]
    if not candidates:
        return {"mean": None, "std": None, "n": 0, "picked": None, "values": []}
    key, cell = max(candidates, key=lambda kc: kc[1]["mean"])  # ties: the first source (Linear)
    return {**cell, "picked": key}


def _record(table, setup, row: RowSpec, column, cell, paper, paper_std) -> dict:
    # paper: the published number, for reference in every setup; diff: ours - paper, only where
    # the setup is the paper's (another model or length is not comparable, so no difference)
    comparable = setup == PAPER_SETUP and cell["mean"] is not None and paper is not None
    diff = cell["mean"] - paper if comparable else None
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
#: the model as a caption names it
MODEL_LABELS = {"deberta_v3_base": "DeBERTaV3-base", "minilm": "MiniLM (all-MiniLM-L6-v2)",
                "tiny": "a tiny random DeBERTa"}
#: how the LaTeX tables of the paper setup show the paper's numbers: "delta" = ours, with
#: (ours − paper) below it in the same cell; "column" = a compact paper column beside each of
#: ours; "none" = ours only. Other setups never show them (not comparable).
PAPER_LAYOUTS = ("delta", "column", "none")


def setup_id(setup: str) -> str:
    """A short name for a setup that stays the same across runs of ``make tables`` (file names,
    figure titles, table headings): ``paper`` for the paper setup, else the model and 6 hex digits
    of the label's hash (``minilm-3f9a2c``). Captions and notes give the whole label."""
    if setup == PAPER_SETUP:
        return "paper"
    return f"{setup_model(setup)}-{hashlib.sha256(setup.encode()).hexdigest()[:6]}"


def setup_model(setup: str) -> str:
    """The model a setup label names (the paper's for the paper setup)."""
    match = re.match(r"model=([\w.-]+)", setup)
    return PAPER_MODEL if setup == PAPER_SETUP or not match else match.group(1)


def title(table: str, models=(), setups=()) -> str:
    """The table's title naming the model(s) of its runs (the paper's, DeBERTaV3-base, by default)
    and, where the title names it, what the score is under the setups' protocol(s)."""
    names = [MODEL_LABELS.get(m, m) for m in dict.fromkeys(models) if isinstance(m, str)] or [MODEL_LABELS[PAPER_MODEL]]
    return load_paper()[table]["title"].format(model=" / ".join(names), score=score_words(setups))


def legend(table: str, with_paper: bool = True, setups=()) -> str:
    reference = load_paper()[table]["rows"].get(REFERENCE_ROW.get(table), {}).get("label", "the reference row")
    paper = "Paper: the number the paper reports; Δ = ours − paper (paper setup only). " if with_paper else ""
    pick = ("[L]/[N]: the TriAdaptLoRA row took the Linear / Non-Linear cell; the other of the two is "
            "tested against it. " if table == "table1" else "")
    return (
        f"Ours: mean ± std over seeds of the score ({score_words(setups)}; (n=k) when fewer or more than "
        f"{_seeds_words(setups)}). {paper}Bold: the best mean of each column. {MARK}: the row differs from "
        f"{reference} on that task beyond seed noise (Welch's t-test over seeds, p < {ALPHA}; every p-value "
        f"is in the .csv). {pick}Avg. = mean of the 8 task means (needs all 8). Missing cells say so "
        "(\"missing\"; -- in LaTeX)."
    )


def _seeds_words(setups) -> str:
    counts = sorted({expected_seeds(s) for s in setups} or {EXPECTED_SEEDS})
    if len(counts) == 1:
        return f"{counts[0]} seeds"
    return f"{EXPECTED_SEEDS} seeds under the paper protocol, {FAIR_SEEDS} under the fair one"


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
        expected = expected_seeds(rec["setup"])
        return f"diverged ({diverged:.0f}/{expected} seeds)" if diverged else f"missing (0/{expected} seeds)"
    spread = f" ± {rec['std']:.2f}" if rec["std"] is not None else ""
    seeds = f" ({_seed_note(rec)})" if _seed_note(rec) else ""
    return f"{rec['mean']:.2f}{spread}{seeds}{_pick(rec)}{_mark(rec)}"


def _seed_note(rec: dict) -> str:
    diverged = rec.get("diverged") or 0
    note = f"n={rec['n']:.0f}" if rec["n"] != expected_seeds(rec["setup"]) or diverged else ""
    return note + (f", {diverged:.0f} diverged" if diverged else "")


def _pick(rec: dict) -> str:
    return f" [{'L' if rec['picked'].endswith('_linear') else 'N'}]" if rec.get("picked") else ""


def _mark(rec: dict) -> str:
    return MARK if rec.get("p_value") is not None and rec["p_value"] < ALPHA else ""


def paper_text(rec: dict) -> str:
    if rec["paper"] is None:
        return "–"
    return f"{rec['paper']:.2f}" + (f" ± {rec['paper_std']:.1f}" if rec["paper_std"] is not None else "")


def diff_text(rec: dict) -> str:
    return "–" if rec["diff"] is None else f"{rec['diff']:+.2f}"


BLOCKS = {"Ours": ("mean", ours_text), "Paper": ("paper", paper_text), "Δ (ours − paper)": (None, diff_text)}


def shown_columns(part: pd.DataFrame, setup: str, table: str) -> list[str]:
    """The paper's setup keeps every column of the paper's table; another setup (a mini sweep on
    two tasks) shows only the columns it has runs in. Columns kept for the .csv only are never
    printed."""
    columns = [c for c in dict.fromkeys(part["column"]) if c not in csv_only_columns(table)]
    if setup != PAPER_SETUP:
        columns = [c for c in columns if part.loc[part["column"] == c, "mean"].notna().any()] or columns
    return columns


def shown_rows(part: pd.DataFrame, setup: str) -> list[str]:
    """The row keys printed for a setup: every row of the paper's table in the paper's setup (its
    numbers stand beside ours); in another setup (a mini sweep of a few methods) only the rows
    with a finished or diverged run in some task, the others named once below the table
    (``unrun_rows``)."""
    keys = list(dict.fromkeys(part["row"]))
    if setup == PAPER_SETUP:
        return keys
    tasks = part[part["column"] != AVG]
    ran = tasks.loc[(tasks["n"] > 0) | (tasks["diverged"] > 0), "row"]
    return [k for k in keys if k in set(ran)] or keys


def unrun_rows(part: pd.DataFrame, setup: str) -> list[str]:
    """The labels of the rows ``shown_rows`` leaves out."""
    shown = set(shown_rows(part, setup))
    return list(dict.fromkeys(part.loc[~part["row"].isin(shown), "label"]))


def blocks(tidy: pd.DataFrame, table: str, setup: str) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Per block (Ours; Paper and Δ for the paper setup only): the cell texts and where the bold
    (best mean per column) goes, rows = method labels, columns = task labels."""
    part = tidy[tidy["setup"] == setup]
    part = part[part["row"].isin(shown_rows(part, setup))]
    columns = shown_columns(part, setup, table)
    labels = list(dict.fromkeys(part["label"]))
    out = {}
    for name, (value_key, text) in BLOCKS.items():
        if name != "Ours" and setup != PAPER_SETUP:
            continue  # the paper's numbers are not comparable with another setup's
        texts = pd.DataFrame("", index=labels, columns=[column_label(table, c) for c in columns])
        bold = pd.DataFrame(False, index=texts.index, columns=texts.columns)
        for column in columns:
            recs = [_clean(r) for r in part[part["column"] == column].to_dict("records")]
            best = _best(recs, value_key)
            for rec in recs:
                texts.loc[rec["label"], column_label(table, column)] = text(rec)
                if best is not None and rec[value_key] is not None and math.isclose(rec[value_key], best):
                    bold.loc[rec["label"], column_label(table, column)] = True
        out[name] = (texts, bold)
    return out


def _best(recs: list[dict], key: str | None) -> float | None:
    values = [r[key] for r in recs if key and r[key] is not None]
    return max(values) if values else None


def csv_only_columns(table: str) -> dict:
    """Columns written to the table's .csv but not printed (Table IV's HasAns / NoAns F1)."""
    return load_paper()[table].get("csv_columns") or {}


def _clean(rec: dict) -> dict:
    """pandas turns None into NaN in numeric columns: back to None."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}


def setup_heading(setup: str) -> str:
    if setup == PAPER_SETUP:
        return f"Paper setup (DeBERTaV3-base, Table V/VI hyperparameters; {protocol_note(setup)})"
    return f"Setup {setup_id(setup)} ({setup}): not comparable with the paper's numbers; {protocol_note(setup)}"


def to_markdown(tidy: pd.DataFrame, table: str, left: pd.DataFrame | None = None) -> str:
    setups = list(dict.fromkeys(tidy["setup"])) if not tidy.empty else []
    models = tidy["model"] if "model" in tidy else ()
    parts = [f"# {title(table, models, setups)}", "", legend(table, PAPER_SETUP in setups, setups), ""]
    if tidy.empty:
        parts += ["No runs for this table.", ""]
    else:
        for setup in setups:
            parts += [f"## {setup_heading(setup)}", ""]
            if not _has_runs(tidy, setup):
                parts += ["No run of this setup for this table.", ""]
                continue
            for name, (texts, bold) in blocks(tidy, table, setup).items():
                shown = texts.where(~bold, "**" + texts + "**")
                parts += [f"### {name}", "", shown.rename_axis("Method").reset_index().to_markdown(index=False), ""]
            unrun = unrun_rows(tidy[tidy["setup"] == setup], setup)
            if unrun:
                parts += [f"Not run in this setup: {', '.join(unrun)}.", ""]
        if PAPER_SETUP in setups:
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


# --- LaTeX --------------------------------------------------------------------------------------


def to_latex(tidy: pd.DataFrame, table: str, paper: str = "delta") -> str:
    """One float per setup in the paper's layout (one row per method, a column per task, the best
    mean of each column bold), laid out by latex.py to print at 7-8 pt in a two-column article.
    ``paper``: how the paper setup shows the paper's numbers (PAPER_LAYOUTS)."""
    if paper not in PAPER_LAYOUTS:
        raise ValueError(f"paper={paper!r}: choose one of {', '.join(PAPER_LAYOUTS)}")
    setups = [s for s in dict.fromkeys(tidy["setup"]) if _has_runs(tidy, s)] if not tidy.empty else []
    out = [f"% {title(table, tidy['model'] if 'model' in tidy else (), setups)}", "% needs \\usepackage{booktabs}"]
    if not setups:
        return "\n".join(out + ["% No runs for this table."]) + "\n"
    for number, setup in enumerate(setups):
        out.append(latex.render(latex_table(tidy, table, setup, paper, first=number == 0)))
    return "\n".join(out) + "\n"


def _has_runs(tidy: pd.DataFrame, setup: str) -> bool:
    part = tidy[(tidy["setup"] == setup) & (tidy["column"] != AVG)]
    return bool((part["n"] > 0).any() or (part["diverged"] > 0).any())


def latex_table(tidy: pd.DataFrame, table: str, setup: str, paper: str = "delta", first: bool = True) -> latex.Table:
    part = tidy[tidy["setup"] == setup]
    columns = shown_columns(part, setup, table)
    with_paper = setup == PAPER_SETUP and paper != "none" and part["paper"].notna().any()
    layout = paper if with_paper else "none"
    header: list = ["Method"]
    for column in columns:
        name = _latex_column(table, column)
        header += [(name, "Ours"), (name, "Paper")] if layout == "column" else [name]
    rows, bold = [], []
    for key in shown_rows(part, setup):
        recs = {r["column"]: _clean(r) for r in part[part["row"] == key].to_dict("records")}
        first_rec = next(iter(recs.values()))
        cells, strong = [row_label(table, key, first_rec["label"])], [False]
        for column in columns:
            rec = recs[column]
            column_recs = [_clean(r) for r in part[part["column"] == column].to_dict("records")]
            cells.append(latex_cell(rec, layout))
            strong.append(_is_best(rec, column_recs, "mean"))
            if layout == "column":
                cells.append(f"{rec['paper']:.2f}" if rec["paper"] is not None else "–")
                strong.append(_is_best(rec, column_recs, "paper"))
        rows.append(cells)
        bold.append(strong)
    models = list(dict.fromkeys(part["model"])) if "model" in part else []
    caption = title(table, models, [setup]).split(": ", 1)[-1]  # LaTeX numbers the table itself
    if setup != PAPER_SETUP:
        caption += f"; setup {setup_id(setup)}, not comparable with the paper's numbers"
    label = f"tab:{table}" if first else f"tab:{table}-{setup_id(setup)}"
    return latex.Table(header=header, rows=rows, bold=bold, caption=caption + ".", label=label,
                       note=latex_note(table, setup, layout))


def _latex_column(table: str, column: str) -> str:
    if column == AVG:
        return "Avg."
    return load_paper()["table4"]["columns"][column] if table == "table4" else task_label(column)


def row_label(table: str, key: str, label: str) -> str:
    """The row's short label (paper_numbers.yaml ``short``), "Name (variant)" over two lines."""
    text = load_paper()[table]["rows"].get(key, {}).get("short", label)
    return text.replace(" (", "\n(", 1)


def latex_cell(rec: dict, layout: str) -> str:
    """Ours as the paper prints it (mean to two decimals, ± std to one), then below it what
    qualifies it: (Δ) in the delta layout, n=k when not the expected seeds (3; fair protocol 5),
    [L]/[N] for the picked cell; the last two share Δ's line when that does not widen the cell,
    else take a line of their own."""
    average = rec["column"] == AVG
    diverged = rec.get("diverged") or 0
    if rec["mean"] is None:
        expected = expected_seeds(rec["setup"])
        first = f"div. ({diverged:.0f}/{expected})" if diverged and not average else "–"
    else:
        spread = f"±{rec['std']:.1f}" if rec["std"] is not None else ""
        first = f"{rec['mean']:.2f}{spread}{_mark(rec)}"
    delta = f"({rec['diff']:+.2f})".replace("-", "−") if layout == "delta" and rec["diff"] is not None else ""
    extras = []
    if rec["mean"] is not None and not average and _seed_note(rec):
        extras.append(_seed_note(rec).replace("diverged", "div."))
    if rec["mean"] is not None and _pick(rec):
        extras.append(_pick(rec).strip())
    lines = [first, delta, " ".join(extras)]
    joined = " ".join(filter(None, lines[1:]))
    if latex.text_width(joined, "scriptsize") <= max(latex.text_width(line, "scriptsize") for line in lines[:2]):
        lines = [first, joined]
    return "\n".join(filter(None, lines))


def _is_best(rec: dict, column_recs: list[dict], key: str) -> bool:
    best = _best(column_recs, key)
    return best is not None and rec[key] is not None and math.isclose(rec[key], best)


def latex_note(table: str, setup: str, layout: str) -> str:
    reference = load_paper()[table]["rows"].get(REFERENCE_ROW.get(table), {}).get("label", "the reference row")
    parts = [f"Ours: mean ± std over seeds of the score ({score_words([setup])}; std to one decimal, as the paper "
             "prints it)"
             + ("; below it (ours − paper)" if layout == "delta" else "")
             + ("; Paper: the paper's number" if layout == "column" else "")
             + f"; n=k: k seeds where not {expected_seeds(setup)}. Bold: the best of each column.",
             f"{MARK}: differs from {reference} beyond seed noise (Welch's t-test over seeds, p < {ALPHA})."]
    if table == "table1":
        parts.append("TriAdaptLoRA: per task the better of Linear and Non-Linear, as in the paper; [L]/[N]: the "
                     "one it took (the other is tested against it).")
    if table != "table4":
        parts.append("Avg.: the mean of the 8 task means.")
    parts.append("–: no run.")
    if setup == PAPER_SETUP:
        parts.append("Setup: " + setup_heading(setup).split(" (", 1)[1].rstrip(")") + ".")
        if layout != "none":
            parts.append("Paper numbers: " + "; ".join(f"{', '.join(rows)}: {source}" for source, rows in _sources(table).items()) + ".")
    else:
        parts.append(f"Setup {setup_id(setup)}: {setup}.")
    return " ".join(parts)


def _sources(table: str) -> dict[str, list[str]]:
    """{source: row labels} of the rows with paper numbers."""
    out: dict[str, list[str]] = {}
    for row in load_paper()[table]["rows"].values():
        if row.get("scores"):
            out.setdefault(row["source"], []).append(row["label"])
    return out

