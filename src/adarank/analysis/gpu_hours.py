"""Device-hours of a sweep before it is launched (``python -m adarank.analysis.sweeps NAME --estimate``).

For every job of the sweep: its optimizer steps T = ceil(training examples / batch) x epochs
(capped by ``train.max_steps``; the training-set sizes are the published splits', or
``train.max_train_samples``), its evaluations (every ``eval_interval`` steps, plus the final one),
and a step time t(task, arm) from a calibration:

    hours = sum over jobs of [T x t_step + evaluations x ceil(dev / eval batch) x t_step / 3] / 3600

(an evaluation batch is a forward pass only, about a third of a training step at the same size).

Calibration (``--calibrate``): for each (task, method arm, model) of the sweep, one short run of
the job itself (its config, data and model) on the present device: ``--calibration-steps``
optimizer steps with its schedule rescaled to them (``train.schedule=scaled``, so growth,
IncreLoRA's scoring phase and AdaLoRA's masking take the same share of the steps as in the full
run), at the task's batch and on its real batches (hence its typical padded length). The scaled
schedule keeps every growth step of the full run, so a growing method on a long task needs more
steps (IncreLoRA on MRPC 35, on MNLI about 860): the run then takes as many as the schedule asks
for (twice as many when it does not say), up to ``MAX_CALIBRATION_STEPS``. t_step is the run's training seconds / steps (first steps
and growth events included). The result is saved as
JSON (``--save``) and read back with ``--calibration FILE`` on a later estimate.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from adarank.data.split_sizes import DEV as DEV_SIZES
from adarank.data.split_sizes import TRAIN as TRAIN_SIZES

#: a forward pass of an evaluation batch, as a share of a training step
EVAL_STEP_SHARE = 1 / 3
CALIBRATION_STEPS = 24
#: a growing method's scaled schedule keeps every growth step of the full run, so a long task
#: (MNLI: 858 growth steps) needs that many steps; calibration runs are capped here
MAX_CALIBRATION_STEPS = 1000


def arm_key(cfg) -> str:
    """task / method label / model of a composed job (the calibration's unit)."""
    from adarank.results import method_label

    threshold = cfg.threshold.name if cfg.threshold.name != "none" else None
    if cfg.method.name == "increlora":
        threshold = "fixed"
    if cfg.method.name == "triadapt" and threshold is None:
        threshold = "linear"
    return f"{cfg.task.name}/{method_label(cfg.method.name, threshold)}/{cfg.model.name}"


def job_steps(cfg) -> int:
    """Optimizer steps of a job (as run.py plans them) from the public split sizes."""
    from adarank.training.loop import plan_total_steps

    size = TRAIN_SIZES[cfg.task.name]
    if cfg.train.max_train_samples:
        size = min(size, int(cfg.train.max_train_samples))
    epochs = cfg.train.epochs or cfg.task.epochs
    return plan_total_steps(size, int(cfg.task.batch_size), int(epochs), cfg.train.max_steps)


def job_evaluations(cfg, steps: int) -> tuple[int, int]:
    """(evaluations, batches per evaluation): periodic ones at steps < T, plus the final one."""
    interval = int(cfg.train.eval_interval or cfg.task.eval_interval)
    dev = DEV_SIZES[cfg.task.name]
    if cfg.train.max_eval_samples:
        dev = min(dev, int(cfg.train.max_eval_samples) * (2 if cfg.task.name == "mnli" else 1))
    return (steps - 1) // interval + 1, math.ceil(dev / int(cfg.train.eval_batch_size))


def calibrate(jobs: list[list[str]], steps: int = CALIBRATION_STEPS, log=print, max_steps: int = MAX_CALIBRATION_STEPS) -> dict:
    """One short run per (task, arm, model) of ``jobs`` on this machine (see the module docstring)."""
    import torch

    from adarank.analysis.sweep_configs import compose_jobs
    from adarank.checks import ConfigError
    from adarank.training.loop import pick_device

    groups: dict[str, list[str]] = {}
    for job, cfg in zip(jobs, compose_jobs(jobs)):
        groups.setdefault(arm_key(cfg), job)
    root = Path(tempfile.mkdtemp(prefix="adarank-calibration-"))
    entries, failed = {}, {}
    try:
        for key, job in groups.items():
            try:
                entries[key] = _calibration_run(job, steps, max_steps, root)
            except ConfigError as err:
                failed[key] = str(err)
                log(f"[calibrate] {key}: not calibrated: {err}")
                continue
            log(f"[calibrate] {key}: {entries[key]['step_seconds']:.3f} s/step ({entries[key]['steps']} steps)")
        device = pick_device(str(compose_jobs([job])[0].train.device))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "failed": failed,
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),  # a shared machine's step times scale with it
        "date": time.strftime("%Y-%m-%d"),
        "steps": steps,
        "entries": entries,
    }


