"""The evaluation protocol of a run (``protocol=paper|fair``, conf/protocol/, docs/fair-protocol.md).

* ``paper``: the paper's protocol, what the harness has always done: Table V/VI's learning rate,
  periodic evaluations on the dev set, the best of them reported.
* ``fair``: a validation split carved from the training set (data/split.py) takes every
  periodic evaluation and picks the checkpoint; the dev set ("test") is evaluated only at that
  checkpoint and at the last step (``test_at_best_val``, ``test_at_last``); the learning rate is
  ``protocol.lr_scale`` x the default one (the LR search sweeps it) or read from an LR table
  (``protocol.lr_table``, written by ``python -m adarank.analysis.select_lr``).

This module checks the protocol's keys up front, writes the LR the run uses into the config, and
checks a whole sweep's LR table before its first job (:class:`LrTableCheck`).
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf, open_dict

from adarank import validation
from adarank.checks import ConfigError
from adarank.results import arm_name

PROTOCOLS = ("paper", "fair")
#: protocol.lr_table's value in a sweep that must be given a table (conf/sweep/fair_table1.yaml)
REQUIRED = "required"
MISSING_TABLE = ("this sweep runs every arm at its selected learning rate: add protocol.lr_table=path/to/selected_lr.yaml "
                 "(written by `python -m adarank.analysis.select_lr RESULTS` after +sweep=lr_search)")


def name(cfg) -> str:
    protocol = cfg.get("protocol")
    return "paper" if protocol is None else str(protocol.get("name"))


def is_fair(cfg) -> bool:
    return name(cfg) == "fair"


# -- checks ----------------------------------------------------------------------------------------
def check(cfg, threshold: str | None) -> None:
    """Refuse an unknown protocol, keys its file does not define, values out of range, and (with
    an LR table) a table without this run's (task, arm) entry; all before any data is read."""
    chosen = name(cfg)
    if chosen not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {chosen!r}; choose one of: {', '.join(PROTOCOLS)}")
    known = validation._yaml(validation.CONF_DIR / "protocol" / f"{chosen}.yaml")
    if known is not None:
        present = set(cfg.protocol.keys())
        extra = sorted(present - set(known))
        if extra and chosen == "paper" and validation._yaml(validation.CONF_DIR / "protocol" / "fair.yaml"):
            raise ConfigError(f"protocol.{extra[0]} belongs to the fair protocol; add protocol=fair "
                              "(the paper protocol has nothing to configure)")
        try:
            validation._compare("protocol.", present, set(known))
        except validation.ValueProblem as err:
            raise ConfigError(str(err)) from None
    if chosen != "fair":
        return
    fair = cfg.protocol
    if fair.lr_table == REQUIRED:
        raise ConfigError(MISSING_TABLE)
    _integer("protocol.split_seed", fair.split_seed, minimum=0)
    size = fair.val_size
    if not validation.is_finite_number(size) or size <= 0 or (size >= 1 and not float(size).is_integer()):
        raise ConfigError(f"protocol.val_size must be a fraction in (0, 1) or a whole count >= 1, got {size!r}")
    if fair.val_max is not None:
        _integer("protocol.val_max", fair.val_max, minimum=1)
    if not validation.is_finite_number(fair.lr_scale) or fair.lr_scale <= 0:
        raise ConfigError(f"protocol.lr_scale must be a number > 0, got {fair.lr_scale!r}")
    if fair.lr_table is not None:
        if fair.lr_scale != 1:
            raise ConfigError("protocol.lr_table gives the learning rate itself: leave protocol.lr_scale at 1")
        table = read_lr_table(fair.lr_table)
        missing = missing_pairs(table, [(cfg.task.name, arm_name(cfg.method.name, threshold))])
        if missing:
            raise ConfigError(missing_message(fair.lr_table, missing))


