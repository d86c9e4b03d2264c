"""Task data: each task kind (GLUE, SQuAD 2.0) builds a TaskData with the same interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class TaskData:
    """What the training loop needs from a task.

    ``evaluate(model, device, final)`` returns flat dev metrics on the 0-100 scale, the primary
    split's metrics under their plain names (e.g. ``accuracy``) and other splits' prefixed
    (e.g. ``mismatched_accuracy``); SQuAD adds one nested dict of diagnostics, ``answerability``
    (data/squad.py). ``final=False`` marks a periodic evaluation, which may use a
    capped sample (SQuAD); ``final=True`` always uses the whole dev set.
    """

    train_dataset: Any  # a torch Dataset of tokenised features
    collate: Callable[[list], dict]
    evaluate: Callable[..., dict[str, float]]
    head: str  # "sequence_classification" | "question_answering"
    num_labels: int
    info: dict = field(default_factory=dict)  # e.g. {"train_examples": n, "dev_examples": m}
    #: the fair protocol only: ``evaluate``'s twin on the validation split held out of the training
    #: set (data/split.py), the split every choice of the run is made on; None under ``paper``
    validation: Callable[..., dict[str, float]] | None = None


def build_task_data(task_cfg, data_cfg, train_cfg, tokenizer, protocol_cfg=None) -> TaskData:
    """``protocol_cfg`` (the fair protocol) carves a validation split out of the training set."""
    if task_cfg.kind == "glue":
        from adarank.data.glue import load_glue_task as load
    elif task_cfg.kind == "squad_v2":
        from adarank.data.squad import load_squad_task as load
    else:
        raise ValueError(f"unknown task kind {task_cfg.kind!r}")
    from adarank.training.precision import InPrecision

    data = load(task_cfg, data_cfg, train_cfg, tokenizer, protocol_cfg)
    # evaluation in the training precision, on dev and (fair protocol) on the validation split
    data.evaluate = InPrecision(data.evaluate, str(train_cfg.precision))
    if data.validation is not None:
        data.validation = InPrecision(data.validation, str(train_cfg.precision))
    return data