def _calibration_run(job: list[str], steps: int, max_steps: int, root: Path) -> dict:
    """The job for ``steps`` steps, its schedule scaled to them; when the scaled schedule needs more
    steps (every growth step of the full run is kept, schedule_scaling.py), for as many as it
    says, up to ``max_steps``."""
    import re

    from adarank.analysis.sweep_configs import compose_jobs
    from adarank.checks import ConfigError
    from adarank.run import run

    while True:
        overrides = _merge(job, [f"train.max_steps={steps}", "train.schedule=scaled", "train.max_eval_samples=32",
                                 "train.checkpoint_interval=0", "train.progress=off", "force=true",
                                 f"results.root={root}", "seed=0"])
        (cfg,) = compose_jobs([overrides])
        started = time.perf_counter()
        try:
            metrics = run(cfg, overrides)
            break
        except ConfigError as err:  # the schedule does not fit: the steps it names, else twice as many
            needed = re.search(r"at least (\d+) steps", str(err))
            more = int(needed.group(1)) if needed and int(needed.group(1)) > steps else 2 * steps
            if more > max_steps:
                raise
            steps = more
    costs = metrics["costs"]
    return {"step_seconds": costs["train_seconds"] / costs["optimizer_steps"], "steps": costs["optimizer_steps"],
            "train_seconds": costs["train_seconds"], "wall_seconds": time.perf_counter() - started,
            "batch_size": int(cfg.task.batch_size)}


def _merge(job: list[str], extra: list[str]) -> list[str]:
    merged = dict(item.split("=", 1) for item in job)
    merged.update(item.split("=", 1) for item in extra)
    return [f"{key}={value}" for key, value in merged.items()]


def estimate(jobs: list[list[str]], calibration: dict) -> dict:
    """Steps and device-hours per (task, arm, model) and in total; jobs whose arm the calibration
    lacks are counted in steps and listed as ``uncalibrated``."""
    from adarank.analysis.sweep_configs import compose_jobs

    rows: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "steps": 0, "eval_batches": 0, "seconds": 0.0})
    missing = set()
    for cfg in compose_jobs(jobs):
        key = arm_key(cfg)
        steps = job_steps(cfg)
        evaluations, batches = job_evaluations(cfg, steps)
        row = rows[key]
        row["jobs"] += 1
        row["steps"] += steps
        row["eval_batches"] += evaluations * batches
        entry = calibration.get("entries", {}).get(key)
        if entry is None:
            missing.add(key)
            row["seconds"] = None
            continue
        t = entry["step_seconds"]
        row["step_seconds"] = t
        row["seconds"] += steps * t + evaluations * batches * t * EVAL_STEP_SHARE
    total_seconds = sum(r["seconds"] for r in rows.values() if r["seconds"] is not None)
    return {
        "device": calibration.get("device"),
        "jobs": sum(r["jobs"] for r in rows.values()),
        "steps": sum(r["steps"] for r in rows.values()),
        "hours": total_seconds / 3600 if not missing else None,
        "hours_calibrated": total_seconds / 3600,
        "uncalibrated": sorted(missing),
        "rows": dict(rows),
    }


def table(result: dict) -> str:
    lines = ["| task / arm / model | jobs | optimizer steps | eval batches | s/step | device-hours |", "|---|---:|---:|---:|---:|---:|"]
    for key, r in sorted(result["rows"].items()):
        hours = "not calibrated" if r["seconds"] is None else f"{r['seconds'] / 3600:.2f}"
        step = f"{r['step_seconds']:.3f}" if "step_seconds" in r else "–"
        lines.append(f"| {key} | {r['jobs']} | {r['steps']:,} | {r['eval_batches']:,} | {step} | {hours} |")
    total = f"{len(result['uncalibrated'])} arms not calibrated" if result["hours"] is None else f"{result['hours']:.2f}"
    lines.append(f"| **all** | {result['jobs']} | {result['steps']:,} | | | **{total}** |")
    return "\n".join(lines)


def load_calibration(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
