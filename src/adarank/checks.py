"""Configuration errors, all raised before any data is tokenised or any model is built.

``check_static``: the config alone (values, keys, names, local data files present);
``check_results_root``, ``check_device``: what the config asks of this machine (a writable results
folder, a device that exists); ``check_model``: what needs the model's architecture (its config,
no weights); ``check_schedule``: what needs the dataset size.
"""

from __future__ import annotations

import os
from pathlib import Path

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


def check_results_root(root: str) -> None:
    """``results.root`` must be a folder this process can write, or creatable in one."""
    path = Path(str(root)).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the first part of the path that exists (a folder, or a file)
    if not existing.is_dir():
        raise ConfigError(f"results.root={root}: {existing} is a file, not a folder; point results.root at a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        why = "is on a read-only filesystem" if read_only else "is not writable by this user"
        raise ConfigError(f"results.root={root}: {existing} {why}; point results.root at a writable folder")


def check_device(device: str) -> None:
    """``train.device`` must exist on this machine (a CUDA device among the visible ones)."""
    device = str(device)
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(
            f"train.device={device} but this machine has no CUDA device (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda or 'no'}); use train.device=cpu, or auto"
        )
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        names = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise ConfigError(
            f"train.device={device} but this machine has {count} visible CUDA device{'s' if count > 1 else ''} "
            f"({names}); pick one of them, or train.device=cuda / auto"
        )


#: the model head each task kind trains
TASK_HEADS = {"glue": "sequence_classification", "squad_v2": "question_answering"}


def check_model(cfg) -> None:
    """Checks that need the model's architecture, built without weights (``model_skeleton``: its
    config only): the sequence length fits the position embeddings, and the method finds modules
    to adapt (a model override such as model.num_layers=0 or a target_regex matching nothing)."""
    from adarank.models import model_skeleton

    skeleton = model_skeleton(cfg.model, TASK_HEADS[cfg.task.kind], int(cfg.task.num_labels), cfg.data.cache_dir)
    limit = getattr(skeleton.config, "max_position_embeddings", None)
    if isinstance(limit, int) and int(cfg.task.max_seq_length) > limit:
        raise ConfigError(
            f"task.max_seq_length={cfg.task.max_seq_length} exceeds the {limit} positions model={cfg.model.name} "
            f"has (max_position_embeddings); use task.max_seq_length={limit} or less"
        )
    try:
        method_class(cfg.method.name).check_model(cfg.method, cfg.model, skeleton)
    except ValueError as err:
        raise ConfigError(f"method={cfg.method.name} finds nothing to adapt in model={cfg.model.name}: {err}") from err


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
