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


def build_task_data(task_cfg, data_cfg, train_cfg, tokenizer) -> TaskData:
    if task_cfg.kind == "glue":
        from adarank.data.glue import load_glue_task

        return load_glue_task(task_cfg, data_cfg, train_cfg, tokenizer)
    if task_cfg.kind == "squad_v2":
        from adarank.data.squad import load_squad_task

        return load_squad_task(task_cfg, data_cfg, train_cfg, tokenizer)
    raise ValueError(f"unknown task kind {task_cfg.kind!r}")
