"""IncreLoRA's rank allocator: score smoothing and the fixed-k growth rule (methods.md §1.2, §1.3).

Pure functions so that tests can check them against hand-computed values:

* :func:`ema_update`:   Ī ← β1 Ī + (1-β1) s ;  Ū ← β2 Ū + (1-β2) |s - Ī|   (Ī already updated),
  score = Ī · Ū (official ``update_ipt`` / ``calculate_score``).
* :func:`is_growth_step`: grow at optimizer step t (0-based, before increment) when
  t > init_warmup and t % interval == 0 (and the budget is open).
* :func:`growth_k`:      k = min(top_h, target_total_rank - total_rank)   (mixes modules and ranks,
  as the official code does).
* :func:`select_modules`: every module whose score is >= the k-th largest score grows.
"""

from __future__ import annotations

import torch

from adarank.methods.growth_clock import is_growth_time


def ema_update(
    exp_avg_ipt: torch.Tensor, exp_avg_unc: torch.Tensor, score: torch.Tensor, beta1: float, beta2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One smoothing step; returns the new (Ī, Ū)."""
    new_ipt = beta1 * exp_avg_ipt + (1 - beta1) * score
    new_unc = beta2 * exp_avg_unc + (1 - beta2) * (score - new_ipt).abs()
    return new_ipt, new_unc


def is_growth_step(step: int, init_warmup: int, interval: int) -> bool:
    return is_growth_time(step, init_warmup, interval)


def growth_k(top_h: int, target_total_rank: int, total_rank: int) -> int:
    return min(top_h, target_total_rank - total_rank)


def select_modules(scores: torch.Tensor, k: int) -> tuple[list[int], float]:
    """Indices of the modules with score >= the k-th largest score, and that threshold."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, scores.numel())
    threshold = torch.topk(scores, k).values[-1]
    chosen = torch.nonzero(scores >= threshold).flatten().tolist()
    return chosen, float(threshold)

