"""SoRA (docs/baselines.md, SoRA): the gated forward, one gate update (L1 term, the gates' own
AdamW group, the proximal step) and the pruning it causes against a hand computation, the
proximal rules, the sparsifying scheduler, events, save/load, options, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from adarank.checks import ConfigError, check_schedule
from adarank.methods.base import StepContext
from adarank.methods.sora import GATE_EPS, SoRA, SoRALinear, proximal_step, pruned_factors, xi_schedule
from adarank.results import validate_run_folder
from adarank.run import run
from adarank.training.loop import optimization_step
from adarank.training.optim import GrowingLinearSchedule, build_optimizer
from tests.conftest import compose

MODEL_CFG = OmegaConf.create({"target_regex": r"proj", "head_modules": []})


class OneLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 2)

    def forward(self, x):
        return self.proj(x)


def sora(options: dict, rank: int = 3):
    torch.manual_seed(0)
    model = OneLinear()
    method = SoRA(OmegaConf.create({"name": "sora", "max_rank": rank, **options}),
                  OmegaConf.create({"reference_rank": 8, "alpha": 6.0, "lora_dropout": 0.0, "batch_size": 4}), None, MODEL_CFG)
    method.prepare(model)
    return method, model, model.proj


def test_forward_is_the_gated_low_rank_update():
    _, _, layer = sora({})
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.lora_gate.copy_(torch.tensor([0.5, 0.0, -2.0]))
    x = torch.randn(4, 3)
    a, b = layer.lora_A, layer.lora_B
    expected = layer.base(x) + 2.0 * (x @ a.t() * torch.tensor([0.5, 0.0, -2.0])) @ b.t()  # s = 6 / 3
    torch.testing.assert_close(layer(x), expected)
    assert layer.rank == 2
    pa, pb = pruned_factors(layer)
    torch.testing.assert_close(x @ pa.t() @ pb.t(), expected - layer.base(x))


def test_one_gate_update_and_the_pruning_it_causes_by_hand():
    """η = 0.3, ξ = 0.05, lr 0.1, legacy AdamW (eps 1e-6 for the gates), one step of the harness."""
    method, model, layer = sora({"l1_weight": 0.3, "xi": 0.05})
    g0 = torch.tensor([0.4, -0.07, 0.02])
    with torch.no_grad():
        layer.lora_gate.copy_(g0)
        layer.lora_A.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
        layer.lora_B.copy_(torch.tensor([[1.0, 0.5, -1.0], [0.0, 1.0, 2.0]]))
    x, y = torch.tensor([[1.0, 2.0, -1.0]]), torch.tensor([[0.0, 0.0]])
    method.set_total_steps(10)
    optimizer = build_optimizer(method.optimizer_groups(model, 0.1), 0.1, "adamw_legacy")
    gate_group = optimizer.param_groups[-1]
    assert gate_group["params"] == [layer.lora_gate] and gate_group["weight_decay"] == 0.0 and gate_group["eps"] == GATE_EPS
    assert all(layer.lora_gate is not p for g in optimizer.param_groups[:-1] for p in g["params"])
    scheduler = GrowingLinearSchedule(optimizer, 0, 10)
    loss = 0.5 * (model(x) - y).pow(2).sum() + method.extra_loss(model)
    torch.testing.assert_close(method.extra_loss(model), torch.tensor(0.3 * (0.4 + 0.07 + 0.02) / 3))
    # by hand: dL/dg_i = s (B^T r)_i (A x)_i + η sign(g_i) / 3, with r = W0 x + b + s B(g ⊙ Ax) - y
    with torch.no_grad():
        ax = (x @ layer.lora_A.t())[0]
        r = (layer.base(x) + 2.0 * (ax * g0) @ layer.lora_B.t() - y)[0]
        grad = 2.0 * (layer.lora_B.t() @ r) * ax + 0.3 * torch.sign(g0) / 3
    optimization_step(method, model, optimizer, scheduler, loss, 0, 10, max_grad_norm=1e9)
    # legacy AdamW's first step: m = 0.1 g, v = 0.001 g², p -= lr·sqrt(0.001)/0.1 · m / (sqrt(v) + eps)
    adam = g0 - 0.1 * math.sqrt(1 - 0.999) / 0.1 * (0.1 * grad) / ((0.001 * grad**2).sqrt() + GATE_EPS)
    expected = torch.where(adam > 0.05, adam - 0.05, torch.where(adam < -0.05, adam + 0.05, adam))
    expected = torch.where(expected.abs() < 0.05, torch.zeros_like(expected), expected)
    torch.testing.assert_close(layer.lora_gate.detach(), expected, atol=1e-7, rtol=0)
    # the adam step moved every gate by ~lr = 0.1: 0.4 -> ~0.3, -0.07 -> ~0.03, 0.02 -> ~-0.08 (sign of its
    # gradient); after P_ξ: 0.25, pruned (|0.03| < ξ), -0.03 -> pruned (ξ < 0.08 < 2ξ: the official rule's 0)
    assert (layer.lora_gate.detach() == 0).tolist() == [False, True, True]
    assert method.rank_pattern(model) == {"proj": 1}
    assert method.growth_log == [{"step": 0, "k": 2, "revived": 0, "total_rank": 1, "budget": 3, "modules": ["proj"]}]


def test_the_official_proximal_rule_and_the_soft_threshold():
    g = torch.tensor([0.5, 0.15, 0.1, 0.07, 0.03, 0.0, -0.03, -0.1, -0.15, -0.5])
    xi = 0.1
    soft = proximal_step(g.clone(), xi, "soft")
    official = proximal_step(g.clone(), xi, "official")
    torch.testing.assert_close(soft, torch.tensor([0.4, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.05, -0.4]), atol=1e-7, rtol=0)
    # the official three steps: 0.15 -> 0.05 -> 0 (below ξ after the shift); exactly ξ stays ξ
    torch.testing.assert_close(official, torch.tensor([0.4, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0, -0.1, 0.0, -0.4]), atol=1e-7, rtol=0)
    assert torch.equal(proximal_step(g.clone(), 0.0), g)


def test_xi_schedule_is_the_official_lambda_list_after_its_first_value():
    assert xi_schedule(0.0, 7e-4, 7, "linear") == pytest.approx(list(np.linspace(0, 7e-4, 7)[1:]))
    assert xi_schedule(1e-4, 1e-2, 3, "exp_linear") == pytest.approx([1e-3, 1e-2])
    assert xi_schedule(0.0, 1.0, 3, "log_linear") == pytest.approx([math.log((1 + math.e) / 2), 1.0])


def test_pruned_ranks_are_logged_when_the_pattern_changes_and_restored_from_state():
    method, model, layer = sora({"xi": 0.0})
    ctx = lambda step: StepContext(step, 200, model, None, None)  # noqa: E731 - checks every 2 steps
    with torch.no_grad():
        layer.lora_gate.copy_(torch.tensor([1.0, 0.0, 1.0]))
    method.after_optimizer_step(ctx(0))  # step 1 of 200: not a check step
    assert method.growth_log == []
    method.after_optimizer_step(ctx(1))
    assert [(e["step"], e["k"], e["total_rank"]) for e in method.growth_log] == [(1, 1, 2)]
    with torch.no_grad():
        layer.lora_gate[1] = 0.3  # revived
    method.after_optimizer_step(ctx(3))
    assert method.growth_log[-1]["revived"] == 1 and method.growth_log[-1]["total_rank"] == 3
    state = method.state_dict()
    other, _, _ = sora({"xi": 0.0})
    other.load_state_dict(state)
    assert other._last_pattern == {"proj": 3} and other.growth_log == method.growth_log


def test_the_sparsifying_scheduler_prunes_stage_by_stage_and_restores_the_trained_gates():
    method, model, layer = sora({"xi": 0.01, "schedule": "linear", "schedule_max_xi": 0.03, "schedule_stages": 3,
                                 "stage_epochs": 1, "proximal": "soft"})
    method.training_data(list(range(8)), None, 0)  # 8 examples, batch 4: 2 steps per stage
    with torch.no_grad():
        layer.lora_gate.copy_(torch.tensor([0.5, -0.05, 0.03]))
    seen = []
    out = method.final_evaluations(model, lambda: seen.append(layer.lora_gate.detach().clone()) or {"accuracy": 1.0})
    # stage ξ = 0.02 twice: 0.46, -0.01, 0 ; then ξ = 0.03 twice: 0.40, 0, 0
    torch.testing.assert_close(seen[0], torch.tensor([0.46, -0.01, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(seen[1], torch.tensor([0.40, 0.0, 0.0]), atol=1e-6, rtol=0)
    assert [(s["xi"], s["steps"], s["total_rank"]) for s in out["sparsify_schedule"]] == [
        (pytest.approx(0.02), 2, 2), (pytest.approx(0.03), 2, 1)]
    assert torch.equal(layer.lora_gate.detach(), torch.tensor([0.5, -0.05, 0.03]))  # back to the trained gates


def test_save_and_load_reproduce_the_model(tmp_path):
    method, model, layer = sora({})
    with torch.no_grad():
        for p in (layer.lora_A, layer.lora_B, layer.lora_gate):
            p.add_(torch.randn_like(p))
        layer.lora_gate[1] = 0.0
    method.save_adapter(model, str(tmp_path / "adapter"))
    fresh = OneLinear()
    fresh.proj.load_state_dict(layer.base.state_dict())
    SoRA.load_adapter(fresh, str(tmp_path / "adapter"))
    x = torch.randn(5, 3)
    assert torch.equal(fresh(x), model(x)) and isinstance(fresh.proj, SoRALinear) and fresh.proj.rank == 2


def test_run_end_to_end_prunes_and_reports(make_cfg):
    cfg, overrides = make_cfg(["method=sora", "task.batch_size=8", "train.max_steps=6", "method.xi=0.05",
                               "task.lr=0.05"])
    metrics = run(cfg, overrides)
    [folder] = [p.parent for p in Path(cfg.results.root).rglob("metrics.json")]
    assert validate_run_folder(folder) == []
    pattern = json.loads((folder / "rank_pattern.json").read_text())
    events = [json.loads(line) for line in (folder / "growth_log.jsonl").read_text().splitlines()]
    assert events and events[-1]["total_rank"] == sum(pattern.values()) == metrics["rank"]["total_rank"] < 96
    assert metrics["rank"]["init_total_rank"] == 96 and metrics["costs"]["allocation_seconds"] > 0
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert all("extra_loss" in r for r in log if "loss" in r)  # the L1 term is logged like a regulariser


@pytest.mark.parametrize("overrides, message", [
    (["method.max_rank=0"], "max_rank must be a positive integer"),
    (["method.xi=-1"], "xi must be a number >= 0"),
    (["method.l1_weight=abc"], "l1_weight must be a number >= 0"),
    (["method.gate_lr=0"], "gate_lr must be a number > 0"),
    (["method.proximal=hard"], "proximal must be one of"),
    (["method.schedule=cubic"], "schedule must be null or one of"),
    (["method.schedule_max_xi=0.01"], "schedule_max_xi applies only with method.schedule"),
    (["method.schedule=linear", "method.schedule_max_xi=0.01"], "schedule_stages .* must be an integer >= 2"),
    (["method.schedule=linear", "method.schedule_stages=3"], "schedule_max_xi must be a number > 0"),
    (["method.schedule=exp_linear", "method.schedule_max_xi=0.01", "method.schedule_stages=3", "method.xi=0"],
     "exp_linear interpolates log"),
    (["method.schedule=linear", "method.schedule_max_xi=0.01", "method.schedule_stages=3", "method.stage_epochs=0"],
     "stage_epochs must be a number > 0"),
])
def test_bad_options_are_refused_before_any_compute(overrides, message):
    cfg = compose(["task=rte", "task.warmup_steps=0", "method=sora", *overrides])
    with pytest.raises(ConfigError, match=message):
        check_schedule(cfg, None, 100, 320)
