"""TriAdaptLoRA's rank-growth schedule as pure functions (paper §III-D, Eq. 12-14, Algorithm 1).

Nothing here touches a model: every function takes plain numbers, so the whole schedule of a run
can be computed (and checked by hand) before training. ``TriAdaptLoRA`` calls the same functions
at run time, so the growth log of a run equals :func:`plan` whenever no two module scores tie at
the threshold (ties grow every tied module, reading A7).

Readings (docs/triadaptlora.md): A1 trigger, A2 t0/T, A3 Eq. 14, A4 rounding, A9 budget,
A10 overshoot / strict budget, A11 fixed-k.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction

from adarank.methods.growth_clock import first_growth_step, is_growth_time

__all__ = ["first_growth_step", "initial_budget", "is_growth_step", "num_to_grow", "plan", "progress", "raw_k"]

MODES = ("fixed", "linear", "nonlinear")
ROUNDINGS = ("ceil", "floor")


def initial_budget(reference_rank: int, init_rank: int, num_modules: int) -> int:
    """Eq. 12 at t = 1: R = R0 - r·M with R0 = r_ref·M (reading A9)."""
    return reference_rank * num_modules - init_rank * num_modules


def is_growth_step(t: int, t0: int, interval: int, remaining: int) -> bool:
    """Algorithm 1 line 4 made periodic (A1): grow at optimizer step t (0-based, before the
    update) when t > t0, t is a multiple of the interval and budget remains (R > 0)."""
    return remaining > 0 and is_growth_time(t, t0, interval)


def progress(t: int, t0: int, total_steps: int) -> Fraction:
    """α(t) = (t - t0) / (T - t0) of Eq. 13, exact (a Fraction, so that ceil/floor of R·α are
    the exact integers the paper means, not float artefacts)."""
    return Fraction(t - t0, total_steps - t0)


def _round(value, rounding: str) -> int:
    if rounding == "ceil":
        return math.ceil(value)
    if rounding == "floor":
        return math.floor(value)
    raise ValueError(f"unknown rounding {rounding!r}; choose one of {ROUNDINGS}")


def raw_k(mode: str, remaining: int, alpha: Fraction, rounding: str, top_h: int | None) -> int:
    """k before clamping.

    * linear (Eq. 13): k = ⌈R·α⌉, computed exactly in rationals;
    * nonlinear (Eq. 14, reading A3): k = ⌈exp(α·ln R)⌉ = ⌈R^α⌉ in float, as the paper writes it;
    * fixed (A11): k = top_h (IncreLoRA's per-task value).
    ``rounding="floor"`` replaces ⌈·⌉ by ⌊·⌋ (the author's code uses int(), A4).
    """
    if mode == "linear":
        return _round(remaining * alpha, rounding)
    if mode == "nonlinear":
        return _round(math.exp(float(alpha) * math.log(remaining)), rounding)
    if mode == "fixed":
        if top_h is None or top_h < 1:
            raise ValueError("threshold=fixed needs the task's top_h >= 1")
        return int(top_h)
    raise ValueError(f"unknown threshold mode {mode!r}; choose one of {MODES}")


def num_to_grow(
    t: int,
    t0: int,
    total_steps: int,
    remaining: int,
    num_modules: int,
    delta_r: int,
    mode: str,
    rounding: str = "ceil",
    top_h: int | None = None,
    strict_budget: bool = False,
) -> int:
    """k(t): how many modules grow at a growth step (Eq. 13/14 and the clamps of §III-D).

    k = min(max(raw_k, 1), M, R) — the lower bound 1 is the paper's; the upper bound M is the
    number of modules; R bounds the fixed mode as IncreLoRA's ``min(top_h, target - total)``
    (A11; for the dynamic modes raw_k <= R already holds since α < 1). With ``strict_budget``
    k is further capped at ⌊R/Δr⌋ so that the total rank never exceeds the budget (A10); it may
    then be 0 (growth stops with R mod Δr ranks unused).
    """
    alpha = progress(t, t0, total_steps)
    k = min(max(raw_k(mode, remaining, alpha, rounding, top_h), 1), num_modules, remaining)
    if strict_budget:
        k = min(k, remaining // delta_r)
    return k


@dataclass(frozen=True)
class PlannedEvent:
    step: int
    alpha: float
    budget_before: int
    k: int
    budget_after: int
    total_rank: int  # total rank of all modules after the event

    def as_dict(self) -> dict:
        return asdict(self)


def plan(
    total_steps: int,
    t0: int,
    interval: int,
    num_modules: int,
    reference_rank: int,
    init_rank: int,
    delta_r: int,
    mode: str,
    rounding: str = "ceil",
    top_h: int | None = None,
    strict_budget: bool = False,
) -> list[PlannedEvent]:
    """The whole growth schedule of a run of ``total_steps`` optimizer steps (t = 0..T-1),
    assuming exactly k modules grow at each event (Eq. 12: R ← R - Δr·k)."""
    remaining = initial_budget(reference_rank, init_rank, num_modules)
    total = init_rank * num_modules
    events = []
    for t in range(first_growth_step(t0, interval), total_steps, interval):
        if not is_growth_step(t, t0, interval, remaining):
            break
        k = num_to_grow(
            t, t0, total_steps, remaining, num_modules, delta_r, mode, rounding, top_h, strict_budget
        )
        if k == 0:  # strict budget with R < Δr: nothing more can grow
            break
        before = remaining
        remaining -= delta_r * k
        total += delta_r * k
        events.append(
            PlannedEvent(t, float(progress(t, t0, total_steps)), before, k, remaining, total)
        )
    return events
