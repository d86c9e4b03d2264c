"""What the TriAdapt layer, its block store and the fused factors all need, below the three of
them (so that none of them imports another in a circle): ε of Eq. 5 and the tuple of a layer's
block tensors."""

from __future__ import annotations

from typing import NamedTuple

import torch

EPS = 1e-5  # ε of Eq. 5 (reading A14)


class Blocks(NamedTuple):
    """A layer's block tensors in block order: A rows, B columns, packed L and packed U values."""

    a: list[torch.Tensor]
    b: list[torch.Tensor]
    lower: list[torch.Tensor]
    upper: list[torch.Tensor]
