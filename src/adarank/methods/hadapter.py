"""Houlsby adapters (Houlsby et al. 2019), "HAdapter" in the AdaLoRA and TriAdaptLoRA tables.

Our own small module: the maintained ``adapters`` library (1.3.0, the latest) requires
transformers ~= 4.57 and does not support the installed transformers 5.x (docs/baselines.md).

In every encoder layer, two bottleneck adapters: one after the attention output projection and
one after the feed-forward output projection, each applied to the sub-layer output after its
dropout and before the residual sum and layer norm (as in the reference ``adapter-bert`` code):

    h  = dropout(W_o z)
    h' = h + W_up f(W_down h + b_down) + b_up          (adapter, with its own residual)
    out = LayerNorm(h' + x)

f = GELU, W_down: m x d, W_up: d x m, near-identity initialisation (weights ~ truncated
N(0, init_std²) at ±2 std, biases 0). The adapters and the layer norms of every encoder layer
train (Houlsby et al.); the backbone is frozen; classifier and pooler train as for every method.

Bottleneck m = 32: with DeBERTaV3-base (d = 768, 12 layers) the adapters and layer norms hold
24·(2·768·32 + 32 + 768) + 12·2·2·768 = 1,235,712 trainable parameters, the closest integer m to
the 1.22M the AdaLoRA paper reports for its HAdapter row (the row TriAdaptLoRA Table I copies).
"""

from __future__ import annotations

import re

from torch import nn

from adarank.methods.base import Method
from adarank.models import freeze_all_but_heads

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "swish": nn.SiLU}
METHOD_KEYS = {"name", "bottleneck", "activation", "init_std", "train_layer_norms", "module_regex"}


class HoulsbyAdapter(nn.Module):
    """h -> h + W_up f(W_down h): a bottleneck with a skip connection, near-identity at init."""

    def __init__(self, hidden: int, bottleneck: int, activation: str = "gelu", init_std: float = 1e-3):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, hidden)
        self.act = ACTIVATIONS[activation]()
        for linear in (self.down, self.up):
            nn.init.trunc_normal_(linear.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
            nn.init.zeros_(linear.bias)

    def forward(self, h):
        return h + self.up(self.act(self.down(h)))


class DropoutThenAdapter(nn.Module):
    """Replaces a sub-layer output's ``dropout`` so the adapter runs after it (adapter-bert order)."""

    def __init__(self, dropout: nn.Module, adapter: HoulsbyAdapter):
        super().__init__()
        self.dropout = dropout
        self.adapter = adapter

    def forward(self, h):
        return self.adapter(self.dropout(h))


def houlsby_param_count(hidden: int, num_layers: int, bottleneck: int, train_layer_norms: bool = True) -> int:
    """Trainable parameters of the adapters (2 per layer, biases included) and layer norms."""
    adapters = 2 * num_layers * (2 * hidden * bottleneck + bottleneck + hidden)
    norms = num_layers * 2 * 2 * hidden if train_layer_norms else 0
    return adapters + norms


def sublayer_outputs(model: nn.Module, module_regex: str) -> list[tuple[str, nn.Module]]:
    """The sub-layer output modules (dense -> dropout -> LayerNorm) ``module_regex`` matches."""
    pattern = re.compile(module_regex)
    sublayers = [
        (name, module)
        for name, module in model.named_modules()
        if pattern.fullmatch(name) and all(hasattr(module, a) for a in ("dense", "dropout", "LayerNorm"))
    ]
    if not sublayers:
        raise ValueError(f"module_regex {module_regex!r} matches no sub-layer output")
    return sublayers


class HAdapter(Method):
    name = "hadapter"

    @classmethod
    def check_config(cls, method_cfg, task_cfg, threshold, model_cfg, total_steps) -> None:
        unknown = set(method_cfg) - METHOD_KEYS
        if unknown:
            raise ValueError(
                f"unknown option(s) {sorted(unknown)}; the options are {sorted(METHOD_KEYS)}"
            )
        if int(method_cfg.bottleneck) < 1:
            raise ValueError(f"bottleneck must be >= 1, got {method_cfg.bottleneck}")
        if method_cfg.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}")
        if float(method_cfg.init_std) <= 0:
            raise ValueError("init_std must be > 0")

    def __init__(self, cfg, task_cfg, threshold_cfg, model_cfg):
        super().__init__(cfg, task_cfg, threshold_cfg, model_cfg)
        self.adapted: list[str] = []

    @classmethod
    def check_model(cls, method_cfg, model_cfg, skeleton: nn.Module) -> None:
        sublayer_outputs(skeleton, method_cfg.module_regex)

    def prepare(self, model: nn.Module) -> nn.Module:
        freeze_all_but_heads(model, self.model_cfg.head_modules)
        for name, module in sublayer_outputs(model, self.cfg.module_regex):
            adapter = HoulsbyAdapter(
                module.dense.out_features,
                int(self.cfg.bottleneck),
                str(self.cfg.activation),
                float(self.cfg.init_std),
            ).to(device=module.dense.weight.device, dtype=module.dense.weight.dtype)
            module.dropout = DropoutThenAdapter(module.dropout, adapter)
            if self.cfg.train_layer_norms:
                for param in module.LayerNorm.parameters():
                    param.requires_grad = True
            self.adapted.append(name)
        return model

    def adapter_parameter_count(self, model: nn.Module) -> int:
        """Trainable parameters outside the heads (adapters + layer norms)."""
        return sum(
            p.numel()
            for n, p in model.named_parameters()
            if p.requires_grad and (".adapter." in n or "LayerNorm" in n) and "encoder." in n
        )

    def summary(self, model: nn.Module) -> dict:
        return {
            "adapter_bottleneck": int(self.cfg.bottleneck),
            "adapter_modules": len(self.adapted),
            "adapter_params": self.adapter_parameter_count(model),
        }
