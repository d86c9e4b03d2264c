"""AdaLoRA through peft: cubic budget at the masking steps, final pattern, orthogonal term in the
loss, exact total_step and early schedule errors, targets and heads, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from adarank.methods.adalora import AdaLoRA
from adarank.methods.base import StepContext
from adarank.models import adapted_module_names, load_model
from adarank.results import validate_run_folder
from adarank.training.optim import GrowingLinearSchedule, build_optimizer
from tests.conftest import CONF_DIR, compose

MODEL_CFG = OmegaConf.load(CONF_DIR / "model" / "tiny.yaml")
M = 12  # 2 layers x 6 encoder linears




def make_task(**adalora):
    task = OmegaConf.load(CONF_DIR / "task" / "rte.yaml")
    task.adalora.update(adalora)
    return task


def build(total_steps, **adalora):
    torch.manual_seed(0)
    task = make_task(**adalora)
    method = AdaLoRA(OmegaConf.create({"name": "adalora"}), task, None, MODEL_CFG)
    model = method.prepare(load_model(MODEL_CFG, "sequence_classification", 2, 0.0))
    method.set_total_steps(total_steps)
    optimizer = build_optimizer(method.optimizer_groups(model, 0.01), 5e-3)
    scheduler = GrowingLinearSchedule(optimizer, method.lr_warmup_steps(total_steps), total_steps)
    return method, model, optimizer, scheduler


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (4, 8), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (4,), generator=g)}


def hand_budget(t, b0, bt, ti, tf, total):
    """Official schedule_threshold, written out independently of the code under test."""
    if t <= ti:
        return b0
    if t > total - tf:
        return bt
    return int(bt + (b0 - bt) * (1 - (t - ti) / (total - tf - ti)) ** 3)


@pytest.mark.parametrize(
    "total,mask_steps",
    [
        (26, [6, 9, 12, 15, 18]),  # T - t_final = 18 is a masking step: the final mask there
        # T - t_final = 16 is not (16 % 3 != 0): like the official code, no mask at 16 and the
        # first b_T mask at 17, the first step > T - t_final (peft alone would force it at 16)
        (24, [6, 9, 12, 15, 17]),
    ],
)
def test_kept_rank_follows_the_cubic_budget_at_every_masking_step_and_ends_at_target(total, mask_steps):
    ti, tf, dt = 4, 8, 3
    method, model, optimizer, scheduler = build(
        total, init_warmup=ti, final_warmup=tf, mask_interval=dt, warmup_steps=2
    )
    b0, bt = 12 * M, 8 * M
    model.train()
    kept_after_mask = {}
    for step in range(total):
        out = model(**batch(step))
        (out.loss + method.extra_loss(model)).backward()
        ctx = StepContext(step, total, model, optimizer, scheduler)
        method.before_optimizer_step(ctx)
        optimizer.step()
        scheduler.step()
        method.after_optimizer_step(ctx)
        if method.growth_log and method.growth_log[-1]["step"] == step:
            kept_after_mask[step] = sum(
                int((layer.lora_E["default"] != 0).sum()) for layer in method.svd_layers().values()
            )
        optimizer.zero_grad(set_to_none=True)
    final = total - tf
    # official schedule_threshold: masks at t_init < t <= T - t_final with t % ΔT == 0 (b_T at
    # T - t_final), then at every t > T - t_final (b_T; logged once, at the first of them)
    expected_steps = [t for t in range(ti + 1, final + 1) if t % dt == 0] + ([final + 1] if final % dt else [])
    assert [e["step"] for e in method.growth_log] == expected_steps == mask_steps
    for event in method.growth_log:
        budget = hand_budget(event["step"], b0, bt, ti, tf, total)
        assert event["budget"] == budget and event["k"] == b0 - budget
        assert event["total_rank"] == budget  # peft's stored pattern
        assert kept_after_mask[event["step"]] == budget  # nonzero E entries right after masking
    assert [e["budget"] for e in method.growth_log][-1] == bt and method.growth_log[-1]["final"]
    pattern = method.rank_pattern(model)
    assert sum(pattern.values()) == 8 * M
    fresh = load_model(MODEL_CFG, "sequence_classification", 2, 0.0)
    assert set(pattern) == set(adapted_module_names(fresh, MODEL_CFG.target_regex))
    assert max(pattern.values()) <= 12
    # after the final mask the pattern is re-applied every step: masked E stay exactly 0
    assert sum(int((layer.lora_E["default"] != 0).sum()) for layer in method.svd_layers().values()) == bt
    summary = method.summary(model)
    assert summary["total_rank"] == bt and summary["init_total_rank"] == b0 and summary["masking_events"] == 5


def test_the_orthogonal_term_enters_the_loss_once_with_the_task_weight():
    method, model, _, _ = build(30, init_warmup=2, final_warmup=5)
    assert method.reg_coef == 0.3  # RTE's Reg Orth Coef (Table V), not peft's default 0.5
    with torch.no_grad():  # make A, B far from orthogonal so the term is large
        for layer in method.svd_layers().values():
            layer.lora_A["default"].mul_(7.0)
    model.eval()
    data = batch(0)
    out = model(**data)
    # the model's own loss is plain cross-entropy: peft's forward adds nothing (no double count)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, data["labels"]))
    terms = []
    for layer in method.svd_layers().values():
        a, b = layer.lora_A["default"], layer.lora_B["default"]
        terms.append(torch.linalg.norm(a @ a.T - torch.eye(12)))
        terms.append(torch.linalg.norm(b.T @ b - torch.eye(12)))
    expected = 0.3 * torch.stack(terms).mean()
    extra = method.extra_loss(model)
    torch.testing.assert_close(extra, expected)
    assert float(extra.detach()) > 0.1
    # the same quantity as peft's own regulariser (AdaLoraModel.forward with orth_reg_weight = 0.3)
    method.peft_config.orth_reg_weight = 0.3
    with_peft_reg = method.tuner(**data).loss
    method.peft_config.orth_reg_weight = 0.0
    torch.testing.assert_close(with_peft_reg - out.loss, extra)
    # and it reaches the gradients of A
    (out.loss + extra).backward()
    assert any(layer.lora_A["default"].grad.abs().sum() > 0 for layer in method.svd_layers().values())


def test_targets_are_the_encoder_linears_and_heads_train():
    method, model, _, _ = build(30, init_warmup=2, final_warmup=5)
    layers = method.svd_layers()
    assert len(layers) == M and not any("pooler" in name for name in layers)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("classifier" in n for n in trainable) and any("pooler" in n for n in trainable)
    assert all("lora_" in n or "classifier" in n or "pooler" in n for n in trainable)
    config = method.peft_config
    assert (config.init_r, config.target_r, config.tinit, config.tfinal) == (12, 8, 2, 5)
    assert config.total_step == 30 and config.beta1 == config.beta2 == 0.85 and config.lora_alpha == 32


def test_total_step_must_be_exact():
    method, model, optimizer, scheduler = build(30, init_warmup=2, final_warmup=5)
    with pytest.raises(RuntimeError, match="total_step"):
        method.after_optimizer_step(StepContext(0, 31, model, optimizer, scheduler))


def test_schedule_without_a_budget_phase_fails_before_training(make_cfg):
    from adarank.checks import ConfigError
    from adarank.run import run

    task = make_task()
    with pytest.raises(ValueError, match="t_init=600 >= total_steps - t_final"):
        AdaLoRA.check_config(OmegaConf.create({"name": "adalora"}), task, "none", MODEL_CFG, 2400)
    AdaLoRA.check_config(OmegaConf.create({"name": "adalora"}), task, "none", MODEL_CFG, 2401)
    with pytest.raises(ValueError, match="final_warmup must be >= 1"):
        AdaLoRA.check_config(OmegaConf.create({"name": "adalora"}), make_task(final_warmup=0), "none", MODEL_CFG, 99)
    # T - t_final = 11 is no multiple of ΔT = 3 and no step follows it: the official final mask
    # (the first step after it) never runs
    short = make_task(init_warmup=2, final_warmup=1, mask_interval=3)
    with pytest.raises(ValueError, match="final mask never runs"):
        AdaLoRA.check_config(OmegaConf.create({"name": "adalora"}), short, "none", MODEL_CFG, 12)
    AdaLoRA.check_config(OmegaConf.create({"name": "adalora"}), short, "none", MODEL_CFG, 13)  # 12 % 3 == 0
    # through the entrypoint: RTE's t_init 600 / t_final 1800 cannot fit into 4 steps
    cfg, overrides = make_cfg(["method=adalora"])
    with pytest.raises(ConfigError, match="no budget phase"):
        run(cfg, overrides)
    assert not list(Path(cfg.results.root).rglob("train_log.jsonl"))


def test_lr_warmup_comes_from_the_adalora_rows():
    rte = AdaLoRA(OmegaConf.create({"name": "adalora"}), compose(["task=rte"]).task, None, MODEL_CFG)
    assert rte.lr_warmup_steps(3900) == 200
    mrpc = AdaLoRA(OmegaConf.create({"name": "adalora"}), compose(["task=mrpc"]).task, None, MODEL_CFG)
    assert mrpc.lr_warmup_steps(3450) == math.ceil(345.0)
    assert mrpc.lr_warmup_steps(3451) == 346


def test_end_to_end_run_writes_a_complete_results_folder(make_cfg):
    from adarank.run import run

    cfg, overrides = make_cfg(
        [
            "method=adalora",
            "task.adalora.init_warmup=1",
            "task.adalora.final_warmup=2",
            "task.adalora.mask_interval=1",
            "task.adalora.warmup_steps=0",
            "train.max_steps=6",
        ]
    )
    metrics = run(cfg, overrides)
    folder = next(Path(cfg.results.root).rglob("metrics.json")).parent
    assert validate_run_folder(folder) == []
    pattern = json.loads((folder / "rank_pattern.json").read_text())
    growth = [json.loads(line) for line in (folder / "growth_log.jsonl").read_text().splitlines()]
    assert len(pattern) == M and sum(pattern.values()) == 8 * M
    assert [e["step"] for e in growth] == [2, 3, 4] and growth[-1]["total_rank"] == 8 * M
    assert metrics["rank"]["total_rank"] == 8 * M and metrics["method"] == "adalora"
    train_log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert any("extra_loss" in record for record in train_log)  # the orthogonal term was logged
