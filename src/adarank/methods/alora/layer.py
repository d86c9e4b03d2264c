"""ALoRA's gated LoRA layer (paper Eq. 3): z = x W_A G W_B with a 0/1 gate per rank.

In our (out x in) convention a wrapped frozen ``nn.Linear`` computes

    y = W0 x + bias + α/r_init · B diag(g) A dropout(x)

with A (R x in) and B (out x R) the concatenation of the layer's blocks: the initial block of
r_init ranks and one block per reallocation round in which the module received ranks (reading
L3: new ranks are new parameters, so the optimizer state of existing ones is never touched). The
gate vector g (R,) is a buffer: 1 for live ranks, 0 for pruned ones (reading L2: a pruned rank
keeps its parameters, its output contribution and its gradient are exactly zero). The scale
α/r_init stays fixed while ranks are pruned and added (reading L1).

Ablation scoring runs many gate configurations in one forward pass: with ``sample_gates`` set to
an (N x R) matrix, example n of the batch uses gate row n (see allocator.ablation_scores). An
input whose first dimension is not the batch's (DeBERTa's relative-position embeddings, projected
once by query_proj and key_proj for the whole batch) can only take one gate row: the scorer groups
configurations so that all rows agree on such layers, and the layer checks it.
"""

from __future__ import annotations

import torch
from torch import nn

from adarank.methods import lowrank


class GatedLoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, init_rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if init_rank < 1:
            raise ValueError(f"init_rank must be >= 1, got {init_rank}")
        self.base = lowrank.freeze_base(base)
        self.init_rank = int(init_rank)
        self.lora_alpha = float(alpha)
        self.scaling = self.lora_alpha / self.init_rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        self.register_buffer("gate", base.weight.new_zeros(0))
        self.add_ranks(init_rank)
        #: (N x R) per-example gates for batched ablation scoring; None = use ``gate``
        self.sample_gates: torch.Tensor | None = None
        #: set when a scoring forward fed this layer an input not aligned with the batch
        self.saw_shared_input = False

    # -- structure -------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        """Ranks ever created (live and pruned)."""
        return int(self.gate.numel())

    @property
    def rank(self) -> int:
        """Live ranks (gate 1)."""
        return int(self.gate.sum().item())

    @property
    def blocks(self) -> list[int]:
        return [int(a.shape[0]) for a in self.lora_A]

    def live(self) -> list[int]:
        return torch.nonzero(self.gate).flatten().tolist()

    def add_ranks(self, count: int) -> list[nn.Parameter]:
        """Append ``count`` live ranks: A Kaiming-uniform, B zero (reading L4), gates 1. Returns
        the new parameters (for a new optimizer group)."""
        weight = self.base.weight
        a = nn.Parameter(lowrank.lora_init_a(weight.new_empty(count, self.base.in_features)))
        b = nn.Parameter(weight.new_zeros(self.base.out_features, count))
        self.lora_A.append(a)
        self.lora_B.append(b)
        self.gate = torch.cat([self.gate, weight.new_ones(count)])
        return [a, b]

    def prune(self, slots: list[int]) -> None:
        with torch.no_grad():
            for slot in slots:
                if self.gate[slot] != 1:
                    raise ValueError(f"rank {slot} is not live")
                self.gate[slot] = 0.0

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.lora_A[0] if len(self.lora_A) == 1 else torch.cat(list(self.lora_A), 0)
        b = self.lora_B[0] if len(self.lora_B) == 1 else torch.cat(list(self.lora_B), 1)
        return a, b

    def delta_weight(self) -> torch.Tensor:
        a, b = self.factors()
        return (b * self.gate) @ a * self.scaling

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        a, b = self.factors()
        h = self.lora_dropout(x).to(a.dtype) @ a.t()  # (..., R)
        if self.sample_gates is None:
            h = h * self.gate
        elif h.shape[0] != self.sample_gates.shape[0]:
            # an input shared by the whole batch (DeBERTa projects its relative-position embeddings
            # with query_proj / key_proj once per forward): only one gate row can apply to it
            g = self.sample_gates
            if not torch.equal(g, g[:1].expand_as(g)):
                raise RuntimeError("per-example gates differ on an input shared by the whole batch")
            self.saw_shared_input = True
            h = h * g[0].to(h.dtype)
        else:
            g = self.sample_gates
            h = h * g.view(g.shape[0], *([1] * (h.dim() - 2)), g.shape[1]).to(h.dtype)
        return result + (h @ b.t() * self.scaling).to(result.dtype)


def inject(model: nn.Module, names: list[str], init_rank: int, alpha: float, dropout: float) -> dict[str, GatedLoRALinear]:
    layers = {}
    for name in names:
        layer = GatedLoRALinear(model.get_submodule(name), init_rank, alpha, dropout)
        lowrank.replace_module(model, name, layer)
        layers[name] = layer
    return layers


def gated_layers(model: nn.Module) -> dict[str, GatedLoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, GatedLoRALinear)}
