"""Read a results tree (results/raw/**/metrics.json) into one table row per finished run.

Every run is classified by what the paper's tables and figures need:

* ``arm``: the method together with its growth threshold (``lora``, ``increlora``,
  ``triadapt_linear``, ...), the same names as the sweep arms in ``conf/sweep/arm/``;
* ``axes``: the values of the swept hyperparameters of Tables II-III and Figures 3-5
  (``AXES``), each with a flag saying whether it differs from the default composition;
* ``setup``: every other way the run's resolved config differs from what
  ``python train.py task=... method=... threshold=... model=...`` composes (a capped demo, a
  different sequence length...). Runs with the paper's setup have ``setup == "paper setup"``.

Runs are compared only on the keys that matter to their method (relevance.py): a LoRA run with
``task.init_warmup=5`` is a plain LoRA run. A run with ``train.schedule=scaled`` is compared on the
paper's values of the keys the scaling changed (its setup says ``train.schedule=scaled``). When no
run of a setup has a swept hyperparameter at its default (every growing run of a mini-sweep with
``task.init_warmup=5``), the setup's most common value counts as its default and the setup's label
says so (``settle_axes``).

Folders without a metrics.json (interrupted runs) are ignored; ``load_runs(..., dropped=list)``
collects the finished runs it left out (older duplicates) with the reason. Runs with ``status:
diverged`` are rows without a score (the tables print "diverged"). A metrics.json that cannot be
read as a run (not UTF-8, not JSON, not an object, a foreign schema, a wrong-typed field, a NaN
score, a negative seed, an empty config: ``results.metrics_problems``; a method or threshold that
conf/ does not define: ``run_problems``) is skipped with a warning and goes to ``dropped`` too.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from adarank.analysis.defaults import DefaultConfigs
from adarank.analysis.paper import load_paper
from adarank.analysis.relevance import matters, shared
from adarank.results import NON_SEMANTIC_KEYS, arm_name, metrics_problems

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PAPER_MODEL = "deberta_v3_base"
PAPER_SETUP = "paper setup"
#: stands for train.max_steps in a scaled run's setup label until settle_run_length fills it in
RUN_STEPS_SLOT = "<run steps>"
# swept hyperparameters: dotted config key -> column name
AXES = {
    "method.orth_reg": "orth_reg",
    "method.norm": "norm",
    "task.reference_rank": "reference_rank",
    "task.init_warmup": "init_warmup",
    "task.incre_interval": "incre_interval",
}
# keys that never make two runs different experiments: the run-identity rule of results.py, plus
# the seed (seeds of one experiment are aggregated)
IGNORED_TOP = ("hydra", "seed") + tuple(k for k in NON_SEMANTIC_KEYS if "." not in k)
IGNORED_KEYS = tuple(k for k in NON_SEMANTIC_KEYS if "." in k)


class NoResultsError(RuntimeError):
    """The results tree holds no finished run."""


BAD_FILE = "metrics.json unreadable or not a run of this harness (see the warnings)"


def find_metrics(root: Path) -> list[Path]:
    """Every metrics.json under ``root``, except in hidden folders (a forced rerun's staging
    folder, see run_folder.py)."""
    root = Path(root)
    return sorted(p for p in root.rglob(METRICS_FILE) if not any(part.startswith(".") for part in p.relative_to(root).parts))


def load_runs(root: str | Path, defaults: DefaultConfigs | None = None, dropped: list | None = None) -> pd.DataFrame:
    """One row per finished run under ``root``; raises NoResultsError when there is none.
    ``dropped`` (a list) receives ``(run_dir, reason)`` for every finished run not kept."""
    root = Path(root)
    paths = find_metrics(root) if root.is_dir() else []
    if not paths:
        raise NoResultsError(
            f"no finished run (no {METRICS_FILE}) under {root}: run a sweep first, e.g. "
            "`python train.py -m +sweep=table1` (see docs/reproducing.md)"
        )
    defaults = defaults or DefaultConfigs()
    rows = []
    for path in paths:
        try:
            metrics = json.loads(path.read_bytes().decode("utf-8"))
            problems = run_problems(metrics, defaults.conf_dir)
        except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            problems = [f"unreadable ({type(err).__name__}: {err})"]
        if problems:
            log.warning("skipping %s: %s", path, "; ".join(problems))
            if dropped is not None:
                dropped.append((str(path.parent), BAD_FILE))
            continue
        rows.append({**run_record(path.parent, metrics, defaults), "status": metrics["status"]})
    if not rows:
        raise NoResultsError(f"no readable run under {root} (every {METRICS_FILE} was skipped, see the warnings)")
    frame = settle_axes(settle_method_settings(settle_run_length(pd.DataFrame(rows))))
    return drop_stale_lr_table_runs(deduplicate(frame, dropped), dropped)


def run_problems(metrics, conf_dir: Path) -> list[str]:
    """``results.metrics_problems``, and a method or threshold conf/ has no file for."""
    problems = metrics_problems(metrics)
    if problems:
        return problems
    for group, name in (("method", metrics["method"]), ("threshold", metrics["threshold"])):
        known = {path.stem for path in (Path(conf_dir) / group).glob("*.yaml")}
        if name is not None and known and name not in known:
            problems.append(f"{group} {name!r} is none of {', '.join(sorted(known))}")
    return problems


def run_record(folder: Path, metrics: dict, defaults: DefaultConfigs) -> dict[str, Any]:
    config = metrics.get("config") or {}
    method = metrics.get("method") or _get(config, "method.name")
    threshold = metrics.get("threshold")
    task = metrics.get("task") or _get(config, "task.name")
    model = metrics.get("model")
    if isinstance(model, dict):
        model = model.get("name")
    model = model or _get(config, "model.name") or "unknown"
    primary = metrics.get("primary_metric") or _get(config, "task.primary_metric")
    fair = protocol_of(metrics) == "fair"
    # fair: "best"/"final" are validation evaluations; the reported (test) scores are dev's at the
    # best-validation checkpoint and at the last step (docs/fair-protocol.md)
    validation = metrics.get("best") or {}
    best = (metrics.get("test_at_best_val") if fair else metrics.get("best")) or {}
    final = (metrics.get("test_at_last") if fair else metrics.get("final")) or {}
    costs = metrics.get("costs") or {}
    rank = metrics.get("rank") or {}

    flat = flatten(config)
    reference = defaults.reference(config)
    ref_flat = flatten(reference) if reference is not None else {}
    if not fair:  # the paper protocol is what every run recorded before the key existed ran
        flat.pop("protocol.name", None)
    lr = lr_record(metrics, config)
    if lr["lr_source"] in ("scale", "table"):  # the protocol chose the LR: compare on the default
        flat[lr["lr_key"]] = lr["lr_default"]
    schedule = metrics.get("schedule") or {}
    if schedule.get("mode") == "scaled":  # compare on the paper's values the scaling started from
        for key, change in (schedule.get("values") or {}).items():
            if isinstance(change, dict) and "paper" in change:
                # a key the scaling derives from others (ALoRA's k1_steps from k1_epochs, null by
                # default) is no setting of the run: compared as the default
                flat[key] = None if key in ref_flat and ref_flat[key] is None else change["paper"]
    flat = {k: v for k, v in flat.items() if matters(k, method)}
    diffs = differences(flat, ref_flat) if reference is not None else None
    record: dict[str, Any] = {
        "run_dir": str(folder),
        "task": task,
        "method": method,
        "threshold": threshold,
        "arm": arm_name(method, threshold),
        "seed": metrics.get("seed", _get(config, "seed")),
        "model": model,
        "variant": metrics.get("variant"),
        "primary_metric": primary,
        "score": _number(best.get(primary)),
        "final_score": _number(final.get(primary)),
        "best_step": best.get("step"),
        "protocol": "fair" if fair else "paper",
        "val_score": _number(validation.get(primary)) if fair else None,
        **lr,
        "best": {k: v for k, v in best.items() if k != "step"},
        "final": {k: v for k, v in final.items() if k != "step"},
        "total_rank": _number(rank.get("total_rank")),
        # DyLoRA: the primary metric at every rank 1..r_max of one trained adapter
        "by_rank": {k: _number(v.get(primary)) for k, v in (metrics.get("by_rank") or {}).items() if isinstance(v, dict)},
        "adapted_modules": _number(rank.get("adapted_modules")),
        "mtime": (folder / METRICS_FILE).stat().st_mtime,
        "defaults_known": diffs is not None,
    }
    for key in (
        "wall_seconds",
        "train_seconds",
        "optimizer_steps",
        "median_step_seconds",
        "allocation_seconds",
        "peak_memory_mb",
        "trainable_params_start",
        "trainable_params_end",
    ):
        record[key] = _number(costs.get(key))
    record["tokens_processed"] = _number(costs.get("tokens_processed"))
    for when, counts in (costs.get("trainable") or {}).items():  # budget.py: start / peak / end
        for part, value in (counts or {}).items():
            record[f"trainable_{when}_{part}"] = _number(value)
    for key, column in AXES.items():
        record[f"{column}_relevant"] = matters(key, method)
        if not record[f"{column}_relevant"]:  # e.g. LoRA's init_warmup: not part of its experiment
            record[column], record[f"{column}_changed"] = None, False
            continue
        fallback = paper_axis_default(key, task, method)
        value = flat.get(key, ref_flat.get(key, fallback))
        record[column] = value
        if diffs is not None:
            record[f"{column}_changed"] = key in diffs
        else:  # no composable default: compare with the paper's setting
            record[f"{column}_changed"] = key in flat and fallback is not None and not _same(fallback, value)
    other = {} if diffs is None else {k: v for k, v in diffs.items() if k not in AXES}
    label_keys = {k: v for k, v in other.items() if shared(k) and k != "protocol.lr_scale"}
    if fair:  # the protocol, and how it set the LR, are part of the setup (never mixed in a cell)
        label_keys.update(protocol_label(lr))
    record["run_steps"] = None
    if str(other.get("train.schedule")) == "scaled" and "train.max_steps" in label_keys:
        # a scaled sweep may give each task its own length: settle_run_length fills this in
        record["run_steps"] = label_keys["train.max_steps"]
        if label_keys.get("train.eval_interval") == label_keys["train.max_steps"]:
            label_keys["train.eval_interval"] = "train.max_steps"  # evaluated at the end only
        label_keys["train.max_steps"] = RUN_STEPS_SLOT
    record["setup"] = setup_label(model, label_keys)
    # method-specific differences (AdaLoRA's t_init, the LR warm-up of the others): they do not
    # separate a method's runs from another method's (settle_method_settings)
    specific = {k: v for k, v in other.items() if not shared(k)}
    record["method_settings"] = ", ".join(f"{k}={v}" for k, v in sorted(specific.items()))
    semantic = {k: v for k, v in flat.items() if not _ignored(k)}
    semantic["seed"] = record["seed"]
    semantic["lr_used"] = lr["lr"]
    record["identity"] = json.dumps(semantic, sort_keys=True, default=str)
    return record


def protocol_of(metrics: dict) -> str:
    """``paper`` or ``fair`` (runs recorded before the protocols existed: ``paper``)."""
    recorded = metrics.get("protocol") or {}
    configured = (metrics.get("config") or {}).get("protocol") or {}
    return str(recorded.get("name") or configured.get("name") or "paper")


def lr_record(metrics: dict, config: dict) -> dict[str, Any]:
    """The peak LR a run trained at and where it came from: ``scale`` (the fair protocol's
    ``lr_scale`` x the default: an LR search), ``table`` (an LR table), ``config`` (as configured)."""
    chosen = (metrics.get("protocol") or {}).get("lr") or {}
    key = chosen.get("key") or ("method.lr" if _get(config, "method.lr") is not None else "task.lr")
    return {
        "lr": _number(_get(config, key)),
        "lr_key": key,
        "lr_source": chosen.get("source", "config"),
        "lr_scale": _number(chosen.get("scale", 1.0)),
        "lr_default": _number(chosen.get("default", _get(config, key))),
    }


#: the setup-label part of a fair run's LR (select_lr groups an LR search's runs without it)
LR_LABEL = "lr"
_LR_PART = re.compile(rf"(, )?\b{LR_LABEL}=[^,;]*")


def protocol_label(lr: dict) -> dict[str, str]:
    """The setup-label parts of a fair run: the protocol, and the LR when the protocol set it."""
    parts = {"protocol": "fair"}
    if lr["lr_source"] == "table":
        parts[LR_LABEL] = "selected on validation"
    elif lr["lr_source"] == "scale" and lr["lr_scale"] != 1:
        parts[LR_LABEL] = f"{lr['lr_scale']:g}x default"
    return parts


def is_fair(setup: str) -> bool:
    return "protocol=fair" in setup


def periodic_split(setup: str) -> str:
    """The split a setup's periodic evaluations read (what its learning curves plot): the
    validation split held out of train under the fair protocol, dev under the paper's."""
    return "validation" if is_fair(setup) else "dev"


