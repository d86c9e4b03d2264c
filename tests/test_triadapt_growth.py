"""TriAdaptLoRA growth inside a training loop: optimizer state, learning rates of new groups,
importance scores (Eq. 11), selection, regulariser, configuration checks."""

import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from adarank.methods.base import StepContext
from adarank.methods.triadapt import TriAdaptLinear, TriAdaptLoRA
from adarank.methods.triadapt.allocator import (
    RankAllocator,
    normalised_energy,
    select_modules,
)
from adarank.training.optim import GrowingLinearSchedule, build_optimizer
from tests.toys import ToyEncoder

H = 8
TASK = {
    "reference_rank": 8,
    "incre_rank_num": 4,
    "incre_interval": 2,
    "init_warmup": 2,
    "alpha": 16,
    "lora_dropout": 0,
    "reg_orth_coef": 0.1,
    "top_h": 2,
    "weight_decay": 0.01,
    "warmup_steps": 2,
    "lr": 0.01,
    "beta1": 0.85,
    "beta2": 0.85,
}
MODEL = {"target_regex": r"encoder\.layer\.\d+\.(query|value)", "head_modules": ["classifier", "pooler"]}


def make_method(threshold="linear", task=None, **method_opts):
    cfg = OmegaConf.create({"name": "triadapt", **method_opts})
    return TriAdaptLoRA(
        cfg, OmegaConf.create({**TASK, **(task or {})}), OmegaConf.create({"name": threshold}),
        OmegaConf.create(MODEL),
    )


def prepared(threshold="linear", seed=0, **kw):
    torch.manual_seed(seed)
    model = ToyEncoder(H, num_labels=2)  # encoder.layer.{0,1,2}.{query,value}: 6 adapted modules
    method = make_method(threshold, **kw)
    method.prepare(model)
    return method, model


def batches(n, seed=123):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, H, generator=g), torch.randint(0, 2, (16,), generator=g)) for _ in range(n)]


class Loop:
    """The harness loop order (adarank.training.loop): loss + extra, backward, clip, grow, step."""

    def __init__(self, method, model, total_steps):
        self.method, self.model, self.T = method, model, total_steps
        method.set_total_steps(total_steps)
        self.optimizer = build_optimizer(method.optimizer_groups(model, TASK["weight_decay"]), TASK["lr"])
        self.scheduler = GrowingLinearSchedule(self.optimizer, TASK["warmup_steps"], total_steps)
        self.data = batches(total_steps)
        self.t = 0

    def backward(self):
        x, y = self.data[self.t]
        loss = self.model(x, y)
        extra = self.method.extra_loss(self.model)
        (loss + extra).backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, 1.0)

    def ctx(self):
        return StepContext(self.t, self.T, self.model, self.optimizer, self.scheduler)

    def update(self):
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.t += 1

    def step(self, grow=True):
        self.backward()
        if grow:
            self.method.before_optimizer_step(self.ctx())
        self.update()


def adam_state(optimizer, params):
    out = []
    for p in params:
        s = optimizer.state[p]
        out.append((s["exp_avg"].clone(), s["exp_avg_sq"].clone(), s["step"].clone()))
    return out


def test_prepare_wraps_freezes_and_trains_heads():
    method, model = prepared()
    assert list(method.layers) == [f"encoder.layer.{i}.{m}" for i in range(3) for m in ("query", "value")]
    assert all(isinstance(model.get_submodule(n), TriAdaptLinear) for n in method.layers)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert not any(n.endswith(("base.weight", "base.bias")) or ".norm." in n for n in trainable)
    assert method.rank_pattern(model) == {n: 1 for n in method.layers}
    assert method.allocator.remaining == 6 * 8 - 6


