"""When a growing method (IncreLoRA, TriAdaptLoRA) may grow: at optimizer step t (0-based, before
the update) with t > t0 and t a multiple of the interval — IncreLoRA's official trigger, which
TriAdaptLoRA's Algorithm 1 follows (reading A1). Shared by both methods and the scaled schedule."""

from __future__ import annotations


def is_growth_time(t: int, t0: int, interval: int) -> bool:
    return t > t0 and t % interval == 0


def first_growth_step(t0: int, interval: int) -> int:
    """The first optimizer step that can trigger a growth."""
    return (t0 // interval + 1) * interval


def count_growth_steps(total_steps: int, t0: int, interval: int) -> int:
    """How many of the steps t = 0..T-1 can trigger a growth."""
    return len(range(first_growth_step(t0, interval), total_steps, interval))