def score_words(setups) -> str:
    """What the score of these setups is, for a title or an axis: one phrase for one protocol,
    a pointer to the setups' headings for a mix."""
    fair = {is_fair(s) for s in setups} or {False}
    if fair == {False}:
        return "best periodic dev evaluation"
    if fair == {True}:
        return "dev at the checkpoint chosen on validation"
    return "dev; the protocol of each setup under its heading"


def protocol_note(setup: str) -> str:
    """What a table's numbers are under the setup's protocol (every table heading says it)."""
    if is_fair(setup):
        return "fair protocol: dev (test) score at the checkpoint chosen on a validation split held out of train"
    return "paper protocol: the best of the periodic dev evaluations"


def paper_axis_default(key: str, task: str | None, method: str | None) -> Any:
    """The paper's setting of a swept hyperparameter (paper_numbers.yaml, default_axes)."""
    if key.startswith("method.") and method != "triadapt":
        return None
    value = load_paper()["default_axes"].get(key)
    return value.get(task) if isinstance(value, dict) else value


def setup_label(model: str, other: dict[str, Any]) -> str:
    """``paper setup`` for DeBERTaV3-base with nothing else changed, else a readable description."""
    if model == PAPER_MODEL and not other:
        return PAPER_SETUP
    parts = [f"model={model}"] + [f"{k}={v}" for k, v in sorted(other.items())]
    return ", ".join(parts)