def _integer(key: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")


# -- the learning rate ----------------------------------------------------------------------------
def lr_key(cfg) -> str:
    """The config key holding the run's peak LR: ``method.lr`` for a method with its own (full
    fine-tuning), ``task.lr`` otherwise (Method.learning_rate)."""
    return "method.lr" if cfg.method.get("lr") is not None else "task.lr"


def apply_lr(cfg, threshold: str | None) -> dict | None:
    """Under the fair protocol, write the run's LR into the config (before its identity hash is
    taken, so the folder's hash says which LR ran) and return how it was chosen, for metrics.json:
    ``{"key", "default", "scale", "value", "source": "scale" | "table"}``. None under ``paper``."""
    if not is_fair(cfg):
        return None
    key = lr_key(cfg)
    default = float(OmegaConf.select(cfg, key))
    if cfg.protocol.lr_table is not None:
        table = read_lr_table(cfg.protocol.lr_table)
        value, source = table[(cfg.task.name, arm_name(cfg.method.name, threshold))], "table"
    else:
        value, source = default * float(cfg.protocol.lr_scale), "scale"
    section, leaf = key.split(".")
    with open_dict(cfg):
        cfg[section][leaf] = value
    return {"key": key, "default": default, "scale": float(cfg.protocol.lr_scale), "value": value, "source": source}


# -- LR tables (selected_lr.yaml) -------------------------------------------------------------------
def read_lr_table(path) -> dict[tuple[str, str], float]:
    """``{(task, arm): lr}`` from a selected_lr.yaml (its ``lr`` section: task -> arm -> LR)."""
    if not os.path.isfile(str(path)):
        raise ConfigError(f"protocol.lr_table={path} does not exist; write it with "
                          "`python -m adarank.analysis.select_lr RESULTS` after an LR search (+sweep=lr_search)")
    content = OmegaConf.to_container(OmegaConf.load(str(path)))
    section = content.get("lr") if isinstance(content, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(f"protocol.lr_table={path} has no `lr:` section (task -> arm -> learning rate)")
    table = {}
    for task, arms in section.items():
        for arm, value in (arms or {}).items():
            if not validation.is_finite_number(value) or value <= 0:
                raise ConfigError(f"protocol.lr_table={path}: lr.{task}.{arm} is {value!r}, not a learning rate > 0")
            table[(str(task), str(arm))] = float(value)
    return table


def missing_pairs(table: dict, pairs) -> list[tuple[str, str]]:
    return sorted({pair for pair in pairs if pair not in table})


def missing_message(path, missing: list[tuple[str, str]]) -> str:
    names = ", ".join(f"{task}/{arm}" for task, arm in missing)
    return (f"protocol.lr_table={path} has no learning rate for {len(missing)} (task, arm) pair(s): {names}; "
            "run the LR search for them (+sweep=lr_search) and select again (python -m adarank.analysis.select_lr)")


# -- the sweep-level check ---------------------------------------------------------------------------
def sweep_pairs(config) -> list[tuple[str, str]]:
    """Every (task, arm) a multirun will launch, composed from its grid and command line (the
    seed and the LR do not change the pair, so each pair is composed once)."""
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.params or {}).items()]
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(params + list(config.hydra.overrides.task))
    (jobs,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    distinct = {tuple(o for o in job if not o.split("=", 1)[0].lstrip("+~") in ("seed",)) for job in jobs}
    pairs = set()
    for job in sorted(distinct):
        cfg = compose(config_name="config", overrides=list(job))
        threshold = cfg.threshold.name
        pairs.add((cfg.task.name, arm_name(cfg.method.name, None if threshold == "none" else threshold)))
    return sorted(pairs)


def check_sweep(config) -> None:
    """Raise ConfigError naming every (task, arm) of the sweep that its LR table lacks."""
    if not is_fair(config):
        return
    if config.protocol.lr_table == REQUIRED:
        raise ConfigError(MISSING_TABLE)
    if config.protocol.lr_table is None:
        return
    table = read_lr_table(config.protocol.lr_table)
    missing = missing_pairs(table, sweep_pairs(config))
    if missing:
        raise ConfigError(missing_message(config.protocol.lr_table, missing))


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object


class LrTableCheck(Callback):
    """Hydra callback (conf/config.yaml): a multirun with ``protocol.lr_table`` stops before its
    first job, in one line, when the table lacks a (task, arm) pair of the sweep."""

    def on_multirun_start(self, config, **kwargs) -> None:
        try:
            check_sweep(config)
        except ConfigError as err:
            raise SystemExit(f"configuration error: {err}") from None
