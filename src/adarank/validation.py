"""Value and key checks of a composed config, before any folder, data or model (called by
``checks.check_static``).

* values: counts are integers (never booleans) >= 1, rates positive numbers, the seed a
  non-negative integer, the device one that exists;
* keys: every key under the top level, ``train``, ``data``, ``results`` and ``method`` must be
  one the config files define (conf/config.yaml; conf/method/<method>.yaml), so that a typo added
  with ``+`` (``+train.max_step=10``, the fix Hydra itself suggests for a misspelt key) is refused
  instead of silently ignored. The allowed keys are read from the yaml files, so a key added
  there is accepted without touching this module.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
CHECKED_SECTIONS = ("train", "data", "results")
DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")

# key -> minimum (an integer count); None values are allowed only where listed in NULLABLE
COUNTS = {
    "task.batch_size": 1,
    "task.max_seq_length": 1,
    "task.paper_train_examples": 1,  # SQuAD only; null = the train file's own size
    "train.eval_batch_size": 1,
    "train.log_interval": 1,
    "train.num_workers": 0,
    "seed": 0,
}
POSITIVE = ("task.lr", "method.lr")  # numbers > 0 (method.lr: only full fine-tuning has one)
NON_NEGATIVE = ("task.weight_decay", "train.max_grad_norm")


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
        if not _is_number(value) or value < 0 or (key in POSITIVE and value == 0):
            bound = "> 0" if key in POSITIVE else ">= 0"
            raise ValueProblem(f"{key} must be a number {bound}, got {value!r}")
    device = str(OmegaConf.select(cfg, "train.device"))
    if not DEVICE.match(device):
        raise ValueProblem(f"unknown train.device {device!r}; choose auto, cpu, cuda or cuda:N")


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
    method_keys = _method_keys(str(cfg.method.name))
    if method_keys is not None:
        _compare("method.", set(cfg.method.keys()), method_keys)


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


def _method_keys(name: str) -> set | None:
    """The keys of the method config whose ``name`` is ``name`` (None if no file defines it)."""
    for path in sorted((CONF_DIR / "method").glob("*.yaml")):
        content = _yaml(path)
        if content is not None and content.get("name") == name:
            return set(content) - {"defaults"}
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