def settle_method_settings(frame: pd.DataFrame) -> pd.DataFrame:
    """Per setup: when every run of a method has the same method-specific settings, the setup's
    label names them (``...; adalora: task.adalora.init_warmup=2``) and the runs stay in the setup;
    a method with several variants in one setup has each variant in a setup of its own."""
    frame = frame.copy()
    for setup in list(dict.fromkeys(frame["setup"])):
        in_setup = frame["setup"] == setup
        notes: dict[str, list[str]] = {}
        for method in sorted(set(frame.loc[in_setup, "method"])):
            mine = in_setup & (frame["method"] == method)
            variants = set(frame.loc[mine, "method_settings"])
            if len(variants) > 1:
                for variant in variants:
                    if variant:
                        chosen = mine & (frame["method_settings"] == variant)
                        frame.loc[chosen, "setup"] = _join(setup, f"{method}: {variant}")
            elif variants != {""}:
                notes.setdefault(variants.pop(), []).append(method)
        if notes:
            extra = "; ".join(f"{'/'.join(methods)}: {settings}" for settings, methods in notes.items())
            frame.loc[frame["setup"] == setup, "setup"] = _join(setup, extra)
    return frame


def _join(setup: str, extra: str) -> str:
    return (f"model={PAPER_MODEL}" if setup == PAPER_SETUP else setup) + "; " + extra


