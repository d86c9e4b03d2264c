"""IncreLoRA's adapted linear layer and its orthogonal regulariser (methods.md §1.1, §1.2, §1.5).

A wrapped frozen ``nn.Linear`` computes

    y = W0 x + b + dropout(x) ΔWᵀ,     ΔW = B (A ⊙ E) · alpha / (ranknum + 1e-5)

with ``A`` (R x in), ``E`` (R x 1), ``B`` (out x R) the concatenations of blocks of ranks. The
official code keeps every rank as its own parameter, so that ranks can be appended without
touching the optimizer state of the existing ones. Here (``rank_blocks``, the default) the Δr
ranks a module receives at one growth are one block, one parameter each for their A rows, E
entries and B columns: they are drawn, created, activated and handed to the optimizer together,
so AdamW (element-wise, one step count per parameter) updates every entry as it would in the
official one-parameter-per-rank layout, which ``rank_blocks = False`` keeps (the equivalence
test's oracle; docs/baselines.md C17). The blocks only cut the number of tensors that AdamW,
gradient clipping and ``zero_grad`` visit every step by a factor Δr. ``ranknum`` counts the
*activated* ranks; the trailing "reserve" ranks of advance learning take part in the forward pass
with E frozen at 1e-5 but are not counted.

Importance (official ``SVDLinear.backward_hook``): for every backward pass while scoring is on,

    s = Σ_ij |ΔW_ij · ∂L/∂ΔW_ij| / sqrt(out · in)        (score_norm="sqrt_numel", the official code)
    s = mean_ij |ΔW_ij · ∂L/∂ΔW_ij|                      (score_norm="numel")

where ∂L/∂ΔW = Gᵀ dropout(x), G = ∂L/∂y over all tokens. The official code materialises the dense
ΔW in the forward pass to hook it; we keep the low-rank forward and form Gᵀ dropout(x) in a hook
on the adapter output, which is the same quantity (and costs nothing once scoring stops).

A module called twice in one forward pass (DeBERTaV3's ``key_proj``: content and positional key;
``query_proj`` too when the positional query goes through the adapter, model option
``positional_query_adapter``) gets one hook per call; each overwrites ``score`` and the content
call's runs last, so the score is that of the content call's partial gradient only, as in the
official code, whose hook on ``loraW`` also fires once per call (docs/baselines.md C3).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

RESERVE_E = 1e-5  # E value of the advance-learning reserve ranks (official add_reserve_param)
INIT_STD = 0.02  # A, B ~ N(0, 0.02^2) (official reset_parameters / add_reserve_param)
SCORE_NORMS = ("sqrt_numel", "numel")
#: default of ``IncreLinear.fast``: in-place scoring (bit-identical to the plain form, which
#: ``fast=False`` runs and tests/test_increlora_fast.py compares against)
FAST = True
#: default of ``IncreLinear.rank_blocks``: one parameter per growth of a module instead of one
#: per rank (the same updates; tests/test_increlora_fast.py)
RANK_BLOCKS = True


class IncreLinear(nn.Module):
    """A frozen linear layer plus IncreLoRA's growable low-rank update (see the module docstring)."""

    def __init__(
        self,
        base: nn.Linear,
        init_rank: int,
        alpha: float,
        dropout: float = 0.0,
        score_norm: str = "sqrt_numel",
    ):
        super().__init__()
        if score_norm not in SCORE_NORMS:
            raise ValueError(f"score_norm must be one of {SCORE_NORMS}, not {score_norm!r}")
        self.base = base
        for param in base.parameters():
            param.requires_grad = False
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.scaling = float(alpha)
        self.score_norm = score_norm
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        weight = base.weight
        self.lora_A = nn.ParameterList(
            [nn.Parameter(weight.new_empty(init_rank, self.in_features).normal_(0.0, INIT_STD))]
        )
        self.lora_E = nn.ParameterList([nn.Parameter(weight.new_zeros(init_rank, 1))])
        self.lora_B = nn.ParameterList(
            [nn.Parameter(weight.new_empty(self.out_features, init_rank).normal_(0.0, INIT_STD))]
        )
        self.register_buffer("ranknum", weight.new_tensor(float(init_rank)))
        self.num_reserve = 0  # trailing ranks that are reserve (not counted in ranknum)
        #: compute the importance score in backward passes (off once the budget is spent)
        self.scoring = True
        #: importance of the last backward pass (0-dim tensor; None before the first one)
        self.score: torch.Tensor | None = None
        self.hook_calls = 0
        self.hook_seconds = 0.0
        #: False: the straightforward scoring code (the equivalence tests' oracle)
        self.fast = FAST
        #: True: each add_reserve call appends one block of ranks; False: one parameter per rank
        self.rank_blocks = RANK_BLOCKS

    # -- parameters ------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """Activated ranks (reserve excluded)."""
        return int(round(float(self.ranknum)))

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A, E, B) concatenated over every block of ranks, reserve included."""
        return torch.cat(list(self.lora_A), 0), torch.cat(list(self.lora_E), 0), torch.cat(list(self.lora_B), 1)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = B (A ⊙ E) · alpha / (ranknum + 1e-5), reserve included (official ``loraW``)."""
        a, e, b = self.matrices()
        return b @ (a * e) * (self.scaling / (self.ranknum + 1e-5))

    def add_reserve(self, count: int) -> list[nn.Parameter]:
        """Append ``count`` reserve ranks: E frozen at 1e-5, A and B ~ N(0, 0.02) trainable, drawn
        rank by rank (A row, then B column) as the official ``add_reserve_param`` draws them; one
        block of ``count`` ranks (``rank_blocks``) or one parameter per rank.

        Returns the new trainable parameters (A and B) for the optimizer.
        """
        weight = self.lora_A[0]
        rows, columns = [], []
        for _ in range(count):
            rows.append(weight.new_empty(1, self.in_features).normal_(0.0, INIT_STD))
            columns.append(weight.new_empty(self.out_features, 1).normal_(0.0, INIT_STD))
        pieces = [(torch.cat(rows, 0), torch.cat(columns, 1))] if self.rank_blocks else list(zip(rows, columns))
        new = []
        for a, b in pieces:
            e = nn.Parameter(weight.new_full((a.shape[0], 1), RESERVE_E), requires_grad=False)
            a, b = nn.Parameter(a), nn.Parameter(b)
            self.lora_E.append(e)
            self.lora_A.append(a)
            self.lora_B.append(b)
            new += [a, b]
        self.num_reserve += count
        return new

    def _reserve_e(self) -> list[nn.Parameter]:
        """The trailing E parameters that hold the ``num_reserve`` reserve ranks."""
        blocks, ranks = [], 0
        for e in reversed(list(self.lora_E)):
            if ranks == self.num_reserve:
                break
            blocks.insert(0, e)
            ranks += e.shape[0]
        return blocks

    def activate_reserve(self) -> list[nn.Parameter]:
        """Turn every reserve rank into an active one (official ``increase_to_target_rank``):
        ranknum grows by the reserve size and the reserve E blocks become trainable (they keep
        their value 1e-5). Returns those E blocks, which are new to the optimizer."""
        count = self.num_reserve
        if count == 0:
            return []
        activated = self._reserve_e()
        for e in activated:
            e.requires_grad = True
        self.ranknum += count
        self.num_reserve = 0
        return activated

    def zero_reserve(self) -> None:
        """Set the reserve E blocks to 0 (official behaviour when the budget is exactly met)."""
        with torch.no_grad():
            for e in self._reserve_e():
                e.zero_()

    # -- forward / scoring -----------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        a, e, b = self.matrices()
        kind = x.device.type
        # the training precision: a's dtype, or autocast's (the cast its matmul would make anyway),
        # which the score hook's GEMM then uses too
        xd = self.lora_dropout(x).to(torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else a.dtype)
        update = (xd @ (a * e).t()) @ b.t() * (self.scaling / (self.ranknum + 1e-5))
        if self.scoring and self.training and update.requires_grad:
            update.register_hook(self._make_score_hook(xd))
        return result + update.to(result.dtype)

    def _make_score_hook(self, xd: torch.Tensor):
        """The importance hook of one forward call. ``xd`` is kept as the forward pass had it:
        in the training precision (bf16 under bf16 autocast, no fp32 copy), and the ∂L/∂ΔW GEMM
        runs in that precision too; the score itself is summed in fp32 (:func:`importance`)."""

        def hook(grad_out: torch.Tensor) -> None:
            start = time.perf_counter()
            with torch.no_grad():
                g = grad_out.reshape(-1, self.out_features).to(xd.dtype)
                grad_delta = g.t() @ xd.reshape(-1, self.in_features)  # ∂L/∂ΔW (out x in)
                if self.fast:
                    self.score = importance_inplace(self._delta_weight_fresh(), grad_delta, self.score_norm)
                else:  # the straightforward form, kept as the test oracle
                    self.score = importance(self.delta_weight(), grad_delta, self.score_norm)
            self.hook_calls += 1
            self.hook_seconds += time.perf_counter() - start

        return hook

    def _delta_weight_fresh(self) -> torch.Tensor:
        """:meth:`delta_weight` with the scaling applied in place (one out x in buffer, not two);
        bit-identical to it (the same matmul, then the same multiplication)."""
        a, e, b = self.matrices()
        return torch.mm(b, a * e).mul_(self.scaling / (self.ranknum + 1e-5))


