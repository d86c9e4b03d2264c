"""LoRA (Hu et al. 2022) through peft: r = the task's reference rank, alpha and dropout from the
task, on the same encoder linears as every LoRA-family method; heads fully trained."""

from __future__ import annotations

from torch import nn

from adarank.methods.base import Method
from adarank.methods.peft_support import peft_rank_pattern, peft_targets


class LoRA(Method):
    name = "lora"

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        targets, heads = peft_targets(model, self.model_cfg)
        config = LoraConfig(
            r=int(self.task.reference_rank),
            lora_alpha=float(self.task.alpha),
            lora_dropout=float(self.task.lora_dropout),
            target_modules=targets,
            modules_to_save=heads,
            bias="none",
        )
        return get_peft_model(model, config)

    def rank_pattern(self, model: nn.Module) -> dict[str, int]:
        return peft_rank_pattern(model, lambda module: module.r["default"])
