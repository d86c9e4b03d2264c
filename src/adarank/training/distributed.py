"""Rank-growing methods (IncreLoRA, TriAdaptLoRA) are single-process: the shared guard.

DistributedDataParallel registers its parameters once, at wrap time, and all-reduces exactly
those; parameters added by a growth would never be synchronised across processes (and the
optimizers of different ranks would diverge), so growth under DDP is refused up front.
"""

from __future__ import annotations

import os

import torch


def world_size() -> int:
    """Processes in this run: the launcher's WORLD_SIZE or the initialised process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = max(world, torch.distributed.get_world_size())
    return world


def refuse_multiprocess(method: str) -> None:
    """Raise RuntimeError when ``method`` (which adds parameters mid-run) runs multi-process."""
    world = world_size()
    if world > 1:
        raise RuntimeError(
            f"method={method} adds parameters during training and cannot run under multi-process "
            f"data parallel (world size {world}); run it as a single process (one GPU)"
        )
