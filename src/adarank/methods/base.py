"""The interface every fine-tuning method implements.

The training loop (``adarank.training.loop``) calls, in this order, for each optimizer step ``t``
(0-based count of optimizer steps already taken, the ``global_step`` of the reference codes):

    loss = model(**batch).loss + method.extra_loss(model)     # e.g. orthogonal regulariser
    loss.backward(); clip_grad_norm_(trainable, max_grad_norm)
    method.before_optimizer_step(ctx)                          # IncreLoRA / TriAdaptLoRA growth
    optimizer.step(); scheduler.step()
    method.after_optimizer_step(ctx)                           # AdaLoRA budget masking
    optimizer.zero_grad()

``prepare`` runs once, after the model is built and before the optimizer exists.

Checkpoints (``adarank.training.checkpoint``) use four more hooks: ``checkpoint_tensors`` (what
of the model to save), ``state_dict`` / ``load_state_dict`` (the method's own state), and
``restore_structure``, which a method whose structure changes during training (growth) uses to
rebuild that structure, and add the optimizer groups growth added in the same order, before the
saved tensors and optimizer state are loaded into it.
"""

from __future__ import annotations

import torch
from torch import nn

from adarank.training.context import StepContext

__all__ = ["Method", "StepContext"]


class Method:
    """Base class: full fine-tuning behaviour, no rank allocation."""

    #: registry name, equal to the file name of its config in conf/method/
    name: str = "base"
    #: thresholds this method accepts ("none" = not a rank-growing method)
    thresholds: tuple[str, ...] = ("none",)
    #: threshold used when the user leaves ``threshold=none`` on a growing method
    default_threshold: str = "none"

    def __init__(self, cfg, task_cfg, threshold_cfg, model_cfg):
        self.cfg = cfg  # the method config node
        self.task = task_cfg
        self.threshold = threshold_cfg
        self.model_cfg = model_cfg
        #: one dict per rank-allocation event, written to growth_log.jsonl
        self.growth_log: list[dict] = []
        #: wall seconds spent scoring / allocating ranks (reported in metrics.json costs)
        self.allocation_seconds: float = 0.0

    # -- configuration ---------------------------------------------------------------------
    @classmethod
    def resolve_threshold(cls, requested: str) -> str:
        """The threshold this method runs with; raise ValueError for one it does not support."""
        if requested == "none":
            return cls.default_threshold
        if requested not in cls.thresholds:
            if cls.thresholds == ("none",):
                raise ValueError(
                    f"method={cls.name} does not grow ranks, so threshold={requested} does not apply "
                    "to it; leave threshold at its default (none)"
                )
            raise ValueError(
                f"method={cls.name} supports threshold in {list(cls.thresholds)}, not {requested!r}"
            )
        return requested

    @classmethod
    def check_config(cls, method_cfg, task_cfg, threshold: str, model_cfg, total_steps: int) -> None:
        """Raise ValueError for any option that does not apply or cannot work (before any compute).

        ``total_steps`` is the exact number of optimizer steps the run will take.
        """

    @classmethod
    def check_model(cls, method_cfg, model_cfg, skeleton: nn.Module) -> None:
        """Raise ValueError when the model leaves this method nothing to adapt (``skeleton``: the
        model's modules without weights, ``models.model_skeleton``). Default: ``model.target_regex``
        must match an nn.Linear, as every LoRA-family method adapts those."""
        from adarank.models import adapted_module_names

        adapted_module_names(skeleton, model_cfg.target_regex)

    @classmethod
    def check_data(cls, method_cfg, task_cfg, total_steps: int, num_examples: int) -> None:
        """Like :meth:`check_config`, for checks that need the number of training examples
        (ALoRA: its held-out batch and its epoch-based round schedule)."""

    # -- lifecycle -------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        """Freeze / inject adapters; return the model to train."""
        return model

    def training_data(self, dataset, collate, seed: int):
        """The dataset the optimizer steps draw from (ALoRA holds a few examples out of it). Called
        before the optimizer exists, on the model as it will train: EVA runs its data-driven
        initialisation here."""
        return dataset

    def set_total_steps(self, total_steps: int) -> None:
        """Called once before training with the exact number of optimizer steps."""

    #: the config key a user changes to shorten this method's LR warm-up (named in error messages)
    warmup_key: str = "task.warmup_steps"

    @classmethod
    def warmup_for(cls, task_cfg, total_steps: int) -> int:
        """The LR warm-up (optimizer steps) this method uses: the task's ``warmup_steps``."""
        return int(task_cfg.warmup_steps)

    def lr_warmup_steps(self, total_steps: int) -> int:
        return self.warmup_for(self.task, total_steps)

    def learning_rate(self) -> float:
        """Peak LR: the method config's ``lr`` where it sets one (full fine-tuning), else the
        task's ``lr`` (Table V's shared row, tuned for the low-rank methods)."""
        own = self.cfg.get("lr")
        return float(self.task.lr if own is None else own)

    def optimizer_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        """Parameter groups for AdamW. Default: trainable params, no decay on biases and norms."""
        from adarank.training.optim import default_param_groups

        return default_param_groups(model, weight_decay)

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def before_optimizer_step(self, ctx: StepContext) -> None:
        pass

    def after_optimizer_step(self, ctx: StepContext) -> None:
        pass

    def final_evaluations(self, model: nn.Module, evaluate) -> dict:
        """Extra whole-dev evaluations after training, merged into metrics.json (DyLoRA: one per
        rank 1..r_max). ``evaluate()`` returns the task's dev metrics for the model as it is."""
        return {}

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint_tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model tensors a checkpoint holds: trainable parameters and every buffer (the
        frozen backbone is rebuilt from the model config and the seed)."""
        tensors = {name: p for name, p in model.named_parameters() if p.requires_grad}
        tensors.update(model.named_buffers())
        return tensors

    def state_dict(self) -> dict:
        """The method's own state (tensors, numbers, lists, dicts; no objects)."""
        return {"growth_log": [dict(event) for event in self.growth_log], "allocation_seconds": float(self.allocation_seconds)}

    def load_state_dict(self, state: dict) -> None:
        self.growth_log = [dict(event) for event in state["growth_log"]]
        self.allocation_seconds = float(state["allocation_seconds"])

    def restore_structure(self, model: nn.Module, scheduler, state: dict) -> None:
        """Re-create what training grew (with any values: they are overwritten next) and hand
        the new parameters to ``scheduler.add_param_group`` in the original order."""

    def save_adapter(self, model: nn.Module, folder: str) -> None:
        """Write what this method trained: a peft adapter folder for peft-wrapped models,
        otherwise the state dict of the trainable parameters (``trainable.pt``)."""
        import os

        from peft import PeftModel

        os.makedirs(folder, exist_ok=True)
        if isinstance(model, PeftModel):
            model.save_pretrained(folder)
            return
        trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
        torch.save(trainable, os.path.join(folder, "trainable.pt"))

    def rank_pattern(self, model: nn.Module) -> dict[str, int] | None:
        """Final rank per adapted module (None for methods without ranks)."""
        return None

    def summary(self, model: nn.Module) -> dict:
        """Extra method-specific facts for metrics.json (e.g. final total rank)."""
        pattern = self.rank_pattern(model)
        if pattern is None:
            return {}
        return {"total_rank": int(sum(pattern.values())), "adapted_modules": len(pattern)}
