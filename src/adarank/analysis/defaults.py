"""The default configuration a run is compared against: what ``python train.py task=T method=M
threshold=H model=X`` composes from the repository's conf/ folder (no other override).

The group files of this project are plain (no defaults list, no @package directive), so the
default is assembled directly from them in the order of config.yaml's defaults list (groups, then
``_self_``), which takes milliseconds; a group file that is not plain goes through Hydra's compose
API instead (a few hundred milliseconds each). Results are cached per process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

REPO_CONF = Path(__file__).resolve().parents[3] / "conf"
GROUPS = ("task", "method", "threshold", "model", "protocol")
#: groups a run recorded before they existed lacks: the option it ran with
IMPLICIT = {"protocol": "paper"}
_CACHE: dict[tuple, dict | None] = {}


class DefaultConfigs:
    """``reference(run_config)`` returns the default config (a dict) for the run's groups, or None
    when it cannot be built (no conf/ folder, a group option since renamed)."""

    def __init__(self, conf_dir: str | Path | None = None):
        self.conf_dir = Path(conf_dir) if conf_dir else REPO_CONF

    def reference(self, run_config: dict[str, Any]) -> dict | None:
        names = tuple(_group_name(run_config, group) for group in GROUPS)
        if None in names:
            return None
        key = (str(self.conf_dir), *names)
        if key not in _CACHE:
            _CACHE[key] = self._build(dict(zip(GROUPS, names)))
        return _CACHE[key]

    def _build(self, choices: dict[str, str]) -> dict | None:
        choices = {**IMPLICIT, **choices}
        primary = self.conf_dir / "config.yaml"
        files = {group: self.conf_dir / group / f"{name}.yaml" for group, name in choices.items()}
        if not primary.is_file() or not all(path.is_file() for path in files.values()):
            log.warning("no default config for %s under %s", choices, self.conf_dir)
            return None
        if all(_plain(path) for path in files.values()):
            base = OmegaConf.load(primary)
            for key in ("defaults", "hydra"):
                base.pop(key, None)
            groups = OmegaConf.create({group: OmegaConf.load(path) for group, path in files.items()})
            try:
                return OmegaConf.to_container(OmegaConf.merge(groups, base), resolve=True)
            except Exception as err:  # noqa: BLE001 - fall back to Hydra's own composition
                log.debug("plain merge failed (%s); composing with Hydra", err)
        return self._compose(choices)

    def _compose(self, choices: dict[str, str]) -> dict | None:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        overrides = [f"{group}={name}" for group, name in choices.items()]
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(self.conf_dir), version_base="1.3"):
                cfg = compose(config_name="config", overrides=overrides)
            return OmegaConf.to_container(cfg, resolve=True)
        except Exception as err:  # noqa: BLE001 - any composition failure means "unknown default"
            log.warning("cannot compose the default config for %s: %s", " ".join(overrides), err)
            return None


def _group_name(run_config: dict, group: str) -> str | None:
    node = run_config.get(group)
    return node.get("name") if isinstance(node, dict) else IMPLICIT.get(group)


def _plain(path: Path) -> bool:
    text = path.read_text()
    return "@package" not in text and "\ndefaults:" not in f"\n{text}"
