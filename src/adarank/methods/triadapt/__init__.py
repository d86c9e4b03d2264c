"""TriAdaptLoRA: triangular split B(L+U)A, Frobenius-norm importance, budgeted rank growth.

Modules: ``blocks`` (what the next three share), ``layer`` (Eq. 4-9), ``store`` (the blocks of each growth event in a few flat
parameters), ``schedule`` (pure Eq. 12-14 / Algorithm 1 schedule), ``allocator``
(Eq. 11 and one growth event), ``io`` (inject / save / load / merge), ``method`` (the harness hook).
"""

from adarank.methods.triadapt.layer import TriAdaptLinear
from adarank.methods.triadapt.method import TriAdaptLoRA

__all__ = ["TriAdaptLinear", "TriAdaptLoRA"]