def importance(delta: torch.Tensor, grad_delta: torch.Tensor, score_norm: str = "sqrt_numel") -> torch.Tensor:
    """Σ|ΔW ⊙ ∂L/∂ΔW| / sqrt(numel) (official) or its mean over the entries (``numel``)."""
    total = (delta.detach().float() * grad_delta.float()).abs().sum()
    n = delta.numel()
    return total / (math.sqrt(n) if score_norm == "sqrt_numel" else n)


def importance_inplace(delta: torch.Tensor, grad_delta: torch.Tensor, score_norm: str = "sqrt_numel") -> torch.Tensor:
    """:func:`importance` without temporaries: ``grad_delta`` (a fresh buffer the caller gives
    up) receives ΔW ⊙ ∂L/∂ΔW and its absolute value in place. The same element-wise operations
    in the same order as :func:`importance`, hence the same value to the last bit; the
    scoring hook runs at every step while the budget is open, on every adapted module, so the
    three out x in temporaries of the plain form are a measurable share of IncreLoRA's step."""
    n = delta.numel()
    if delta.dtype != torch.float32 or grad_delta.dtype != torch.float32:
        return importance(delta, grad_delta, score_norm)
    total = grad_delta.mul_(delta.detach()).abs_().sum()
    return total / (math.sqrt(n) if score_norm == "sqrt_numel" else n)
