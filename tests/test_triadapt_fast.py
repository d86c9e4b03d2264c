"""TriAdaptLoRA's fast paths against the straightforward code kept as the oracle
(``TriAdaptLoRA.fast = False``): blocks stored per growth event in a shared BlockStore, every
layer's factors and the regulariser assembled once per forward pass for all modules (fused.py),
and AdamW's foreach kernels.

The bound (docs/triadaptlora.md, "Fast path"): the fused forward multiplies x (sDA)ᵀ where the
oracle multiplies (x Aᵀ)(sD)ᵀ, and the regulariser sums its norms in another order, so the two
agree to rounding, not bit for bit: over a few hundred optimizer steps with growth events the
losses agree to a relative 1e-6, the growth events (steps, modules) are the same and the
parameters agree to rtol 1e-4 / atol 1e-6."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from adarank.methods.triadapt import TriAdaptLoRA
from adarank.methods.triadapt.store import ATTRIBUTE
from tests.toys import ToyEncoder, train_toy

H = 12
MODEL = {"target_regex": r"encoder\.layer\.\d+\.(query|value)", "head_modules": ["classifier"]}


def train(fast: bool, mode: str, steps: int = 300, max_grad_norm: float = 1e9):
    torch.manual_seed(0)
    task = OmegaConf.create(
        dict(reference_rank=6, incre_rank_num=1, incre_interval=15, init_warmup=20, alpha=16, lora_dropout=0.0,
             reg_orth_coef=0.1, top_h=2, weight_decay=0.01, warmup_steps=10)
    )
    method_cfg = OmegaConf.create({"name": "triadapt"})
    method = TriAdaptLoRA(method_cfg, task, OmegaConf.create({"name": mode}), OmegaConf.create(MODEL))
    method.fast = fast
    model = method.prepare(ToyEncoder(H, num_labels=3))
    optimizer, losses = train_toy(method, model, steps, H, max_grad_norm)
    return method, model, optimizer, losses


STATE_KEYS = ("exp_avg", "exp_avg_sq", "step")


def by_block(method, model, tensors_of) -> dict[str, list[torch.Tensor]]:
    """``tensors_of(param)`` (tensors shaped like ``param``, or scalars) for every trainable
    tensor under its standalone name (``<module>.tri_A.<b>``, heads as named); blocks kept in a
    BlockStore are cut out of their event tensors."""
    out = {}
    for name, param in model.named_parameters():
        if param.requires_grad and not name.startswith(ATTRIBUTE + "."):
            out[name] = tensors_of(param)
    for name, layer in method.layers.items():
        store = layer.store
        for b, (event, *where) in enumerate(layer.store_slots):
            for prefix, key, i in zip(("tri_A", "tri_B", "tri_L", "tri_U"), where[0::2], where[1::2]):
                tensors = tensors_of(getattr(store.events[event], key))
                out[f"{name}.{prefix}.{b}"] = [store.pieces(event, key, t)[i] if t.dim() else t for t in tensors]
    return out


def state_by_block(method, model, optimizer) -> dict[str, list[torch.Tensor]]:
    """Every trainable tensor and its AdamW state, by standalone name."""
    return by_block(method, model, lambda p: [p, *(optimizer.state[p][k] for k in STATE_KEYS)])


LOSS_RTOL = 1e-6  # the bound stated in docs/triadaptlora.md
PARAM_TOL = dict(rtol=1e-4, atol=1e-6)


def same_events(slow_log, fast_log) -> None:
    """The same growth events (steps, modules, ranks); the thresholds (scores) to rounding."""
    for slow_event, fast_event in zip(slow_log, fast_log, strict=True):
        slow_event, fast_event = dict(slow_event), dict(fast_event)
        assert fast_event.pop("threshold") == pytest.approx(slow_event.pop("threshold"), rel=1e-4, abs=1e-9)
        assert fast_event == slow_event


@pytest.mark.parametrize("mode", ["fixed", "linear", "nonlinear"])
def test_fast_paths_agree_with_the_oracle_within_the_bound(mode):
    slow_method, slow_model, slow_opt, slow_losses = train(False, mode)
    fast_method, fast_model, fast_opt, fast_losses = train(True, mode)
    assert len(slow_method.growth_log) >= 4  # growth events happened among the 300 steps
    assert all(not g.get("foreach") for g in slow_opt.param_groups)
    assert all(g.get("foreach") for g in fast_opt.param_groups)
    # the fast run's AdamW sees one to three tensors per event (A12, B12, LU here), not 4 per block
    events = len(fast_method.growth_log) + 1
    assert sum(len(g["params"]) for g in fast_opt.param_groups) == 2 + 3 * events
    assert sum(len(g["params"]) for g in slow_opt.param_groups) == 2 + 4 * sum(
        len(layer.blocks) for layer in slow_method.layers.values())
    assert fast_losses == pytest.approx(slow_losses, rel=LOSS_RTOL)
    same_events(slow_method.growth_log, fast_method.growth_log)
    slow, fast = state_by_block(slow_method, slow_model, slow_opt), state_by_block(fast_method, fast_model, fast_opt)
    assert slow.keys() == fast.keys()
    for name in slow:
        torch.testing.assert_close(fast[name][0], slow[name][0], **PARAM_TOL, msg=name)  # the parameter
        assert torch.equal(fast[name][-1], slow[name][-1]), name  # AdamW's step count


def test_fused_factors_are_the_per_module_factors():
    """Every layer's B is gathered exactly; s·D·A and the regulariser equal the per-module
    arithmetic to rounding, with uneven ranks (several groups)."""
    method, model, _, _ = train(True, "linear", steps=120)
    layers = list(method.layers.values())
    assert len({layer.rank for layer in layers}) > 1  # several (in, out, rank) groups
    store = layers[0].store
    factors = store.fused_factors()
    for layer in layers:
        da, b = factors.of(layer)
        assert torch.equal(b, layer.factor_b())
        torch.testing.assert_close(da, layer.factor_d(layer.scaling) @ layer.factor_a(), rtol=1e-6, atol=1e-7)
    expected = sum(sum(layer.orthogonality()) for layer in layers)
    torch.testing.assert_close(factors.orthogonality_sum(), expected, rtol=1e-6, atol=0)
    assert store.fused_factors() is factors  # reused until something changes ...
    with torch.no_grad():
        layers[0].block_tensors().a[0].add_(1.0)  # ... e.g. an in-place change of a stored tensor
    fresh = store.fused_factors()
    assert fresh is not factors
    a = layers[0].factor_a()
    torch.testing.assert_close(fresh.of(layers[0])[0], layers[0].factor_d(layers[0].scaling) @ a, rtol=1e-6,
                               atol=1e-7)


def test_with_clipping_the_layouts_agree_to_rounding():
    slow_method, slow_model, slow_opt, slow_losses = train(False, "linear", steps=150, max_grad_norm=0.5)
    fast_method, fast_model, fast_opt, fast_losses = train(True, "linear", steps=150, max_grad_norm=0.5)
    assert len(slow_method.growth_log) >= 4
    same_events(slow_method.growth_log, fast_method.growth_log)
    assert fast_losses == pytest.approx(slow_losses, rel=1e-5)
    slow, fast = state_by_block(slow_method, slow_model, slow_opt), state_by_block(fast_method, fast_model, fast_opt)
    for name in slow:
        torch.testing.assert_close(fast[name][0], slow[name][0], **PARAM_TOL)


def test_regulariser_recomputes_when_the_factors_changed_since_the_forward_pass():
    method, model, optimizer, _ = train(True, "linear", steps=40)
    layer = next(iter(method.layers.values()))
    x = torch.randn(2, 5, H)
    model(x)  # caches A and B ...
    with torch.no_grad():
        layer.block_tensors().a[0].add_(1.0)  # ... which an in-place change makes stale
    a_term, b_term = layer.orthogonality()
    a = layer.factor_a().detach()
    expected = torch.linalg.matrix_norm(a @ a.T - torch.eye(layer.rank))
    assert torch.equal(a_term, expected)
    model(x)
    layer.grow(1)  # a new block also invalidates
    a_term, _ = layer.orthogonality()
    a = layer.factor_a().detach()
    assert torch.equal(a_term, torch.linalg.matrix_norm(a @ a.T - torch.eye(layer.rank)))


def test_two_forward_passes_before_a_step_accumulate_as_standalone():
    """Gradient accumulation: the store splits anew at every forward pass of the model, so two
    passes build separate graphs and their gradients add up as with standalone parameters."""
    grads = {}
    for fast in (False, True):
        method, model, optimizer, _ = train(fast, "linear", steps=60)  # 60 steps: some growth events
        optimizer.zero_grad(set_to_none=True)
        data = torch.Generator().manual_seed(5)
        for _ in range(2):
            x, y = torch.randn(6, 5, H, generator=data), torch.randint(0, 3, (6,), generator=data)
            (nn.functional.cross_entropy(model(x), y) + method.extra_loss(model)).backward()
        grads[fast] = by_block(method, model, lambda p: [p.grad])
    assert grads[False].keys() == grads[True].keys()
    for name, (grad,) in grads[False].items():  # the two models trained 60 steps apart: to rounding
        torch.testing.assert_close(grads[True][name][0], grad, rtol=1e-4, atol=1e-7, msg=name)