def test_growth_keeps_existing_values_and_adam_state_bit_identical():
    method, model = prepared()
    twin_method, twin_model = copy.deepcopy((method, model))
    loop, twin = Loop(method, model, 10), Loop(twin_method, twin_model, 10)
    for _ in range(4):  # steps 0..3: no growth (t0 = 2, first growth at t = 4)
        loop.step()
        twin.step()
    assert method.growth_log == []
    old_params = [p for g in loop.optimizer.param_groups for p in g["params"]]
    values = [p.detach().clone() for p in old_params]
    state = adam_state(loop.optimizer, old_params)
    loop.backward()
    twin.backward()
    method.before_optimizer_step(loop.ctx())  # growth at t = 4 (twin: none)
    assert len(method.growth_log) == 1 and len(loop.optimizer.param_groups) == 3
    # nothing existing moved: same objects, same values, same Adam state, same groups
    assert [p for g in loop.optimizer.param_groups[:2] for p in g["params"]] == old_params
    for p, v, (m, s, n) in zip(old_params, values, state, strict=True):
        assert torch.equal(p, v)
        st = loop.optimizer.state[p]
        assert torch.equal(st["exp_avg"], m) and torch.equal(st["exp_avg_sq"], s) and torch.equal(st["step"], n)
    loop.update()
    twin.update()
    # after the optimizer step, every pre-existing parameter and its state equals the run without growth
    twin_params = [p for g in twin.optimizer.param_groups for p in g["params"]]
    for p, q in zip(old_params, twin_params, strict=True):
        assert torch.equal(p, q)
        assert all(torch.equal(loop.optimizer.state[p][k], twin.optimizer.state[q][k])
                   for k in ("exp_avg", "exp_avg_sq", "step"))
    # new parameters start with fresh state (no state before their first gradient)
    new_params = loop.optimizer.param_groups[2]["params"]
    assert all(len(loop.optimizer.state[p]) == 0 for p in new_params)


@pytest.mark.parametrize("policy", ["restart", "global"])
def test_new_group_learning_rate(policy):
    method, model = prepared(new_group_lr=policy)
    loop = Loop(method, model, 10)
    lrs, first_new = [], None
    for _ in range(10):
        loop.backward()
        method.before_optimizer_step(loop.ctx())
        if len(loop.optimizer.param_groups) > 2:
            if first_new is None:
                first_new = [p.detach().clone() for p in loop.optimizer.param_groups[2]["params"]]
                new_group = loop.optimizer.param_groups[2]
            lrs.append((loop.optimizer.param_groups[2]["lr"], loop.optimizer.param_groups[0]["lr"]))
        loop.update()
    assert new_group["weight_decay"] == 0.01
    peak = TASK["lr"]
    if policy == "restart":
        # added during t = 4 of T = 10 (Multi_LambdaLR): 0 while it joins, then its own warm-up of
        # 2 steps from 0 at t = 5, then linear decay to 0 at T (horizon 10 - 5 = 5):
        # factors 0, 0, 1/2, 1, 2/3, 1/3 at t = 4..9
        assert [a for a, _ in lrs] == pytest.approx([peak * f for f in (0, 0, 0.5, 1, 2 / 3, 1 / 3)])
    else:
        assert [a for a, _ in lrs] == pytest.approx([b for _, b in lrs])
    # the new parameters do train
    assert any(not torch.equal(p, v) for p, v in zip(new_group["params"], first_new))


