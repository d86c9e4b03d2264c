"""IncreLoRA: importance, smoothing, growth schedule, reserve ranks, scoring stop, optimizer state,
threshold choice, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from adarank.methods.base import StepContext
from adarank.methods.increlora import IncreLoRA
from adarank.methods.increlora.allocator import ema_update, growth_k, is_growth_step, select_modules
from adarank.methods.increlora.layer import RESERVE_E, IncreLinear, importance
from adarank.methods.orthogonal import gram_orth_penalty
from adarank.results import validate_run_folder
from adarank.training.optim import GrowingLinearSchedule, build_optimizer
from tests.toys import ToyStack


METHOD_CFG = {"name": "increlora", "init_rank": 1, "score_norm": "sqrt_numel", "new_group_lr": "restart"}


def task_cfg(**over):
    base = dict(
        reference_rank=3, incre_rank_num=1, top_h=3, init_warmup=2, incre_interval=2, beta1=0.85,
        beta2=0.85, reg_orth_coef=0.1, alpha=8, lora_dropout=0.0, weight_decay=0.01, warmup_steps=2,
    )
    base.update(over)
    return OmegaConf.create(base)


MODEL_CFG = OmegaConf.create({"target_regex": r"layers\.\d+", "head_modules": ["head"]})


def build(modules=4, total_steps=20, lr=1e-2, **task_over):
    torch.manual_seed(0)
    method = IncreLoRA(OmegaConf.create(METHOD_CFG), task_cfg(**task_over), None, MODEL_CFG)
    model = method.prepare(ToyStack(modules, 6, 2))
    method.set_total_steps(total_steps)
    optimizer = build_optimizer(method.optimizer_groups(model, 0.01), lr)
    scheduler = GrowingLinearSchedule(optimizer, 2, total_steps)
    return method, model, optimizer, scheduler


def ctx(step, model, optimizer, scheduler, total=20):
    return StepContext(step, total, model, optimizer, scheduler)


def train_step(method, model, optimizer, scheduler, step, total=20):
    x = torch.randn(5, 6)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 0, 1, 1]))
    extra = method.extra_loss(model)
    (loss + extra).backward()
    method.before_optimizer_step(ctx(step, model, optimizer, scheduler, total))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


# --- the layer ------------------------------------------------------------------------------
def small_layer(init_rank=1, alpha=2.0, score_norm="sqrt_numel"):
    base = nn.Linear(3, 2)
    layer = IncreLinear(base, init_rank=init_rank, alpha=alpha, score_norm=score_norm)
    with torch.no_grad():
        layer.lora_A[0].copy_(torch.tensor([[1.0, 0.0, 2.0]]))
        layer.lora_E[0].copy_(torch.tensor([[0.5]]))
        layer.lora_B[0].copy_(torch.tensor([[1.0], [-1.0]]))
    return layer


@pytest.mark.parametrize("score_norm, divisor", [("sqrt_numel", math.sqrt(6)), ("numel", 6.0)])
def test_importance_is_hand_computed_for_a_known_gradient(score_norm, divisor):
    layer = small_layer(score_norm=score_norm)
    x = torch.tensor([[1.0, 2.0, -1.0]])
    c = torch.tensor([[3.0, -2.0]])
    (layer(x) * c).sum().backward()  # dL/dy = c, so dL/dΔW = cᵀ x = [[3, 6, -3], [-2, -4, 2]]
    s = 2.0 / (1 + 1e-5)  # alpha / (ranknum + 1e-5)
    # ΔW = s [[0.5, 0, 1], [-0.5, 0, -1]];  Σ|ΔW ⊙ ∇| = s (1.5 + 0 + 3 + 1 + 0 + 2) = 7.5 s
    assert float(layer.score) == pytest.approx(7.5 * s / divisor, rel=1e-6)
    assert layer.hook_calls == 1


def test_importance_matches_autograd_on_the_dense_update_over_many_tokens():
    torch.manual_seed(1)
    layer = IncreLinear(nn.Linear(5, 4), init_rank=2, alpha=8.0)
    with torch.no_grad():
        layer.lora_E[0].normal_()
    x = torch.randn(3, 7, 5)
    target = torch.randn(3, 7, 4)
    ((layer(x) - target) ** 2).mean().backward()
    # reference: the same loss through an explicit dense ΔW leaf
    delta = layer.delta_weight().detach().requires_grad_(True)
    y = layer.base(x) + x @ delta.t()
    ((y - target) ** 2).mean().backward()
    expected = (delta.detach() * delta.grad).abs().sum() / math.sqrt(20)
    assert float(layer.score) == pytest.approx(float(expected), rel=1e-5)
    assert float(importance(delta.detach(), delta.grad)) == pytest.approx(float(expected), rel=1e-6)


def test_forward_is_base_plus_scaled_low_rank_update_including_reserve():
    layer = small_layer(alpha=4.0)
    layer.add_reserve(2)
    x = torch.randn(4, 3)
    a, e, b = layer.matrices()
    assert a.shape == (3, 3) and e.flatten()[1:].tolist() == pytest.approx([RESERVE_E, RESERVE_E])
    dense = b @ (a * e) * 4.0 / (1 + 1e-5)  # ranknum counts the active rank only
    torch.testing.assert_close(layer(x), layer.base(x) + x @ dense.t())
    assert layer.rank == 1


# --- smoothing and schedule -----------------------------------------------------------------
def test_ema_update_by_hand():
    ipt, unc = torch.zeros(1), torch.zeros(1)
    ipt, unc = ema_update(ipt, unc, torch.tensor([2.0]), 0.85, 0.85)
    assert float(ipt) == pytest.approx(0.3) and float(unc) == pytest.approx(0.15 * 1.7)
    ipt, unc = ema_update(ipt, unc, torch.tensor([1.0]), 0.85, 0.85)
    assert float(ipt) == pytest.approx(0.405)
    assert float(unc) == pytest.approx(0.85 * 0.255 + 0.15 * 0.595)


def test_method_smooths_the_layer_scores_every_step_while_the_budget_is_open():
    method, model, optimizer, scheduler = build()
    layers = list(method.layers.values())
    for step, value in enumerate([2.0, 1.0]):
        for layer in layers:
            layer.score = torch.tensor(value)
        method.before_optimizer_step(ctx(step, model, optimizer, scheduler))
    torch.testing.assert_close(method.exp_avg_ipt, torch.full((4,), 0.405))
    torch.testing.assert_close(method.exp_avg_unc, torch.full((4,), 0.85 * 0.255 + 0.15 * 0.595))


def test_growth_rule_pieces():
    assert [t for t in range(12) if is_growth_step(t, 2, 2)] == [4, 6, 8, 10]
    assert growth_k(3, 12, 4) == 3 and growth_k(3, 12, 10) == 2
    chosen, threshold = select_modules(torch.tensor([0.1, 0.5, 0.3, 0.5]), 2)
    assert chosen == [1, 3] and threshold == pytest.approx(0.5)
    chosen, _ = select_modules(torch.tensor([0.1, 0.5, 0.3, 0.5]), 1)
    assert chosen == [1, 3]  # ties at the threshold all grow (>=), as in the official code


def run_schedule(steps, scores, **task_over):
    """Drive the allocator with fixed per-module scores (no forward pass needed)."""
    method, model, optimizer, scheduler = build(**task_over)
    for step in range(steps):
        for layer, value in zip(method.layers.values(), scores):
            if layer.scoring:
                layer.score = torch.tensor(value)
        method.before_optimizer_step(ctx(step, model, optimizer, scheduler))
        scheduler.step()
    return method, model, optimizer


def test_growth_events_and_k_follow_the_hand_computed_schedule():
    # M = 4, r_init 1, r_ref 3: start 4, budget 12; Δr 1, top_h 3, init_warmup 2, interval 2
    method, model, _ = run_schedule(12, [4.0, 3.0, 2.0, 1.0])
    events = [(e["step"], e["k"], e["total_rank"], e["modules"]) for e in method.growth_log]
    assert events == [
        (4, 3, 7, ["layers.0", "layers.1", "layers.2"]),  # k = min(3, 12 - 4)
        (6, 3, 10, ["layers.0", "layers.1", "layers.2"]),  # k = min(3, 12 - 7)
        (8, 2, 12, ["layers.0", "layers.1"]),  # k = min(3, 12 - 10): budget met at step 8
    ]
    assert method.rank_pattern(model) == {"layers.0": 4, "layers.1": 4, "layers.2": 3, "layers.3": 1}
    assert method.summary(model)["total_rank"] == 12 and method.exhausted_at == 8


def test_reserve_ranks_are_created_at_the_first_step_and_activated_by_growth():
    method, model, optimizer, scheduler = build(incre_rank_num=2, reference_rank=5, top_h=1)
    layer = method.layers["layers.0"]
    assert len(layer.lora_E) == 1 and layer.rank == 1
    method.before_optimizer_step(ctx(0, model, optimizer, scheduler))
    # step 0: Δr reserve ranks per module, E frozen at 1e-5, A and B trainable, in one new group;
    # the Δr ranks of a module are one block (layer.rank_blocks): a 2 x in A, 2 x 1 E, out x 2 B
    assert len(layer.lora_E) == 2 and layer.rank == 1 and layer.num_reserve == 2
    assert [tuple(p.shape) for p in (layer.lora_A[1], layer.lora_E[1], layer.lora_B[1])] == [(2, 6), (2, 1), (6, 2)]
    reserve_e = list(layer.lora_E)[1:]
    reserve_ab = list(layer.lora_A)[1:] + list(layer.lora_B)[1:]
    assert all(torch.equal(e.detach(), torch.full_like(e, RESERVE_E)) and not e.requires_grad for e in reserve_e)
    assert all(p.requires_grad for p in reserve_ab)
    reserve_group = optimizer.param_groups[-1]
    assert {id(p) for p in reserve_group["params"]} == {
        id(p) for lay in method.layers.values() for p in list(lay.lora_A)[1:] + list(lay.lora_B)[1:]
    }
    assert reserve_group["weight_decay"] == 0.01
    # grow only layers.0 at step 4
    scheduler.step()
    for step in range(1, 5):
        for lay, value in zip(method.layers.values(), [5.0, 1.0, 0.5, 0.1]):
            lay.score = torch.tensor(value)
        method.before_optimizer_step(ctx(step, model, optimizer, scheduler))
        scheduler.step()
    assert [e["modules"] for e in method.growth_log] == [["layers.0"]]
    assert layer.rank == 3 and layer.num_reserve == 2 and len(layer.lora_E) == 3
    # the former reserve is active: trainable E, still at its 1e-5 value; a fresh reserve follows
    assert all(e.requires_grad and torch.equal(e.detach(), torch.full_like(e, RESERVE_E)) for e in reserve_e)
    new_reserve = list(layer.lora_A)[2:] + list(layer.lora_B)[2:]
    growth_group = optimizer.param_groups[-1]
    expected = {id(e) for e in reserve_e} | {id(p) for p in new_reserve}
    assert expected <= {id(p) for p in growth_group["params"]}
    assert not {id(p) for p in reserve_ab} & {id(p) for p in growth_group["params"]}  # already there
    # restart warm-up (Multi_LambdaLR): added at step 4, its own 2-step warm-up starts at step 5
    # from 0 and is half-way at step 6, while the initial groups decay (factor (20 - t) / (20 - 2))
    assert growth_group["lr"] == 0.0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 15 / 18)
    scheduler.step()
    assert growth_group["lr"] == pytest.approx(0.01 * 1 / 2)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 14 / 18)


def test_scoring_stops_at_budget_exhaustion_and_no_hook_runs_afterwards():
    method, model, optimizer, scheduler = build(reference_rank=2, top_h=4, total_steps=12)
    for step in range(5):  # growth at step 4: k = min(4, 8 - 4) = 4 -> every module, budget met
        train_step(method, model, optimizer, scheduler, step, total=12)
    assert method.growth_log[-1]["total_rank"] == 8 and not method.budget_open
    layers = list(method.layers.values())
    assert all(layer.hook_calls == 5 and not layer.scoring and layer.score is None for layer in layers)
    assert all(not layer.lora_E[-1].detach().any() for layer in layers)  # reserve E zeroed
    ipt = method.exp_avg_ipt.clone()
    for step in range(5, 8):
        train_step(method, model, optimizer, scheduler, step, total=12)
    assert all(layer.hook_calls == 5 for layer in layers)  # no hook after exhaustion
    assert torch.equal(method.exp_avg_ipt, ipt) and len(method.growth_log) == 1
    assert method.summary(model)["reserve_zeroed"] is True


def test_an_overshooting_last_event_stops_scoring_but_keeps_the_reserve_like_the_official_code():
    # start 4, budget 12, Δr 2: step 4 grows 3 modules (10), step 6 grows k = 2 modules -> 14 > 12
    method, model, _ = run_schedule(10, [4.0, 3.0, 2.0, 1.0], incre_rank_num=2)
    assert [e["total_rank"] for e in method.growth_log] == [10, 14]
    assert not method.budget_open and not method.reserve_zeroed
    reserves = [layer.lora_E[-1].detach() for layer in method.layers.values()]  # a block of Δr = 2 each
    assert all(e.shape == (2, 1) and torch.equal(e, torch.full_like(e, RESERVE_E)) for e in reserves)


def test_a_checkpoint_of_the_per_rank_layout_resumes_in_it():
    """A method state written before the rank blocks (no ``rank_blocks`` entry) rebuilds one
    parameter per rank, so its tensors load into it; a new state rebuilds blocks."""
    from adarank.training.best_state import NoScheduler
    from adarank.training.checkpoint import load_tensors

    for blocks in (False, True):
        method, model, optimizer, scheduler = build(incre_rank_num=2, reference_rank=5, top_h=2)
        method.rank_blocks = blocks
        for layer in method.layers.values():
            layer.rank_blocks = blocks
        for step in range(5):
            train_step(method, model, optimizer, scheduler, step)
        assert len(method.growth_log) == 1
        state = method.state_dict()
        if not blocks:
            del state["rank_blocks"]  # as an older checkpoint has it
        fresh, fresh_model, _, _ = build(incre_rank_num=2, reference_rank=5, top_h=2)
        assert fresh.rank_blocks is True
        fresh.restore_structure(fresh_model, NoScheduler(), state)
        assert fresh.rank_blocks is blocks
        load_tensors(fresh_model, dict(model.named_parameters()))
        grown = set(method.growth_log[0]["modules"])
        for name, old in method.layers.items():
            new = fresh.layers[name]
            additions = 2 if name in grown else 1  # the reserve of step 0, and one per growth
            assert len(new.lora_A) == len(old.lora_A) == 1 + additions * (1 if blocks else 2)
            assert all(torch.equal(x, y) for x, y in zip(old.matrices(), new.matrices()))


def test_adam_state_of_existing_parameters_is_untouched_by_growth():
    method, model, optimizer, scheduler = build()
    for step in range(4):
        train_step(method, model, optimizer, scheduler, step)
    before = {
        id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()}
        for g in optimizer.param_groups
        for p in g["params"]
        if p in optimizer.state
    }
    groups_before = len(optimizer.param_groups)
    old_params = [p for g in optimizer.param_groups for p in g["params"]]
    # step 4 is a growth step; run backward + growth, then inspect before optimizer.step()
    x = torch.randn(5, 6)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 0, 1, 1])).backward()
    method.before_optimizer_step(ctx(4, model, optimizer, scheduler))
    assert len(method.growth_log) == 1 and len(optimizer.param_groups) == groups_before + 1
    assert len(before) == len(old_params)
    for p in old_params:
        state = optimizer.state[p]
        for key, value in before[id(p)].items():
            assert torch.equal(state[key], value), key
    new_params = optimizer.param_groups[-1]["params"]
    assert all(p not in optimizer.state for p in new_params)
    optimizer.step()
    assert all(float(optimizer.state[p]["step"]) == float(before[id(p)]["step"]) + 1 for p in old_params)


def test_orthogonal_penalty_is_the_unsquared_gram_form_over_concatenated_blocks():
    method, model, optimizer, scheduler = build()
    method.before_optimizer_step(ctx(0, model, optimizer, scheduler))  # adds the reserve
    terms = []
    for layer in method.layers.values():
        a = torch.cat(list(layer.lora_A), 0)
        b = torch.cat(list(layer.lora_B), 1)
        assert a.shape[0] == 2  # active rank + reserve
        terms.append(torch.sqrt(((a @ a.t() - torch.eye(2)) ** 2).sum()))
        terms.append(torch.sqrt(((b.t() @ b - torch.eye(2)) ** 2).sum()))
    expected = 0.1 * torch.stack(terms).mean()
    torch.testing.assert_close(method.extra_loss(model), expected)
    assert gram_orth_penalty([]) is None


def test_only_the_fixed_threshold_is_accepted_with_a_clear_message():
    assert IncreLoRA.resolve_threshold("none") == "fixed"
    assert IncreLoRA.resolve_threshold("fixed") == "fixed"
    for bad in ("linear", "nonlinear"):
        with pytest.raises(ValueError, match=r"threshold=fixed.*method=triadapt threshold=" + bad):
            IncreLoRA.resolve_threshold(bad)


def test_threshold_rejection_surfaces_as_a_config_error():
    from adarank.checks import ConfigError, check_static
    from tests.conftest import compose

    with pytest.raises(ConfigError, match="single growth rule"):
        check_static(compose(["method=increlora", "threshold=linear"]))
    assert check_static(compose(["method=increlora"])) == "fixed"


def test_check_config_rejects_bad_values():
    cfg = OmegaConf.create(METHOD_CFG)
    IncreLoRA.check_config(cfg, task_cfg(), "fixed", MODEL_CFG, 100)
    with pytest.raises(ValueError, match="top_h"):
        IncreLoRA.check_config(cfg, task_cfg(top_h=0), "fixed", MODEL_CFG, 100)
    with pytest.raises(ValueError, match="unknown option"):
        IncreLoRA.check_config(OmegaConf.create({**METHOD_CFG, "top_k": 3}), task_cfg(), "fixed", MODEL_CFG, 100)


def test_end_to_end_run_writes_a_complete_results_folder(make_cfg):
    from adarank.run import run

    cfg, overrides = make_cfg(
        ["method=increlora", "threshold=fixed", "task.init_warmup=1", "task.incre_interval=2", "train.max_steps=6"]
    )
    metrics = run(cfg, overrides)
    folder = next(Path(cfg.results.root).rglob("metrics.json")).parent
    assert validate_run_folder(folder) == []
    pattern = json.loads((folder / "rank_pattern.json").read_text())
    growth = [json.loads(line) for line in (folder / "growth_log.jsonl").read_text().splitlines()]
    assert len(pattern) == 12  # 2 layers x 6 encoder linears of the tiny DeBERTa
    assert [e["step"] for e in growth] == [2, 4]  # t > 1 and t % 2 == 0, within 6 steps
    assert sum(pattern.values()) == growth[-1]["total_rank"] == metrics["rank"]["total_rank"]
    assert metrics["threshold"] == "fixed" and metrics["status"] == "completed"
    assert metrics["costs"]["trainable_params_end"] > metrics["costs"]["trainable_params_start"]
    assert metrics["costs"]["allocation_seconds"] > 0
