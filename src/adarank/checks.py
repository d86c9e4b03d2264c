"""Configuration errors, all raised before any data is tokenised or any model is built."""

from __future__ import annotations

import os

from adarank import validation
from adarank.methods import REGISTRY, method_class
from adarank.models import SOURCES
from adarank.schedule_scaling import SCHEDULES
from adarank.training.optim import OPTIMIZERS

TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "squad_v2")
THRESHOLDS = ("none", "fixed", "linear", "nonlinear")
PROGRESS = ("auto", "bar", "log", "off")
PRECISIONS = ("fp32", "bf16")
#: appended to every "the schedule does not fit the run" message
SCALED_HINT = "or let train.schedule=scaled rescale the task's schedule to the run"


class ConfigError(ValueError):
    """A configuration that cannot run; the message says how to fix it."""


def check_static(cfg) -> str | None:
    """Check everything knowable from the config alone; return the threshold the method runs with
    (None for methods that do not grow ranks)."""
    try:
        validation.check_known_keys(cfg)
        validation.check_values(cfg)
    except validation.ValueProblem as err:
        raise ConfigError(str(err)) from None
    _one_of("task", cfg.task.name, TASKS)
    _one_of("method", cfg.method.name, tuple(sorted(REGISTRY)))
    _one_of("threshold", cfg.threshold.name, THRESHOLDS)
    _one_of("model.source", cfg.model.source, SOURCES)
    _one_of("train.progress", cfg.train.progress, PROGRESS)
    _one_of("train.precision", cfg.train.precision, PRECISIONS)
    _one_of("train.schedule", cfg.train.schedule, SCHEDULES)
    _one_of("train.optimizer", cfg.train.optimizer, OPTIMIZERS)
    positional = cfg.model.get("positional_query_adapter")
    if positional is not None and (not isinstance(positional, bool) or cfg.model.get("family") != "deberta"):
        raise ConfigError(
            f"model.positional_query_adapter={positional!r}: true or false on a DeBERTa model only "
            "(null = the reference codes' setting for the task: false on GLUE, true on SQuAD 2.0)"
        )
    for key in ("max_steps", "epochs", "eval_interval", "max_train_samples", "max_eval_samples", "num_threads",
                "pad_to_multiple_of"):
        value = cfg.train.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"train.{key} must be a positive integer or null, got {value!r}")
    if cfg.data.dir and not os.path.isdir(cfg.data.dir):
        what = "is a file, not a folder" if os.path.exists(cfg.data.dir) else "does not exist"
        raise ConfigError(
            f"data.dir={cfg.data.dir} {what}; point it at a local GLUE folder "
            "(TASK/train.tsv, TASK/dev.tsv) or a SQuAD 2.0 folder, or leave it null to use the hub"
        )
    if cfg.data.dir:
        _check_local_data(cfg.task, cfg.data.dir)
    try:
        threshold = method_class(cfg.method.name).resolve_threshold(cfg.threshold.name)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return None if threshold == "none" else threshold


def check_schedule(cfg, threshold: str | None, total_steps: int, num_examples: int) -> None:
    """Checks that need the dataset size: the run must have steps, and the method's schedule
    must fit into them."""
    if total_steps < 1:
        raise ConfigError(f"no optimizer steps: {num_examples} training examples, batch {cfg.task.batch_size}")
    method = method_class(cfg.method.name)
    try:
        method.check_config(cfg.method, cfg.task, threshold or "none", cfg.model, total_steps)
        method.check_data(cfg.method, cfg.task, total_steps, num_examples)
    except ValueError as err:
        message = str(err)
        if cfg.train.schedule == "paper" and "task." in message:
            message = f"{message}; {SCALED_HINT}"
        raise ConfigError(f"method={cfg.method.name}: {message}") from err
    warmup = method.warmup_for(cfg.task, total_steps)
    if warmup >= total_steps:
        raise ConfigError(
            f"method={cfg.method.name}: the LR warm-up ({warmup} steps) fills the whole run of "
            f"{total_steps} optimizer steps, so the learning rate never reaches its peak; lower {method.warmup_key} "
            f"or train for more steps, {SCALED_HINT}"
        )


def _check_local_data(task_cfg, data_dir: str) -> None:
    """The task's files must be in the local data folder (GLUE TSVs or SQuAD JSON)."""
    if task_cfg.kind == "glue":
        from adarank.data.glue import GlueDataError as DataError
        from adarank.data.glue import check_local_files
    else:
        from adarank.data.squad import SquadDataError as DataError
        from adarank.data.squad import check_local_files
    try:
        check_local_files(task_cfg, data_dir)
    except DataError as err:
        raise ConfigError(str(err)) from err


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {key} {value!r}; choose one of: {', '.join(allowed)}")
