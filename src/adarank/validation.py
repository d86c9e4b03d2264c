"""Value and key checks of a composed config, before any folder, data or model (called by
``checks.check_static``).

* values: counts are integers (never booleans) >= 1, rates positive numbers, the seed a
  non-negative integer, the device a name torch knows (whether it exists on this machine is
  ``checks.check_device``), the checkpoint interval ``auto`` or an integer >= 0, the sizes of a
  random model positive integers;
* keys: every key under the top level, ``train``, ``data``, ``results`` and each config group
  (``task``, ``method``, ``threshold``, ``model``, ``logger``, nested sections included) must be one
  the config files define (conf/config.yaml; conf/<group>/<choice>.yaml, found by its ``name``), so
  that a typo added with ``+`` (``+train.max_step=10``, ``+task.init_warmpu=5``: the fix Hydra
  itself suggests for a misspelt key) is refused instead of silently ignored. The allowed keys are
  read from the yaml files, so a key added there is accepted without touching this module.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
CHECKED_SECTIONS = ("train", "data", "results")
#: config groups whose keys are compared with the chosen option's file conf/<group>/<choice>.yaml
CHECKED_GROUPS = ("task", "method", "threshold", "model", "logger")  # protocol: protocol.check
DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")

# key -> minimum (an integer count); None values are allowed only where listed in NULLABLE
COUNTS = {
    "task.batch_size": 1,
    "task.max_seq_length": 1,
    "task.paper_train_examples": 1,  # SQuAD only; null = the train file's own size
    "train.eval_batch_size": 1,
    "train.log_interval": 1,
    "seed": 0,
}
POSITIVE = ("task.lr", "method.lr")  # numbers > 0 (method.lr: only full fine-tuning has one)
NON_NEGATIVE = ("task.weight_decay", "train.max_grad_norm")
#: the sizes of a model built from a config (model.source=random), when present
MODEL_SIZES = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size", "max_position_embeddings")


class ValueProblem(ValueError):
    """A value or key the config cannot run with (``checks`` turns it into a ConfigError)."""


def check_values(cfg) -> None:
    for key, minimum in COUNTS.items():
        value = OmegaConf.select(cfg, key)
        if value is None and key not in ("task.batch_size", "task.max_seq_length", "seed"):
            continue
        if not _is_int(value) or value < minimum:
            raise ValueProblem(f"{key} must be an integer >= {minimum}, got {value!r}")
    for key in POSITIVE + NON_NEGATIVE:
        value = OmegaConf.select(cfg, key)
        if value is None and key in NON_NEGATIVE + ("method.lr",):
            continue
        # inf is refused where it could only end in NaN weights; train.max_grad_norm=inf is
        # torch's "no clipping" and stays allowed
        finite = key != "train.max_grad_norm"
        number = is_finite_number(value) if finite else _is_number(value)
        if not number or value < 0 or (key in POSITIVE and value == 0):
            bound = "> 0" if key in POSITIVE else ">= 0"
            raise ValueProblem(f"{key} must be a {'finite ' if finite else ''}number {bound}, got {value!r}")
    workers = OmegaConf.select(cfg, "train.num_workers")
    if workers != "auto" and (not _is_int(workers) or workers < 0):
        raise ValueProblem(f"train.num_workers must be auto or an integer >= 0, got {workers!r}")
    for key in ("train.tf32", "train.deterministic"):
        if not isinstance(OmegaConf.select(cfg, key), bool):
            raise ValueProblem(f"{key} must be true or false, got {OmegaConf.select(cfg, key)!r}")
    device = str(OmegaConf.select(cfg, "train.device"))
    if not DEVICE.match(device):
        raise ValueProblem(f"unknown train.device {device!r}; choose auto, cpu, cuda or cuda:N")
    interval = OmegaConf.select(cfg, "train.checkpoint_interval")
    if interval != "auto" and (not _is_int(interval) or interval < 0):
        raise ValueProblem(
            f"train.checkpoint_interval must be auto or an integer >= 0 (0 = never), got {interval!r}"
        )
    for key in MODEL_SIZES:
        value = OmegaConf.select(cfg, f"model.{key}")
        if value is not None and (not _is_int(value) or value < 1):
            raise ValueProblem(f"model.{key} must be an integer >= 1, got {value!r}")


def check_known_keys(cfg) -> None:
    """Refuse keys that no config file defines (see the module docstring)."""
    base = _yaml(CONF_DIR / "config.yaml")
    if base is None:
        return  # an installed package without conf/: nothing to compare with
    groups = {next(iter(item)) if isinstance(item, dict) else item for item in base.get("defaults", [])}
    groups = {str(g).split("/")[-1].split("@")[0] for g in groups} - {"_self_"}
    top = set(base) - {"defaults"} | groups | {"hydra"}
    _compare("", set(cfg.keys()), top)
    for section in CHECKED_SECTIONS:
        if section in cfg and isinstance(base.get(section), dict):
            _compare(f"{section}.", set(cfg[section].keys()), set(base[section]))
    for group in CHECKED_GROUPS:
        node = cfg.get(group)
        known = _group_file(group, str(node.get("name"))) if node is not None else None
        if known is not None:
            _compare_nested(f"{group}.", OmegaConf.to_container(node, resolve=False), known)


def _compare_nested(prefix: str, present: dict, known: dict) -> None:
    """Compare keys level by level: a section the file defines (``task.adalora``) is checked too."""
    _compare(prefix, set(present), set(known))
    for key, value in present.items():
        if isinstance(value, dict) and isinstance(known.get(key), dict):
            _compare_nested(f"{prefix}{key}.", value, known[key])


def _compare(prefix: str, present: set, known: set) -> None:
    unknown = sorted(str(k) for k in present - known)
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    raise ValueProblem(
        f"unknown config key {prefix}{key}{hint}; known keys here: {', '.join(sorted(known))}"
    )


def _group_file(group: str, name: str) -> dict | None:
    """The content of the ``group`` option whose ``name`` is ``name`` (None if no file defines
    it: the name check reports that)."""
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        content = _yaml(path)
        if content is not None and content.get("name") == name:
            return {k: v for k, v in content.items() if k != "defaults"}
    return None


@lru_cache(maxsize=None)
def _yaml_cached(path: str, mtime: float):
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _yaml(path: Path) -> dict | None:
    if not path.is_file():
        return None
    content = _yaml_cached(str(path), path.stat().st_mtime)
    return content if isinstance(content, dict) else None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def is_finite_number(value) -> bool:
    """A real number (int or float, not a bool), neither NaN nor infinite: what every numeric
    option of the protocol and of the methods' own checks must be."""
    return _is_number(value) and abs(value) != float("inf")
