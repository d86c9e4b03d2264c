"""The learning-rate schedule, including parameter groups added mid-run (IncreLoRA's restart warm-up)."""

import pytest
import torch

from adarank.training.optim import GrowingLinearSchedule, build_optimizer, default_param_groups


def make(lr=1.0, warmup=2, total=10):
    base = torch.nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer([{"params": [base], "weight_decay": 0.0}], lr)
    return optimizer, GrowingLinearSchedule(optimizer, warmup, total)


def advance(optimizer, scheduler, n):
    for _ in range(n):
        optimizer.step()
        scheduler.step()


def test_global_schedule_is_linear_warmup_then_decay():
    optimizer, scheduler = make()
    seen = []
    for _ in range(11):
        seen.append(optimizer.param_groups[0]["lr"])
        advance(optimizer, scheduler, 1)
    # warm-up 0, 1/2, then (10 - t) / 8
    assert seen == pytest.approx([0, 0.5, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0])


def test_restart_group_gets_its_own_warmup_and_decays_to_zero_at_the_end():
    optimizer, scheduler = make()
    advance(optimizer, scheduler, 4)
    group = scheduler.add_param_group([torch.nn.Parameter(torch.zeros(3))], weight_decay=0.01)
    assert group["weight_decay"] == 0.01
    lrs = []
    for _ in range(7):
        lrs.append(optimizer.param_groups[1]["lr"])
        advance(optimizer, scheduler, 1)
    # horizon 10 - 4 = 6 steps: warm-up 0, 1/2, then (6 - u) / 4
    assert lrs == pytest.approx([0, 0.5, 1, 3 / 4, 2 / 4, 1 / 4, 0])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


def test_global_policy_follows_the_run_schedule():
    optimizer, scheduler = make()
    advance(optimizer, scheduler, 5)
    scheduler.add_param_group([torch.nn.Parameter(torch.zeros(1))], 0.0, policy="global")
    assert optimizer.param_groups[1]["lr"] == pytest.approx(5 / 8)
    advance(optimizer, scheduler, 1)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(4 / 8)


def test_a_group_added_behind_the_schedulers_back_is_refused():
    optimizer, scheduler = make()
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))]})
    with pytest.raises(RuntimeError, match="add_param_group"):
        scheduler.step()


def test_unknown_policy_is_refused():
    _, scheduler = make()
    with pytest.raises(ValueError, match="restart"):
        scheduler.add_param_group([torch.nn.Parameter(torch.zeros(1))], 0.0, policy="peak")


def test_default_groups_skip_decay_for_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    model[1].weight.requires_grad = False
    groups = default_param_groups(model, 0.1)
    assert [len(g["params"]) for g in groups] == [1, 2]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
