"""TaskData: what the training loop needs from a task, whatever its kind (data/glue.py, data/squad.py)."""

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
