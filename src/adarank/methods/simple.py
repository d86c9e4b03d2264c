"""Methods without adapters: full fine-tuning and BitFit."""

from __future__ import annotations

from torch import nn

from adarank.methods.base import Method
from adarank.models import freeze_all_but_heads


class FullFineTuning(Method):
    """Every parameter of the backbone and head trains."""

    name = "full"

    @classmethod
    def check_model(cls, method_cfg, model_cfg, skeleton: nn.Module) -> None:
        """Trains the backbone's own parameters: any model will do."""

    def prepare(self, model: nn.Module) -> nn.Module:
        for param in model.parameters():
            param.requires_grad = True
        return model


class BitFit(Method):
    """BitFit (Ben Zaken et al. 2021): only the bias terms of the backbone train, plus the head
    (classifier and pooler, as every method here trains them)."""

    name = "bitfit"

    @classmethod
    def check_model(cls, method_cfg, model_cfg, skeleton: nn.Module) -> None:
        """Trains the backbone's own biases: any model will do."""

    def prepare(self, model: nn.Module) -> nn.Module:
        freeze_all_but_heads(model, self.model_cfg.head_modules)
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.requires_grad = True
        return model
