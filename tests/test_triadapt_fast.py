"""TriAdaptLoRA's fast paths against the straightforward code kept as the oracle
(``TriAdaptLoRA.fast = False``): the regulariser reusing the forward pass's concatenated A and B,
and AdamW's foreach kernels over the block tensors. Same losses, parameters, growth log and
optimizer state, bit for bit, over a few hundred optimizer steps with growth events."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from adarank.training.loop import optimization_step
from adarank.methods.triadapt import TriAdaptLoRA
from adarank.training.optim import GrowingLinearSchedule, build_optimizer
from tests.conftest import assert_same_training_state

H = 12
MODEL = {"target_regex": r"encoder\.layer\.\d+\.(query|value)", "head_modules": ["classifier"]}




class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Linear(H, H)
        self.value = nn.Linear(H, H)
        self.norm = nn.LayerNorm(H)

    def forward(self, x):
        return self.norm(x + torch.tanh(self.query(x)) * self.value(x))


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([Block() for _ in range(3)])
        self.classifier = nn.Linear(H, 3)

    def forward(self, x):
        for block in self.encoder.layer:
            x = block(x)
        return self.classifier(x.mean(1))


def train(fast: bool, mode: str, steps: int = 300):
    torch.manual_seed(0)
    task = OmegaConf.create(
        dict(reference_rank=6, incre_rank_num=1, incre_interval=15, init_warmup=20, alpha=16, lora_dropout=0.0,
             reg_orth_coef=0.1, top_h=2, weight_decay=0.01, warmup_steps=10)
    )
    method_cfg = OmegaConf.create({"name": "triadapt"})
    method = TriAdaptLoRA(method_cfg, task, OmegaConf.create({"name": mode}), OmegaConf.create(MODEL))
    method.fast = fast
    model = method.prepare(Toy())
    method.set_total_steps(steps)
    optimizer = build_optimizer(method.optimizer_groups(model, 0.01), 5e-3)
    scheduler = GrowingLinearSchedule(optimizer, 10, steps)
    data = torch.Generator().manual_seed(1)
    losses = []
    for step in range(steps):  # the training loop's own step
        x = torch.randn(6, 5, H, generator=data)
        y = torch.randint(0, 3, (6,), generator=data)
        loss = nn.functional.cross_entropy(model(x), y) + method.extra_loss(model)
        optimization_step(method, model, optimizer, scheduler, loss, step, steps, 1.0)
        losses.append(loss.item())
    return method, model, optimizer, losses


@pytest.mark.parametrize("mode", ["fixed", "linear", "nonlinear"])
def test_fast_paths_give_the_same_run_bit_for_bit(mode):
    slow_method, slow_model, slow_opt, slow_losses = train(False, mode)
    fast_method, fast_model, fast_opt, fast_losses = train(True, mode)
    assert len(slow_method.growth_log) >= 4  # growth events happened among the 300 steps
    assert all(not g.get("foreach") for g in slow_opt.param_groups)
    assert all(g.get("foreach") for g in fast_opt.param_groups)
    assert fast_losses == slow_losses
    assert fast_method.growth_log == slow_method.growth_log
    assert_same_training_state(slow_model, slow_opt, fast_model, fast_opt)


def test_regulariser_recomputes_when_the_factors_changed_since_the_forward_pass():
    method, model, optimizer, _ = train(True, "linear", steps=40)
    layer = next(iter(method.layers.values()))
    x = torch.randn(2, 5, H)
    model(x)  # caches A and B ...
    with torch.no_grad():
        layer.tri_A[0].add_(1.0)  # ... which an in-place change makes stale
    a_term, b_term = layer.orthogonality()
    a = torch.cat(list(layer.tri_A))
    expected = torch.linalg.matrix_norm(a @ a.T - torch.eye(layer.rank))
    assert torch.equal(a_term, expected)
    model(x)
    layer.grow(1)  # a new block also invalidates
    a_term, _ = layer.orthogonality()
    a = torch.cat(list(layer.tri_A))
    assert torch.equal(a_term, torch.linalg.matrix_norm(a @ a.T - torch.eye(layer.rank)))
