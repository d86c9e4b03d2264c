"""What the peft-backed methods share: the target and head modules in the form peft's configs
expect, the rank pattern read back from peft's layers, and the LoRA-family base class
:class:`PeftLoRA` (LoRA, DoRA, rsLoRA, PiSSA, LoRA+, EVA: one ``LoraConfig`` each, differing
only in the peft option that makes the method)."""

from __future__ import annotations

from torch import nn

from adarank.methods import lowrank
from adarank.methods.base import Method
from adarank.models import adapted_module_names, head_module_names

ADAPTER = "default"


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


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{adapted module name: peft LoRA layer} (the ``default`` adapter)."""
    from peft.tuners.lora import LoraLayer

    return {
        strip_peft_prefix(name): module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A
    }


class PeftLoRA(Method):
    """LoRA through peft: ``LoraConfig(r = task.reference_rank, lora_alpha = task.alpha,
    lora_dropout = task.lora_dropout)`` on the encoder linears (``model.target_regex``), heads
    fully trained (``modules_to_save``). A subclass names its options (``defaults``, the keys of
    conf/method/<name>.yaml) and the peft options that make it (:meth:`lora_options`)."""

    #: method options and their defaults (null in the yaml = this default)
    defaults: dict = {}

    @classmethod
    def check_config(cls, method_cfg, task_cfg, threshold, model_cfg, total_steps) -> None:
        lowrank.check_common(cls.name, method_cfg, cls.defaults, task_cfg)
        rank = task_cfg.reference_rank
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"task.reference_rank must be an integer >= 1, not {rank!r}")
        cls.check_options(method_cfg, task_cfg)

    @classmethod
    def check_options(cls, method_cfg, task_cfg) -> None:
        """The method's own options (type, range); ValueError with the fix."""

    @classmethod
    def option_of(cls, method_cfg, key: str):
        """A method option: the config's value, or ``defaults[key]`` where missing or null."""
        return lowrank.option(method_cfg, cls.defaults, key)

    def option(self, key: str):
        return self.option_of(self.cfg, key)

    def lora_options(self) -> dict:
        """Extra ``LoraConfig`` arguments (``use_dora``, ``use_rslora``, ``init_lora_weights``...)."""
        return {}

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        targets, heads = peft_targets(model, self.model_cfg)
        self.targets = targets
        config = LoraConfig(
            r=int(self.task.reference_rank),
            lora_alpha=float(self.task.alpha),
            lora_dropout=float(self.task.lora_dropout),
            target_modules=targets,
            modules_to_save=heads,
            bias="none",
            **self.lora_options(),
        )
        return get_peft_model(model, config)

    def rank_pattern(self, model: nn.Module) -> dict[str, int]:
        return peft_rank_pattern(model, lambda module: module.r[ADAPTER])
