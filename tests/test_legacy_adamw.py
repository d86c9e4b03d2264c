"""The legacy transformers AdamW of the reference codes (train.optimizer=adamw_legacy), by hand."""

import copy
import math

import pytest
import torch

from adarank.training.legacy_adamw import LegacyAdamW
from adarank.training.optim import build_optimizer


def run_steps(optimizer_factory, grads, start=1.0):
    p = torch.nn.Parameter(torch.tensor([start], dtype=torch.float64))
    optimizer = optimizer_factory([p])
    seen = []
    for g in grads:
        p.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
        seen.append(float(p.detach()))
    return seen


def test_two_steps_by_hand():
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 0.01, 0.5
    got = run_steps(lambda ps: LegacyAdamW(ps, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd), [2.0, -1.0])
    # step 1: m = 0.2, v = 0.004, step size = lr sqrt(1 - b2) / (1 - b1), eps added to sqrt(v)
    m, v = 0.2, 0.004
    p = 1.0 - lr * math.sqrt(1 - b2) / (1 - b1) * m / (math.sqrt(v) + eps)
    p = p - lr * wd * p  # decay of the updated value
    assert got[0] == pytest.approx(p, rel=1e-12)
    # step 2: m = 0.9 * 0.2 - 0.1 = 0.08, v = 0.999 * 0.004 + 0.001 = 0.004996
    m, v = 0.08, 0.004996
    p = p - lr * math.sqrt(1 - b2**2) / (1 - b1**2) * m / (math.sqrt(v) + eps)
    p = p - lr * wd * p
    assert got[1] == pytest.approx(p, rel=1e-12)


def test_it_differs_from_torch_adamw_where_the_definitions_differ():
    kwargs = dict(lr=0.1, betas=(0.9, 0.999))
    legacy = run_steps(lambda ps: LegacyAdamW(ps, eps=0.0, weight_decay=0.0, **kwargs), [2.0, -1.0, 0.5])
    torch_ = run_steps(lambda ps: torch.optim.AdamW(ps, eps=0.0, weight_decay=0.0, **kwargs), [2.0, -1.0, 0.5])
    assert legacy == pytest.approx(torch_, rel=1e-12)  # no eps, no decay: the same update
    for eps, wd in ((0.01, 0.0), (0.0, 0.5)):  # eps placement; decay before vs after the update
        legacy = run_steps(lambda ps: LegacyAdamW(ps, eps=eps, weight_decay=wd, **kwargs), [2.0])
        torch_ = run_steps(lambda ps: torch.optim.AdamW(ps, eps=eps, weight_decay=wd, **kwargs), [2.0])
        assert abs(legacy[0] - torch_[0]) > 1e-4


def test_foreach_is_bit_identical_to_the_loop_with_uneven_step_counts():
    torch.manual_seed(0)
    values = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2)]
    results = []
    for foreach in (False, True):
        params = [torch.nn.Parameter(v.clone()) for v in values]
        optimizer = LegacyAdamW(params, lr=0.05, eps=1e-8, weight_decay=0.01, foreach=foreach)
        gen = torch.Generator().manual_seed(1)
        for step in range(4):
            for i, p in enumerate(params):
                # the last parameter skips step 1, so the group holds two step counts afterwards
                p.grad = None if (i == 2 and step == 1) else torch.randn(p.shape, generator=gen)
            optimizer.step()
        results.append((params, optimizer))
    (loop_params, loop_opt), (fe_params, fe_opt) = results
    for p, q in zip(loop_params, fe_params):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(loop_opt.state[p][key], fe_opt.state[q][key])
        assert loop_opt.state[p]["step"] == fe_opt.state[q]["step"]
    assert fe_opt.state[fe_params[2]]["step"] == 3


def test_build_optimizer_choices():
    p = torch.nn.Parameter(torch.zeros(1))
    assert isinstance(build_optimizer([{"params": [p]}], 0.1, "adamw_legacy"), LegacyAdamW)
    assert isinstance(build_optimizer([{"params": [p]}], 0.1, "adamw_torch"), torch.optim.AdamW)
    with pytest.raises(ValueError, match="adamw_legacy"):
        build_optimizer([{"params": [p]}], 0.1, "adam")


@pytest.mark.parametrize("tensor_steps", [False, True])
def test_a_state_dict_round_trip_continues_identically(tensor_steps):
    """Also from a checkpoint written when the step counts were 0-dim tensors (before issue 23)."""
    def fresh():
        torch.manual_seed(0)
        return torch.nn.Parameter(torch.randn(4))

    p, q = fresh(), fresh()
    a, b = LegacyAdamW([p], lr=0.1, weight_decay=0.1), LegacyAdamW([q], lr=0.1, weight_decay=0.1)
    for optimizer, param in ((a, p), (b, q)):
        param.grad = torch.ones(4)
        optimizer.step()
    saved = copy.deepcopy(a.state_dict())  # as from a checkpoint file
    if tensor_steps:
        saved["state"][0]["step"] = torch.tensor(float(saved["state"][0]["step"]))
    b.load_state_dict(saved)
    for optimizer, param in ((a, p), (b, q)):
        param.grad = torch.full((4,), -0.5)
        optimizer.step()
    assert torch.equal(p, q) and a.state[p]["step"] == b.state[q]["step"] == 2


def test_an_unknown_optimizer_is_a_config_error():
    from adarank.checks import ConfigError, check_static
    from tests.conftest import compose

    assert compose([]).train.optimizer == "adamw_legacy"  # the reference codes' optimizer
    with pytest.raises(ConfigError, match="adamw_torch"):
        check_static(compose(["train.optimizer=adam"]))


def test_the_training_loop_builds_the_configured_optimizer(make_cfg, monkeypatch):
    from adarank.run import run
    from adarank.training import loop

    built = []
    real = loop.build_optimizer

    def recording(groups, lr, name):
        built.append(name)
        return real(groups, lr, name)

    monkeypatch.setattr(loop, "build_optimizer", recording)
    for name in ("adamw_torch", "adamw_legacy"):
        cfg, overrides = make_cfg(["method=bitfit", "train.max_steps=1", f"train.optimizer={name}"])
        run(cfg, overrides)
    assert built == ["adamw_torch", "adamw_legacy"]