def without_lr(setup: str) -> str:
    """A setup label without its fair-protocol LR part: what the runs of one LR search (and the
    final runs at the selected LRs) share."""
    return _LR_PART.sub("", setup)


def settle_run_length(frame: pd.DataFrame) -> pd.DataFrame:
    """Scaled runs of one setup whose length differs only between tasks (the mini sweep: MRPC 96
    steps, STS-B 48) stay one setup, labelled ``train.max_steps=per task (mrpc 96, stsb 48)``; a
    task with several lengths in one setup keeps each length as a setup of its own. The lengths
    are read over the setups that differ only in the LR part (an LR search's multiples), so a
    search with some tasks still missing at one LR gets the same label at every LR."""
    frame = frame.copy()
    if "run_steps" not in frame:
        return frame
    slotted = frame["setup"].str.contains(RUN_STEPS_SLOT, regex=False)
    families = frame["setup"].map(without_lr)
    for family in dict.fromkeys(families[slotted]):
        in_family = slotted & (families == family)
        steps = frame.loc[in_family].groupby("task")["run_steps"].agg(lambda v: sorted(set(map(_text, v))))
        if all(len(values) == 1 for values in steps):
            values = {task: values[0] for task, values in steps.items()}
            text = (next(iter(values.values())) if len(set(values.values())) == 1
                    else "per task (" + ", ".join(f"{t} {n}" for t, n in values.items()) + ")")
            frame.loc[in_family, "setup"] = frame.loc[in_family, "setup"].str.replace(RUN_STEPS_SLOT, text, regex=False)
        else:
            frame.loc[in_family, "setup"] = [setup.replace(RUN_STEPS_SLOT, _text(n)) for setup, n
                                             in zip(frame.loc[in_family, "setup"], frame.loc[in_family, "run_steps"])]
    return frame


