"""Experiment trackers: ``logger=none`` (default, no-op) or ``logger=wandb`` (optional extra).

run.py uses one tracker per run:

    tracker = make_tracker(cfg, run_dir)          # after the run folder exists, before training
    try:
        ... tracker.log({"train/loss": 0.3, "lr": 1e-3}, step=t)      # every log / eval line
        ... tracker.log_growth({"step": t, "k": 3, "total_rank": 96, "modules": [...]})
        tracker.log_summary(metrics)               # the metrics.json dict, once written
        exit_code = 0
    finally:
        tracker.finish(exit_code)                  # always; 1 when the run raised

wandb is imported only when ``logger=wandb``; WANDB_MODE in the environment wins over
``logger.mode``. wandb's folder is ``$WANDB_DIR`` when set, else ``logger.dir``, else
``<results.root>/../wandb``: never inside the run folder, which ``force=true`` deletes (offline runs
land in ``<that folder>/wandb/offline-run-*``; upload them later with ``wandb sync``). Each run is its own wandb run (finish() closes it), so the jobs of a sequential
multirun never merge into one.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STEP_KEY = "train/step"


class NullTracker:
    """logger=none: every call does nothing."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def log_growth(self, event: dict) -> None:
        pass

    def log_summary(self, metrics_json: dict) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbTracker:
    """logger=wandb: config, metrics, growth events, final rank pattern and the run summary."""

    def __init__(self, cfg, run_dir: str | Path):
        try:
            import wandb
        except ImportError as err:  # an optional extra
            raise RuntimeError("logger=wandb needs the wandb package: pip install -e '.[wandb]'") from err
        from omegaconf import OmegaConf

        self._wandb = wandb
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        options = cfg.logger
        config = OmegaConf.to_container(cfg, resolve=True)
        config.pop("hydra", None)
        task, method = cfg.task.name, cfg.method.name
        threshold = cfg.get("threshold", {}).get("name") if cfg.get("threshold") else None
        label = f"{method}-{threshold}" if threshold and threshold != "none" else method
        kwargs: dict[str, Any] = dict(
            project=options.get("project") or "adarank",
            entity=options.get("entity"),
            group=options.get("group") or task,
            job_type=label,
            name=f"{task}/{label}/seed{cfg.seed}/{self.run_dir.name}",
            tags=list(options.get("tags") or []),
            config=config,
            dir=str(wandb_dir(cfg)),
            reinit="finish_previous",
        )
        if not os.environ.get("WANDB_MODE") and options.get("mode"):
            kwargs["mode"] = options.get("mode")
        self.run = wandb.init(**kwargs)
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY)
        self._growth_rows: list[list] = []
        self._finished = False

    def log(self, metrics: dict, step: int) -> None:
        scalars = {k: v for k, v in _flatten(metrics).items() if _is_scalar(v)}
        if scalars:
            self.run.log({**scalars, STEP_KEY: int(step)})

    def log_growth(self, event: dict) -> None:
        step = int(event.get("step", 0))
        modules = event.get("modules") or []
        self._growth_rows.append([step, event.get("k"), event.get("total_rank"), len(modules), json.dumps(modules, default=str)])
        scalars = {f"growth/{k}": v for k, v in event.items() if _is_scalar(v) and k != "step"}
        scalars["growth/modules_changed"] = len(modules)
        self.run.log({**scalars, STEP_KEY: step})

    def log_summary(self, metrics_json: dict) -> None:
        for part in ("best", "final", "test_at_best_val", "test_at_last", "costs", "rank"):
            for key, value in _flatten(metrics_json.get(part) or {}).items():
                if _is_scalar(value):
                    self.run.summary[f"{part}/{key}"] = value
        for key in ("primary_metric", "status", "variant"):
            if metrics_json.get(key) is not None:
                self.run.summary[key] = metrics_json[key]
        wandb = self._wandb
        if self._growth_rows:
            table = wandb.Table(columns=["step", "k", "total_rank", "modules_changed", "modules"], data=self._growth_rows)
            self.run.log({"growth/events": table})
        pattern_file = self.run_dir / "rank_pattern.json"
        if pattern_file.is_file():
            pattern = json.loads(pattern_file.read_text())
            rows = [[name, _rank(value)] for name, value in pattern.items()]
            self.run.log({"rank/pattern": wandb.Table(columns=["module", "rank"], data=rows)})

    def finish(self, exit_code: int = 0) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as err:  # noqa: BLE001 - closing the tracker must never mask the run's own error
            log.warning("wandb finish failed: %s", err)


def wandb_dir(cfg) -> Path:
    """$WANDB_DIR, else ``logger.dir``, else ``<results.root>/../wandb`` (created)."""
    chosen = os.environ.get("WANDB_DIR") or cfg.logger.get("dir")
    if not chosen:
        root = cfg.get("results", {}).get("root") if cfg.get("results") else None
        chosen = Path(root or "results/raw").resolve().parent / "wandb"
    path = Path(chosen)
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_tracker(cfg, run_dir: str | Path) -> NullTracker | WandbTracker:
    name = cfg.get("logger", {}).get("name", "none") if cfg.get("logger") else "none"
    if name in (None, "none"):
        return NullTracker()
    if name == "wandb":
        return WandbTracker(cfg, run_dir)
    raise ValueError(f"unknown logger {name!r}: choose none or wandb")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _is_scalar(value) -> bool:
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    return isinstance(value, numbers.Number)  # bool is a Number too


def _rank(value) -> float:
    if isinstance(value, (list, tuple)):
        return float(sum(bool(v) for v in value))
    return float(value)
