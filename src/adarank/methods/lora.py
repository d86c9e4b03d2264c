"""LoRA (Hu et al. 2022) through peft: r = the task's reference rank, alpha and dropout from the
task, on the same encoder linears as every LoRA-family method; heads fully trained."""

from __future__ import annotations

from torch import nn

from adarank.methods.base import Method
from adarank.models import adapted_module_names, head_module_names


def peft_targets(model: nn.Module, model_cfg) -> tuple[list[str], list[str]]:
    """(adapted module names, head module names) in the form peft's config expects.

    Target modules are given as the exact list of full names (peft matches a list by suffix, and
    full names can only match themselves), so ``pooler.dense`` is never caught by a bare
    ``dense``. Heads are given by their last name component, which peft's ``modules_to_save``
    matches as a suffix.
    """
    targets = adapted_module_names(model, model_cfg.target_regex)
    heads = sorted({name.split(".")[-1] for name in head_module_names(model, model_cfg.head_modules)})
    return targets, heads


def peft_rank_pattern(model: nn.Module, rank_of) -> dict[str, int]:
    """{adapted module name without peft's prefix: rank} for every peft-wrapped layer."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    pattern = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and not name.endswith("modules_to_save"):
            pattern[strip_peft_prefix(name)] = int(rank_of(module))
    return pattern


def strip_peft_prefix(name: str) -> str:
    return name.removeprefix("base_model.model.")


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
