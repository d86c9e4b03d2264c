"""The orthogonal regulariser that IncreLoRA and AdaLoRA share (AdaLoRA's official code takes it
from its P/Q factors, IncreLoRA's from A/B; both in the same unsquared Gram form)."""

from __future__ import annotations

from typing import Iterable

import torch


def gram_orth_penalty(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor | None:
    """IncreLoRA/AdaLoRA orthogonal regulariser in its unsquared Gram form (reading A15):

        R = mean over the 2M matrices of ||A Aᵀ - I||_F and ||Bᵀ B - I||_F,

    for pairs (A: r x in, B: out x r). Returns None when there are no pairs.

    Computed in fp32 under any autocast, as TriAdaptLoRA's Eq. 10 (methods/triadapt/method.py):
    under bf16 the Gram matrices of near-orthonormal factors lose the small deviations the
    penalty measures (up to 2 % off), so the three methods treat it alike.
    """
    pairs = list(pairs)
    if not pairs:
        return None
    total, count = None, 0
    with torch.autocast(pairs[0][0].device.type, enabled=False):
        for a, b in pairs:
            a, b = a.float(), b.float()
            for gram in (a @ a.t(), b.t() @ b):
                eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
                term = torch.linalg.matrix_norm(gram - eye, ord="fro")
                total = term if total is None else total + term
                count += 1
    return total / count
