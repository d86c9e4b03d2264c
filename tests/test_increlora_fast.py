"""The fast IncreLoRA paths (in-place importance scoring, AdamW foreach over the rank-1 blocks) against the straightforward code kept
as the oracle (``IncreLinear.fast = False``): same losses, same parameters, same growth log,
bit for bit, over a few hundred optimizer steps with growth events and the budget closing."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from adarank.methods.increlora import IncreLoRA
from adarank.methods.increlora.layer import importance, importance_inplace
from tests.conftest import assert_same_training_state
from tests.toys import ToyStack, train_toy

METHOD_CFG = {"name": "increlora", "init_rank": 1, "score_norm": "sqrt_numel", "new_group_lr": "restart"}
MODEL_CFG = OmegaConf.create({"target_regex": r"layers\.\d+", "head_modules": ["head"]})


def train(fast: bool, steps: int = 300, score_norm: str = "sqrt_numel"):
    torch.manual_seed(0)
    task = OmegaConf.create(
        dict(reference_rank=5, incre_rank_num=1, top_h=2, init_warmup=20, incre_interval=20, beta1=0.85,
             beta2=0.85, reg_orth_coef=0.1, alpha=8, lora_dropout=0.0, weight_decay=0.01, warmup_steps=10)
    )
    method = IncreLoRA(OmegaConf.create({**METHOD_CFG, "score_norm": score_norm}), task, None, MODEL_CFG)
    method.fast = fast
    model = method.prepare(ToyStack(4, 12, 3))
    assert all(layer.fast is fast for layer in method.layers.values())
    optimizer, losses = train_toy(method, model, steps, 12, max_grad_norm=1.0)
    assert all(bool(g.get("foreach")) is fast for g in optimizer.param_groups)
    return method, model, losses, optimizer


@pytest.mark.parametrize("score_norm", ["sqrt_numel", "numel"])
def test_fast_scoring_gives_the_same_run_bit_for_bit(score_norm):
    slow_method, slow_model, slow_losses, slow_opt = train(fast=False, score_norm=score_norm)
    fast_method, fast_model, fast_losses, fast_opt = train(fast=True, score_norm=score_norm)
    assert len(slow_method.growth_log) >= 5 and not slow_method.budget_open  # growth, then closed
    assert fast_losses == slow_losses
    assert fast_method.growth_log == slow_method.growth_log
    assert_same_training_state(slow_model, slow_opt, fast_model, fast_opt)
    assert torch.equal(slow_method.exp_avg_ipt, fast_method.exp_avg_ipt)


def test_inplace_importance_equals_the_plain_formula():
    gen = torch.Generator().manual_seed(3)
    for shape in [(7, 5), (64, 48), (33, 129)]:
        delta, grad = torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)
        for norm in ("sqrt_numel", "numel"):
            expected = importance(delta, grad, norm)
            assert torch.equal(importance_inplace(delta, grad.clone(), norm), expected)
    n = 7 * 5
    assert float(importance(torch.ones(7, 5), -torch.ones(7, 5))) == pytest.approx(n / math.sqrt(n))
