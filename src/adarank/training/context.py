"""What a method sees at an optimizer step: below both the methods (methods/base.py re-exports
it) and the training loop that builds it, so that no import runs upward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class StepContext:
    """What a method sees at an optimizer step."""

    step: int  # optimizer steps already taken (0 at the first step)
    total_steps: int  # optimizer steps of the whole run (T)
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # adarank.training.optim.GrowingLinearSchedule
