"""AdamW (torch's, or the legacy transformers one of the reference codes) and a linear
warm-up/decay schedule that also schedules parameter groups added mid-run.

Rank-growing methods (IncreLoRA, TriAdaptLoRA) add new parameters with
``optimizer.add_param_group``. A stock ``torch.optim.lr_scheduler.LambdaLR`` only knows the groups
it was built with and silently leaves added groups at their initial (peak) learning rate for the
rest of training. ``GrowingLinearSchedule`` gives every added group a schedule and refuses to
step while an optimizer group exists that it was not told about.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from adarank.training.legacy_adamw import LegacyAdamW

NO_DECAY_MARKERS = ("bias", "LayerNorm.weight", "layernorm.weight", "layer_norm.weight", "norm.weight")


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split as transformers' Trainer does: no decay on biases and norms."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if any(m in name for m in NO_DECAY_MARKERS) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


#: ``train.optimizer``: torch's AdamW, or the pre-5 transformers AdamW of both official baseline
#: codes (legacy_adamw.py; docs/baselines.md P2). Both with transformers' Trainer defaults
#: betas (0.9, 0.999), eps 1e-8.
OPTIMIZERS = ("adamw_torch", "adamw_legacy")


def build_optimizer(groups: list[dict], lr: float, name: str = "adamw_torch") -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; train.optimizer must be one of {OPTIMIZERS}")
    if not any(g["params"] for g in groups):
        raise ValueError("the method left no trainable parameters")
    # multi-tensor (foreach) kernels: bit-identical to the per-tensor loops on the CPU
    # (tests/test_legacy_adamw.py, tests/test_optim.py) and one launch per group on a GPU
    if name == "adamw_legacy":
        return LegacyAdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, correct_bias=True, foreach=True)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)


def linear_warmup_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    """transformers' get_linear_schedule_with_warmup factor at a 0-based step."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


class GrowingLinearSchedule:
    """Linear warm-up then linear decay to 0 at ``total_steps``, per parameter group.

    Groups present at construction follow the run's schedule: at optimizer step t (0-based) their
    factor is ``linear_warmup_decay(t, warmup_steps, total_steps)``. A group added later with
    :meth:`add_param_group` follows one of two policies (methods.md A17):

    * ``"restart"`` (the default): IncreLoRA's ``Multi_LambdaLR`` (official ``optimization.py``)
      exactly. The reference adds the group during optimizer step a (growth, then
      ``optimizer.step()``, then ``lr_scheduler.step()``); the scheduler step that follows sees the
      group for the first time, gives it the schedule ``linear_warmup_decay(., warmup_steps,
      total_steps - (a + 1))`` and a counter that starts at -1 and is incremented before use, so
      at step t > a its factor is ``linear_warmup_decay(t - a - 1, warmup_steps, total_steps - a - 1)``:
      0 at a + 1, 1/W at a + 2, ..., 1 at a + 1 + W, then a linear decay that reaches 0 at the
      run's end. At step a itself the reference leaves the group at the optimizer's default LR,
      but its parameters have no gradient at that step (they did not exist, or were frozen, in
      the backward pass), so AdamW skips them; we give the group factor 0 there and refuse
      parameters that already hold a gradient, so the two can never differ.
    * ``"global"``: the group uses the run's factor at the current step.

    Usage matches torch schedulers: call :meth:`step` once after every ``optimizer.step()``.
    """

    POLICIES = ("restart", "global")

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
        self.optimizer = optimizer
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.steps_done = 0  # number of step() calls (= optimizer steps taken)
        # one record per optimizer group, in order: (peak lr, policy, step the group was added)
        self._groups: list[tuple[float, str, int]] = [
            (group["lr"], "global", 0) for group in optimizer.param_groups
        ]
        self._apply()

    def add_param_group(
        self, params: Iterable[nn.Parameter], weight_decay: float, policy: str = "restart", **extra
    ) -> dict:
        """Add ``params`` to the optimizer as a new group scheduled by ``policy``; return the group."""
        if policy not in self.POLICIES:
            raise ValueError(f"unknown new-group lr policy {policy!r}; choose one of {self.POLICIES}")
        self._check_known()
        params = list(params)
        if policy == "restart" and any(p.grad is not None for p in params):
            raise RuntimeError(
                "a parameter joining a new 'restart' group already has a gradient: the reference "
                "(Multi_LambdaLR) would step it at the optimizer's peak LR during the step it joins, "
                "this schedule at LR 0; add parameters before their first backward pass"
            )
        peak = self.optimizer.defaults["lr"]
        self.optimizer.add_param_group({"params": params, "weight_decay": weight_decay, **extra})
        self._groups.append((peak, policy, self.steps_done))
        self._apply()
        return self.optimizer.param_groups[-1]

    def factor(self, group_index: int) -> float:
        peak, policy, added_at = self._groups[group_index]
        if policy == "global":
            return linear_warmup_decay(self.steps_done, self.warmup_steps, self.total_steps)
        if self.steps_done <= added_at:  # the step it joins (no gradient, see the class doc)
            return 0.0
        start = added_at + 1  # the first scheduler step that sees the group (Multi_LambdaLR)
        return linear_warmup_decay(self.steps_done - start, self.warmup_steps, self.total_steps - start)

    def step(self) -> None:
        self._check_known()
        self.steps_done += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"steps_done": self.steps_done, "groups": [list(g) for g in self._groups]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into a scheduler whose optimizer has the same groups."""
        groups = [tuple(g) for g in state["groups"]]
        if len(groups) != len(self.optimizer.param_groups):
            raise ValueError(
                f"the saved schedule has {len(groups)} groups, the optimizer {len(self.optimizer.param_groups)}"
            )
        self.steps_done = int(state["steps_done"])
        self._groups = [(float(peak), str(policy), int(added)) for peak, policy, added in groups]
        self._apply()

    def _apply(self) -> None:
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = self._groups[i][0] * self.factor(i)

    def _check_known(self) -> None:
        if len(self.optimizer.param_groups) != len(self._groups):
            raise RuntimeError(
                f"the optimizer has {len(self.optimizer.param_groups)} parameter groups but the "
                f"scheduler knows {len(self._groups)}: add groups with "
                "GrowingLinearSchedule.add_param_group so that they are scheduled"
            )
