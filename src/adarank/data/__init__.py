"""Task data: each task kind (GLUE, SQuAD 2.0) builds a TaskData with the same interface."""

from __future__ import annotations

from adarank.data.task_data import TaskData

__all__ = ["TaskData", "build_task_data"]


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
