"""The AdamW both official baseline codes train with: transformers' old ``AdamW`` with
``correct_bias=True`` (``transformers.optimization.AdamW``, removed in transformers 5), written
here from its definition (methods.md, issue 13 §3).

For a parameter p with gradient g, at its k-th update (k counted per parameter):

    m ← β1·m + (1 − β1)·g
    v ← β2·v + (1 − β2)·g²
    step_size = lr · sqrt(1 − β2^k) / (1 − β1^k)        (lr when correct_bias is False)
    p ← p − step_size · m / (sqrt(v) + eps)
    p ← p − lr · weight_decay · p                       (decoupled decay of the *updated* p)

``torch.optim.AdamW`` differs twice: it adds eps to sqrt(v / (1 − β2^k)), i.e. after the bias
correction (here the effective eps is eps / sqrt(1 − β2^k), 31.6·eps at k = 1), and it decays p
before the Adam update (p ← p·(1 − lr·wd), then the step). With eps = 0 and no weight decay the
two are the same update.

Parameters without a gradient are skipped (no state, no decay), as in both. By default a group
runs the element-wise operations through torch's ``_foreach`` (multi-tensor) kernels, bucketed
by k: bit-identical to the per-tensor loop (tests/test_legacy_adamw.py), which ``foreach=False``
keeps as the oracle. k is a Python int per parameter (no tensor to increment and read back at
every step); checkpoints written when it was a 0-dim tensor load and continue alike.
"""

from __future__ import annotations

import math

import torch


class LegacyAdamW(torch.optim.Optimizer):
    """transformers' pre-5 ``AdamW`` (see the module docstring); defaults as that class."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        foreach: bool = True,
    ):
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}: must be >= 0")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}: each must lie in [0, 1)")
        if eps < 0.0:
            raise ValueError(f"invalid eps {eps}: must be >= 0")
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias, foreach=foreach
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            buckets: dict[int, list[torch.Tensor]] = {}
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("LegacyAdamW does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] = int(state["step"]) + 1  # int(): a tensor of an older checkpoint
                buckets.setdefault(state["step"], []).append(p)
            for k, bucket in buckets.items():
                if group["foreach"]:
                    self._update_foreach(group, bucket, k)
                else:
                    for p in bucket:
                        self._update_one(group, p, k)
        return loss

    @staticmethod
    def _step_size(group: dict, k: int) -> float:
        beta1, beta2 = group["betas"]
        if not group["correct_bias"]:
            return group["lr"]
        return group["lr"] * math.sqrt(1.0 - beta2**k) / (1.0 - beta1**k)

    def _update_one(self, group: dict, p: torch.Tensor, k: int) -> None:
        beta1, beta2 = group["betas"]
        state = self.state[p]
        grad, exp_avg, exp_avg_sq = p.grad, state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = exp_avg_sq.sqrt().add_(group["eps"])
        p.addcdiv_(exp_avg, denom, value=-self._step_size(group, k))
        if group["weight_decay"] > 0.0:
            p.add_(p, alpha=-group["lr"] * group["weight_decay"])

    def _update_foreach(self, group: dict, params: list[torch.Tensor], k: int) -> None:
        beta1, beta2 = group["betas"]
        grads = [p.grad for p in params]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denoms, group["eps"])
        torch._foreach_addcdiv_(params, exp_avgs, denoms, value=-self._step_size(group, k))
        if group["weight_decay"] > 0.0:
            torch._foreach_add_(params, params, alpha=-group["lr"] * group["weight_decay"])
