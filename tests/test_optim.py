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


def test_restart_group_matches_multi_lambdalr_by_hand():
    # IncreLoRA's Multi_LambdaLR, T = 12, W = 3, a group added by the growth of step 4 (before that
    # step's optimizer.step): the scheduler step after it sees the group first, with horizon
    # 12 - 5 = 7 and a counter starting at -1, so its factor at steps 5..11 is
    # 0, 1/3, 2/3, 1, then (7 - u) / (7 - 3) for u = 4, 5, 6: 3/4, 2/4, 1/4
    optimizer, scheduler = make(warmup=3, total=12)
    advance(optimizer, scheduler, 4)
    group = scheduler.add_param_group([torch.nn.Parameter(torch.zeros(3))], weight_decay=0.01)
    assert group["weight_decay"] == 0.01
    new, old = [], []
    for _ in range(4, 12):
        new.append(optimizer.param_groups[1]["lr"])
        old.append(optimizer.param_groups[0]["lr"])
        advance(optimizer, scheduler, 1)
    # step 4 (the step it joins, its parameters have no gradient yet): 0
    assert new == pytest.approx([0, 0, 1 / 3, 2 / 3, 1, 3 / 4, 2 / 4, 1 / 4])
    # the original group is unchanged: warm-up 3, then (12 - t) / 9
    assert old == pytest.approx([(12 - t) / 9 for t in range(4, 12)])


def test_restart_group_added_at_step_0_starts_one_step_later():
    # IncreLoRA's reserve group joins at step 0: factor 0 at steps 0 and 1, then 1/2, 1, then
    # decay over the horizon 10 - 1 = 9: (9 - u) / 7 at u = t - 1
    optimizer, scheduler = make(warmup=2, total=10)
    scheduler.add_param_group([torch.nn.Parameter(torch.zeros(1))], 0.0)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[1]["lr"])
        advance(optimizer, scheduler, 1)
    assert lrs == pytest.approx([0, 0, 0.5, 1, 6 / 7, 5 / 7, 4 / 7, 3 / 7, 2 / 7, 1 / 7])


def test_restart_group_refuses_parameters_that_already_have_a_gradient():
    _, scheduler = make()
    param = torch.nn.Parameter(torch.zeros(2))
    param.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match="gradient"):
        scheduler.add_param_group([param], 0.0)


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


def test_train_log_records_the_lr_each_step_used(make_cfg):
    import json
    from pathlib import Path

    from adarank import run as run_module

    cfg, overrides = make_cfg(["method=bitfit", "train.log_interval=1"])
    metrics = run_module.run(cfg, overrides)
    folder = next(Path(cfg.results.root).rglob(metrics["variant"]))
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    lrs = [record["lr"] for record in log if "lr" in record]
    # no warm-up, T = 4: optimizer steps 0..3 (logged as steps 1..4) use (4 - t) / 4 of the peak
    peak = float(cfg.task.lr)
    assert lrs == pytest.approx([peak * (4 - t) / 4 for t in range(4)])
