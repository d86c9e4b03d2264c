"""``train.schedule=scaled``: the task's step-based schedule rescaled to a shorter (or longer) run.

Table V/VI give every schedule in optimizer steps of the full-length run (T_paper steps: the
task's epochs over its whole training set). A run capped by ``train.max_steps`` / ``train.epochs``
/ ``train.max_train_samples`` has T_run steps, and the paper's step values no longer fit (RTE's
100-step LR warm-up fills a 120-step demo). ``scaled`` multiplies every step hyperparameter by
s = T_run / T_paper, keeping the shape of the run (docs/reproducing.md, "Scaled schedules"):

* LR warm-up (``task.warmup_steps``; AdaLoRA's ``task.adalora.warmup_steps``; a
  ``warmup_ratio`` already scales);
* growth (IncreLoRA, TriAdaptLoRA): ``task.init_warmup`` (t0) is scaled and rounded; the growth
  interval is the scaled one, rounded, or the largest below it that still keeps at least as many
  growth steps after t0 as the full-length run has (so every growth event of the full run has a
  step, at nearly the same fraction of the run);
* AdaLoRA masking: ``t_init``, ``t_final`` scaled and rounded, ``ΔT`` scaled (at least 1);
* ALoRA's rounds: K1 and K2 (epochs) as steps of the full-length run, scaled (at least 1).

Pure functions of numbers; ``apply`` writes the values into the config and returns a report
(paper value -> scaled value per key) for metrics.json.
"""

from __future__ import annotations

import math

from omegaconf import open_dict

from adarank.methods.growth_clock import count_growth_steps

SCHEDULES = ("paper", "scaled")
#: methods whose growth steps are t > t0 with t % interval == 0 (IncreLoRA, TriAdaptLoRA)
GROWING_METHODS = ("increlora", "triadapt")


class ScheduleError(ValueError):
    """The scaled schedule cannot keep the run's shape; the message says what to change."""


def paper_steps(train_size: int, batch_size: int, epochs: int) -> int:
    """T_paper: optimizer steps of the full-length run (the task's epochs over the whole set)."""
    return math.ceil(train_size / batch_size) * int(epochs)


def scale(value: int, factor: float, minimum: int) -> int:
    """round(value x factor), half up, never below ``minimum`` (0 stays 0)."""
    if value <= 0:
        return int(value)
    return max(minimum, math.floor(value * factor + 0.5))


def scaled_interval(run_steps: int, t0: int, wanted: int, proportional: float) -> int | None:
    """The growth interval of the scaled run: the one nearest ``proportional`` (interval x s)
    among those that keep at least ``wanted`` growth steps in a run of ``run_steps`` steps with
    warm-up ``t0``; None when even an interval of 1 gives fewer."""
    if count_growth_steps(run_steps, t0, 1) < wanted:
        return None
    low, high = 1, max(1, run_steps)  # the count is non-increasing in the interval: bisect
    while low < high:
        mid = (low + high + 1) // 2
        if count_growth_steps(run_steps, t0, mid) >= wanted:
            low = mid
        else:
            high = mid - 1
    return min(low, max(1, math.floor(proportional + 0.5)))


def scaled_values(cfg, run_steps: int, full_steps: int) -> dict[str, tuple]:
    """{dotted config key: (paper value, scaled value)} for every schedule hyperparameter the
    run's method uses. Raises ScheduleError where the run is too short to keep the schedule's shape."""
    task, method = cfg.task, cfg.method.name
    factor = run_steps / full_steps
    out: dict[str, tuple] = {}

    def put(key: str, value: int, minimum: int = 1) -> None:
        out[key] = (int(value), scale(int(value), factor, minimum))

    if method == "adalora":
        ada = task.adalora
        if ada.get("warmup_steps") is not None:
            put("task.adalora.warmup_steps", ada.warmup_steps)
        put("task.adalora.init_warmup", ada.init_warmup, minimum=0)
        put("task.adalora.final_warmup", ada.final_warmup)
        put("task.adalora.mask_interval", ada.mask_interval)
        return out
    put("task.warmup_steps", task.warmup_steps)
    if method == "alora":
        # K1 / K2 are epochs (docs/alora.md L6): the full-length run's K1 and K2 in steps, scaled,
        # go into method.k1_steps / k2_steps, which replace the epochs
        epoch = full_steps // int(task.epochs)
        for key in ("k1", "k2"):
            put(f"method.{key}_steps", math.floor(float(cfg.method[f"{key}_epochs"]) * epoch + 0.5))
    if method in GROWING_METHODS:
        t0, interval = int(task.init_warmup), int(task.incre_interval)
        wanted = count_growth_steps(full_steps, t0, interval)
        new_t0 = scale(t0, factor, 0)
        new_interval = scaled_interval(run_steps, new_t0, wanted, interval * factor)
        if new_interval is None:
            raise ScheduleError(
                f"train.schedule=scaled: the full-length run ({full_steps} steps) has {wanted} growth "
                f"steps (every task.incre_interval={interval} after task.init_warmup={t0}); a run of "
                f"{run_steps} steps with the warm-up scaled to {new_t0} holds at most "
                f"{count_growth_steps(run_steps, new_t0, 1)}. Train for at least {new_t0 + wanted + 1} steps "
                "(train.max_steps), or use train.schedule=paper and set task.init_warmup / "
                "task.incre_interval yourself"
            )
        out["task.init_warmup"] = (t0, new_t0)
        out["task.incre_interval"] = (interval, new_interval)
    return out


def apply(cfg, run_steps: int, train_size: int) -> dict:
    """Write the scaled values into ``cfg``; return the report for metrics.json. ``train_size``:
    the whole training set (before ``train.max_train_samples``)."""
    full = paper_steps(train_size, int(cfg.task.batch_size), int(cfg.task.epochs))
    values = scaled_values(cfg, run_steps, full)
    with open_dict(cfg):
        for key, (_, new) in values.items():
            *parents, leaf = key.split(".")
            node = cfg
            for part in parents:
                node = node[part]
            node[leaf] = new
    return {
        "mode": "scaled",
        "paper_steps": full,
        "run_steps": run_steps,
        "factor": run_steps / full,
        "values": {key: {"paper": old, "scaled": new} for key, (old, new) in values.items()},
    }