@pytest.mark.parametrize(
    "threshold,expected_events,final",
    [
        # M = 6, R = 42, T = 10, t0 = 2, α = (t - 2)/8
        # linear: t=4: ceil(42·2/8 = 10.5) = 11 -> M = 6 (R 18); t=6: ceil(18·4/8) = 9 -> 6 (R -6)
        ("linear", [(4, 6, 30), (6, 6, 54)], 54),
        # nonlinear: 42^(1/4) = 2.55 -> 3 (R 30); 30^(1/2) = 5.48 -> 6 (R 6); 6^(3/4) = 3.83 -> 4 (R -10)
        ("nonlinear", [(4, 3, 18), (6, 6, 42), (8, 4, 58)], 58),
        # fixed, top_h = 2: 2 modules at t = 4, 6, 8 (R 18 left when the run ends)
        ("fixed", [(4, 2, 14), (6, 2, 22), (8, 2, 30)], 30),
    ],
)
def test_growth_log_and_rank_pattern_follow_the_schedule(threshold, expected_events, final):
    from adarank.methods.triadapt.schedule import plan

    method, model = prepared(threshold)
    loop = Loop(method, model, 10)
    for _ in range(10):
        loop.step()
    expected = plan(10, 2, 2, 6, 8, 1, 4, threshold, top_h=2)
    assert [(e.step, e.k, e.total_rank) for e in expected] == expected_events
    assert [(e["step"], e["k"], e["total_rank"]) for e in method.growth_log] == expected_events
    assert all(len(e["modules"]) == e["k"] for e in method.growth_log)
    assert sum(method.rank_pattern(model).values()) == final == method.summary(model)["total_rank"]
    assert method.allocation_seconds > 0
    assert method.summary(model)["budget_left"] == 42 - (final - 6)
    # every grown module got Δr = 4 more ranks per event it was selected in
    grown = {}
    for e in method.growth_log:
        for name in e["modules"]:
            grown[name] = grown.get(name, 0) + 4
    assert method.rank_pattern(model) == {n: 1 + grown.get(n, 0) for n in method.layers}


def test_no_work_between_growth_steps(monkeypatch):
    method, model = prepared()
    calls = []
    monkeypatch.setattr(method.allocator, "grow", lambda *a: calls.append(a) or (None, []))
    loop = Loop(method, model, 10)
    for _ in range(10):
        loop.step()
    assert [c[0] for c in calls] == [4, 6, 8]  # only at t > t0 with t % interval == 0


def set_d(layer, lower, upper):
    with torch.no_grad():
        for p, v in zip(layer.tri_L, lower):
            p.fill_(v)
        for p, v in zip(layer.tri_U, upper):
            p.fill_(v)


def test_importance_scores_eq11_by_hand():
    torch.manual_seed(0)
    layers = {f"m{i}": TriAdaptLinear(nn.Linear(4, 4), alpha=8) for i in range(3)}
    for layer in layers.values():
        set_d(layer, [0.3], [0.1])  # D = [0.4], ‖D‖/r = 0.4
    alloc = RankAllocator(layers, reference_rank=8, init_rank=1, delta_r=4, t0=0, interval=10,
                          mode="fixed", top_h=1)
    assert alloc.previous == pytest.approx([0.4, 0.4, 0.4])
    set_d(layers["m0"], [0.5], [0.1])  # 0.6: S = +0.2
    set_d(layers["m1"], [0.3], [0.15])  # 0.45: S = +0.05
    set_d(layers["m2"], [0.05], [0.05])  # 0.1: S = -0.3
    event, params = alloc.grow(10, 100)
    assert event["threshold"] == pytest.approx(0.2) and event["modules"] == ["m0"]
    assert layers["m0"].rank == 5 and len(params) == 4 and alloc.remaining == 21 - 4
    # the reference values are refreshed before the growth (pre-growth rank, A5)
    assert alloc.previous == pytest.approx([0.6, 0.45, 0.1])
    set_d(layers["m0"], [0.1] * 2, [0.1] * 2)  # every packed value 0.1 at rank 5: D = 0.2 I + 0.1 off-diagonal
    set_d(layers["m2"], [0.04], [0.04])  # 0.08: S = -0.02
    energy = (5 * 0.2**2 + 20 * 0.1**2) ** 0.5 / 5  # ‖D‖/5 = 0.1265: S = 0.1265 - 0.6 (old value at r = 1)
    assert normalised_energy(layers["m0"], "r") == pytest.approx(energy)
    event, _ = alloc.grow(20, 100)
    assert event["threshold"] == pytest.approx(0.0) and event["modules"] == ["m1"]  # m1: S = 0 leads
    assert alloc.previous == pytest.approx([energy, 0.45, 0.08])


