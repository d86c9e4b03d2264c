"""The fast IncreLoRA paths against the straightforward code kept as the oracle, over a few hundred
optimizer steps with growth events and the budget closing:

* in-place importance scoring and AdamW's foreach kernels (``IncreLinear.fast = False`` is the
  oracle): same losses, same parameters, same growth log, bit for bit;
* one parameter block per growth of a module (``rank_blocks``) against the official
  one-parameter-per-rank layout: the same matrices and Adam moments entry by entry, bit for bit
  while gradient clipping leaves the gradients alone; within rounding when it rescales them (the
  global norm then sums the per-tensor norms in another grouping)."""

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


def train(fast: bool, steps: int = 300, score_norm: str = "sqrt_numel", rank_blocks: bool = True, delta_r: int = 1,
          max_grad_norm: float = 1.0):
    torch.manual_seed(0)
    task = OmegaConf.create(
        dict(reference_rank=5, incre_rank_num=delta_r, top_h=2, init_warmup=20, incre_interval=20, beta1=0.85,
             beta2=0.85, reg_orth_coef=0.1, alpha=8, lora_dropout=0.0, weight_decay=0.01, warmup_steps=10)
    )
    method = IncreLoRA(OmegaConf.create({**METHOD_CFG, "score_norm": score_norm}), task, None, MODEL_CFG)
    method.fast = fast
    method.rank_blocks = rank_blocks
    model = method.prepare(ToyStack(4, 12, 3))
    assert all(layer.fast is fast for layer in method.layers.values())
    optimizer, losses = train_toy(method, model, steps, 12, max_grad_norm=max_grad_norm)
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


def moments(layer, optimizer) -> tuple[torch.Tensor, ...]:
    """A layer's (A, E, B) and AdamW's first and second moments of each, concatenated over its
    parameters (a frozen reserve E has no moments: zeros), whatever the layout."""
    def cat(params, dim, key=None):
        parts = [p.detach() if key is None else optimizer.state[p][key] if p in optimizer.state else torch.zeros_like(p)
                 for p in params]
        return torch.cat(parts, dim)

    return tuple(cat(params, dim, key) for key in (None, "exp_avg", "exp_avg_sq")
                 for params, dim in ((layer.lora_A, 0), (layer.lora_E, 0), (layer.lora_B, 1)))


@pytest.mark.parametrize("max_grad_norm", [math.inf, 1.0])
def test_one_block_per_growth_updates_every_rank_as_one_parameter_per_rank_does(max_grad_norm):
    runs = {blocks: train(fast=True, rank_blocks=blocks, delta_r=3, max_grad_norm=max_grad_norm)
            for blocks in (False, True)}
    (per_rank, _, rank_losses, rank_opt), (blocked, _, block_losses, block_opt) = runs[False], runs[True]
    assert len(per_rank.growth_log) >= 3 and not per_rank.budget_open
    assert blocked.growth_log == per_rank.growth_log
    layer_pairs = list(zip(per_rank.layers.values(), blocked.layers.values()))
    # Δr = 3: three parameters per growth and matrix in the official layout, one in blocks
    assert sum(len(a.lora_A) for a, _ in layer_pairs) == sum(1 + 3 * len(b.lora_A) - 3 for _, b in layer_pairs)
    count = lambda opt: sum(len(g["params"]) for g in opt.param_groups)  # noqa: E731
    assert count(block_opt) < count(rank_opt) / 2
    for a, b in layer_pairs:
        assert a.rank == b.rank and a.num_reserve == b.num_reserve
        for x, y in zip(moments(a, rank_opt), moments(b, block_opt)):
            if max_grad_norm == math.inf:  # clipping off: the same arithmetic entry by entry
                assert torch.equal(x, y)
            else:
                torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    if max_grad_norm == math.inf:
        assert block_losses == rank_losses
    else:
        assert block_losses == pytest.approx(rank_losses, rel=1e-4)