def settle_axes(frame: pd.DataFrame) -> pd.DataFrame:
    """Per setup and swept hyperparameter: when no run that uses it sits at the default, the most
    common value among them becomes the setup's default (its runs count as unchanged) and the
    setup's label gains ``axis=value`` (or ``axis=as run`` when the value differs per task)."""
    frame = frame.copy()
    for setup in list(dict.fromkeys(frame["setup"])):
        in_setup = frame["setup"] == setup
        extra = []
        for column in AXES.values():
            uses = in_setup & frame[f"{column}_relevant"].astype(bool)
            if not uses.any() or (~frame.loc[uses, f"{column}_changed"].astype(bool)).any():
                continue
            values = []
            for task in dict.fromkeys(frame.loc[uses, "task"]):
                here = uses & (frame["task"] == task)
                counts = frame.loc[here, column].map(_text).value_counts()
                common = counts.index[0]
                frame.loc[here & (frame[column].map(_text) == common), f"{column}_changed"] = False
                values.append(common)
            extra.append(f"{column}={values[0]}" if len(set(values)) == 1 else f"{column}=per-task values")
        if extra:
            frame.loc[in_setup, "setup"] = _join(setup, "growth schedule " + ", ".join(extra))
    return frame


def drop_stale_lr_table_runs(frame: pd.DataFrame, dropped: list | None = None) -> pd.DataFrame:
    """Runs at a selected LR (``protocol.lr_table``) whose cell (setup, task, arm) holds runs at
    another LR were trained from an older selected_lr.yaml (e.g. the grid was widened and the
    selection changed): a cell keeps the runs at its newest run's LR, the others are dropped with
    a warning, so a table never averages two LRs under "lr=selected on validation"."""
    if "lr_source" not in frame or not (frame["lr_source"] == "table").any():
        return frame
    stale = []
    for _, cell in frame[frame["lr_source"] == "table"].groupby(["setup", "task", "arm"]):
        newest = cell.sort_values("mtime")["lr"].iloc[-1]
        stale += list(cell.index[cell["lr"] != newest])
    for index in stale:
        run = frame.loc[index]
        log.warning("leaving out %s: trained at LR %g from an older LR table; its cell's newest run is at "
                    "another LR (delete it, or rerun the stage with the table you mean)", run["run_dir"], run["lr"])
        if dropped is not None:
            dropped.append((run["run_dir"],
                            "trained at the LR of an older LR table (the cell's newest run is at another LR)"))
    return frame.drop(index=stale)


def deduplicate(frame: pd.DataFrame, dropped: list | None = None) -> pd.DataFrame:
    """Keep the newest of runs with the same resolved config (e.g. Table II's orth_reg=true runs,
    which are Table I's nonlinear runs under another override spelling)."""
    frame = frame.sort_values("mtime")
    # same resolved config, or the same cell and seed (e.g. threshold=none and threshold=linear of
    # TriAdaptLoRA, which run the same thing)
    kept = frame.drop_duplicates(subset=["identity"], keep="last")
    cell = ["setup", "task", "arm", "seed", *AXES.values()]
    keys = [json.dumps([str(v) for v in row], default=str) for row in kept[cell].itertuples(index=False)]
    kept = kept.assign(_cell=keys)
    kept = kept.drop_duplicates(subset=["_cell"], keep="last").drop(columns="_cell")
    if dropped is not None:
        for run_dir in sorted(set(frame["run_dir"]) - set(kept["run_dir"])):
            dropped.append((run_dir, "an older run of the same config and seed (the newest is kept)"))
    if len(kept) < len(frame):
        log.info("%d duplicate run(s) of the same config and seed ignored (the newest kept)", len(frame) - len(kept))
    return kept.sort_values(["task", "arm", "seed"], kind="stable").reset_index(drop=True)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": leaf}; lists stay leaves."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict) and value:
                out.update(flatten(value, name))
            else:
                out[name] = value
    return out


def differences(run: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Keys whose value in the run differs from the reference composition (semantic keys only).
    Keys the run lacks are not differences (older runs predate newer config keys)."""
    out = {}
    for key, value in run.items():
        if _ignored(key):
            continue
        if key not in reference or not _same(reference[key], value):
            out[key] = value
    return out


def _ignored(key: str) -> bool:
    return key.split(".")[0] in IGNORED_TOP or key in IGNORED_KEYS


def _text(value: Any) -> str:
    """A value as a setup label shows it (5.0 -> "5": pandas turns int columns with gaps into floats)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


def _get(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