def test_normalisers_table3():
    layer = TriAdaptLinear(nn.Linear(4, 4), alpha=8)
    layer.grow(1)
    set_d(layer, [0.5, 0.5], [0.5, 0.5])  # L = [[.5,0],[.5,.5]], U = [[.5,.5],[0,.5]]: D = [[1,.5],[.5,1]]
    fro = 2.5**0.5
    assert normalised_energy(layer, "r") == pytest.approx(fro / 2)
    assert normalised_energy(layer, "sqrt_r") == pytest.approx(fro / 2**0.5)
    assert normalised_energy(layer, "none") == pytest.approx(fro)


def test_ties_at_the_threshold():
    assert select_modules([0.1, 0.3, 0.3, 0.2], 1, strict=False) == ([1, 2], 0.3)  # >= threshold (A7)
    assert select_modules([0.1, 0.3, 0.3, 0.2], 1, strict=True) == ([1], 0.3)
    assert select_modules([0.1, 0.3, 0.3, 0.2], 3, strict=False) == ([1, 2, 3], 0.2)
    assert select_modules([-0.5, -0.1, -0.2], 2, strict=False) == ([1, 2], -0.2)  # signed scores


def test_orthogonal_regulariser_by_hand():
    method, model = prepared()
    with torch.no_grad():
        for layer in method.layers.values():
            a = layer.block_tensors().a[0]  # a view of the store's A tensor
            a.zero_()
            a[0, :2] = torch.tensor([0.6, 0.8])  # AAᵀ = 1 -> 0; B = 0 -> ‖−I₁‖ = 1
    # coef 0.1 × (6 × (0 + 1)) / (2 × 6)
    assert float(method.extra_loss(model).detach()) == pytest.approx(0.05)
    off, _ = prepared(orth_reg=False)
    assert off.extra_loss(model) is None
    zero = make_method(task={"reg_orth_coef": 0})
    zero.prepare(ToyEncoder(H, num_labels=2))
    assert zero.extra_loss(model) is None


def test_threshold_resolution():
    assert TriAdaptLoRA.resolve_threshold("none") == "linear"
    assert make_method("none").mode == "linear"
    assert make_method("nonlinear").mode == "nonlinear"
    with pytest.raises(ValueError):
        TriAdaptLoRA.resolve_threshold("cubic")


def check(threshold="linear", total_steps=3900, task=None, **opts):
    TriAdaptLoRA.check_config(
        OmegaConf.create({"name": "triadapt", **opts}), OmegaConf.create({**TASK, "incre_interval": 100,
                                                                          "init_warmup": 100, **(task or {})}),
        threshold, OmegaConf.create(MODEL), total_steps,
    )


def test_check_config_accepts_table_v_and_rejects_nonsense():
    check()
    check("fixed")
    check("none", norm="sqrt_r", rounding="floor", strict_budget=True, new_group_lr="global")
    bad = [
        ({"norm": "r2"}, "norm"),
        ({"rounding": "round"}, "rounding"),
        ({"new_group_lr": "warm"}, "new_group_lr"),
        ({"init_rank": 9}, "init_rank"),
        ({"init_rank": 0}, "init_rank"),
        ({"orth_reg": "yes"}, "orth_reg"),
        ({"beta1": 0.85}, "no option"),
        ({"init_std": 0}, "init_std"),
    ]
    for opts, match in bad:
        with pytest.raises(ValueError, match=match):
            check(**opts)
    with pytest.raises(ValueError, match="no growth step fits"):
        check(total_steps=200)  # first growth at 200 = T: never reached
    check(total_steps=201)
    with pytest.raises(ValueError, match="top_h"):
        check("fixed", task={"top_h": 0})
    with pytest.raises(ValueError, match="incre_rank_num"):
        check(task={"incre_rank_num": 0})
    with pytest.raises(ValueError):
        check("cubic")


def test_refuses_multi_process(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="single process"):
        prepared()
