"""LoRA+ (Hayou, Ghosh, Yu, ICML 2024): LoRA whose B factors learn λ times faster than A,
η_B = λ·η_A (the paper's rule of thumb λ = 2^4 = 16: ``method.lr_ratio``); η_A is the run's LR.

The parameter groups are peft's ``create_loraplus_optimizer`` (the official LoRA+ grouping,
``lora_plus.py`` of nikhil-ghosh-berkeley/loraplus): A and every other matrix (the heads'
weights) at η_A with the task's weight decay; ``lora_B`` and every 1-D trainable parameter (the
heads' biases) at λ·η_A, decayed unless it is a bias or a layer norm. The helper builds the
optimizer itself (``optimizer_cls(groups, lr=η_A)``); we pass a class that hands the groups back,
so the run's own AdamW (``train.optimizer``: adamw_legacy or adamw_torch, training/optim.py) is
built from them. ``GrowingLinearSchedule`` takes each group's ``lr`` as its peak, so both LRs
follow the same warm-up and decay and their ratio is λ at every step (docs/baselines.md, LoRA+).
"""

from __future__ import annotations

from torch import nn

from adarank.methods.peft_support import PeftLoRA


class _Groups(list):
    """Stands for peft's ``optimizer_cls``: keeps the parameter groups it is given."""

    def __init__(self, groups, **defaults):
        super().__init__(group for group in groups if group["params"])


class LoRAPlus(PeftLoRA):
    name = "loraplus"
    defaults = {"lr_ratio": 16.0}

    @classmethod
    def check_options(cls, method_cfg, task_cfg) -> None:
        ratio = cls.option_of(method_cfg, "lr_ratio")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio >= 1:
            raise ValueError(f"method.lr_ratio (λ = η_B / η_A) must be a number >= 1, not {ratio!r}")

    def optimizer_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(
            model, _Groups, lr=self.learning_rate(), loraplus_lr_ratio=float(self.option("lr_ratio")),
            loraplus_weight_decay=weight_decay,
        )
