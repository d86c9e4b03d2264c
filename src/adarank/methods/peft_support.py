"""What the peft-backed methods (LoRA, AdaLoRA) share: the target and head modules in the form
peft's configs expect, and the rank pattern read back from peft's layers."""

from __future__ import annotations

from torch import nn

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
