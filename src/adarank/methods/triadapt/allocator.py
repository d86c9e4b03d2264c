"""Importance scores (Eq. 11) and one growth event (Algorithm 1 lines 4-7) over TriAdapt layers.

The allocator owns the budget R (Eq. 12) and the reference values of Eq. 11. It does no work
between growth events: :meth:`RankAllocator.wants` is an integer test, and scores are computed
only at a growth step (no gradients needed, no per-step statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from adarank.methods.triadapt.layer import TriAdaptLinear
from adarank.methods.triadapt.schedule import (
    initial_budget,
    is_growth_step,
    num_to_grow,
    progress,
)

NORMS = ("r", "sqrt_r", "none")


def normaliser(rank: int, norm: str) -> float:
    """The denominator of Eq. 11: r (paper default), √r or 1 (Table III's three schemes)."""
    if norm == "r":
        return float(rank)
    if norm == "sqrt_r":
        return math.sqrt(rank)
    if norm == "none":
        return 1.0
    raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")


@torch.no_grad()
def normalised_energy(layer: TriAdaptLinear, norm: str) -> float:
    """‖L + U‖_F / r of a module at its current rank (each term of Eq. 11)."""
    return float(torch.linalg.matrix_norm(layer.factor_d().double())) / normaliser(layer.rank, norm)


def importance_scores(current: list[float], previous: list[float]) -> list[float]:
    """Eq. 11: S_m = current normalised energy minus the one stored at the previous growth event
    (first stored at initialisation; reading A5). Raw signed values are ranked (A7)."""
    return [c - p for c, p in zip(current, previous)]


def select_modules(scores: list[float], k: int, strict: bool) -> tuple[list[int], float]:
    """Modules whose score is >= S^θ, the k-th largest score (§III-D "Rank Growth"); ties at
    the threshold all grow (A7) unless ``strict`` (then exactly the first k in a stable order).
    Returns (indices in module order, threshold)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: earlier module first
    threshold = scores[order[k - 1]]
    if strict:
        return sorted(order[:k]), threshold
    return [i for i, s in enumerate(scores) if s >= threshold], threshold


def grow_together(layers: list[TriAdaptLinear], size: int) -> list[nn.Parameter]:
    """Grow each layer by ``size`` ranks as one event (Eq. 6-9): in their shared store if they
    have one, else block by block; same random draws in the same order either way."""
    store = layers[0].store if layers else None
    if store is not None:
        return store.grow(layers, size)
    return [param for layer in layers for param in layer.grow(size)]


@dataclass
class RankAllocator:
    """Budgeted rank growth over ``layers`` (name -> TriAdaptLinear, in model order)."""

    layers: dict[str, TriAdaptLinear]
    reference_rank: int
    init_rank: int
    delta_r: int
    t0: int
    interval: int
    mode: str
    rounding: str = "ceil"
    norm: str = "r"
    top_h: int | None = None
    strict_budget: bool = False
    remaining: int = field(init=False)
    previous: list[float] = field(init=False)
    exhausted: bool = field(init=False, default=False)

    def __post_init__(self):
        self.names = list(self.layers)
        self.remaining = initial_budget(self.reference_rank, self.init_rank, len(self.names))
        self.previous = self._energies()  # Eq. 11's first reference value, at initialisation

    def _energies(self) -> list[float]:
        return [normalised_energy(self.layers[name], self.norm) for name in self.names]

    def total_rank(self) -> int:
        return sum(layer.rank for layer in self.layers.values())

    def wants(self, t: int) -> bool:
        """Whether optimizer step t is a growth step (A1)."""
        return not self.exhausted and is_growth_step(t, self.t0, self.interval, self.remaining)

    def grow(self, t: int, total_steps: int) -> tuple[dict | None, list[nn.Parameter]]:
        """One growth event at step t: score (Eq. 11), k (Eq. 13/14), grow (Eq. 6-9), R (Eq. 12).

        Returns the growth-log entry (None when a strict budget leaves nothing to grow) and the
        new parameters of all grown modules.
        """
        current = self._energies()
        scores = importance_scores(current, self.previous)
        self.previous = current  # refreshed for every module, before the growth (A5)
        k = num_to_grow(
            t,
            self.t0,
            total_steps,
            self.remaining,
            len(self.names),
            self.delta_r,
            self.mode,
            self.rounding,
            self.top_h,
            self.strict_budget,
        )
        if k == 0:
            self.exhausted = True
            return None, []
        chosen, threshold = select_modules(scores, k, self.strict_budget)
        new_params = grow_together([self.layers[self.names[i]] for i in chosen], self.delta_r)
        before = self.remaining
        self.remaining -= self.delta_r * len(chosen)
        event = {
            "step": t,
            "k": k,
            "threshold": threshold,
            "modules": [self.names[i] for i in chosen],
            "grown": len(chosen),
            "total_rank": self.total_rank(),
            "alpha": float(progress(t, self.t0, total_steps)),
            "budget_before": before,
            "budget_after": self.remaining,
        }
        return event, new_params
