"""DyLoRA (docs/dylora.md): the truncated forward and its scaling, which rows/columns the gradient
reaches, the per-step rank draw, the evaluation at every rank written by run(), save/load."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from adarank.checks import ConfigError
from adarank.methods.dylora import DyLoRA, DyLoRALinear
from adarank.models import load_model
from adarank.results import validate_run_folder
from adarank.run import run
from tests.toys import ToyEncoder, train_toy


def layer(update="last", r=4, alpha=8.0):
    torch.manual_seed(0)
    out = DyLoRALinear(nn.Linear(5, 3), max_rank=r, alpha=alpha, update=update)
    with torch.no_grad():
        out.lora_B.normal_()
    return out


def test_forward_is_the_truncated_adapter_scaled_by_alpha_over_b():
    lin = layer()
    x = torch.randn(2, 5)
    for b in range(1, 5):
        lin.eval_rank = b
        expected = x @ lin.base.weight.t() + lin.base.bias + (8.0 / b) * x @ lin.lora_A[:b].t() @ lin.lora_B[:, :b].t()
        torch.testing.assert_close(lin.eval()(x), expected)
        torch.testing.assert_close(lin.delta_weight(b), (8.0 / b) * lin.lora_B[:, :b] @ lin.lora_A[:b])
    # the official form alpha/r_max * sqrt(r_max/b) on A and on B is the same scale
    assert 8.0 / 4 * (4 / 3) ** 0.5 * (4 / 3) ** 0.5 == pytest.approx(8.0 / 3)


@pytest.mark.parametrize("update, reached", [("last", [2]), ("all", [0, 1, 2])])
def test_gradient_reaches_rank_b_only_by_default(update, reached):
    lin = layer(update).train()
    lin.train_rank = 3
    lin(torch.randn(6, 5)).pow(2).sum().backward()
    rows_a = [i for i in range(4) if lin.lora_A.grad[i].abs().sum() > 0]
    cols_b = [i for i in range(4) if lin.lora_B.grad[:, i].abs().sum() > 0]
    assert rows_a == reached and cols_b == reached
    # the forward value does not depend on the detaching
    lin.eval_rank = 3
    x = torch.randn(2, 5)
    torch.testing.assert_close(lin.train()(x), lin.eval()(x))


def test_one_rank_per_step_drawn_uniformly_from_torch_generator():
    torch.manual_seed(0)
    model = ToyEncoder(6, 3, num_layers=2)
    method = DyLoRA(OmegaConf.create({"name": "dylora", "max_rank": 4}),
                    OmegaConf.create({"reference_rank": 8, "alpha": 8, "lora_dropout": 0.0}), None,
                    OmegaConf.create({"target_regex": r".*\.(query|value)", "head_modules": ["classifier"]}))
    method.prepare(model)
    seen = []
    original = method._draw_rank

    def spy():
        original()
        seen.append(method.current_rank)
        assert {layer.train_rank for layer in method.layers.values()} == {method.current_rank}

    method._draw_rank = spy
    train_toy(method, model, 40, 6, 1.0)
    assert len(seen) == 41 and set(seen) == {1, 2, 3, 4}  # the first step's b, then one per step
    assert method.rank_counts == [seen[:40].count(b) for b in (1, 2, 3, 4)]
    assert method.rank_pattern(model) == {f"encoder.layer.{i}.{m}": 4 for i in range(2) for m in ("query", "value")}


def test_run_evaluates_every_rank_and_reports_r_max_as_primary(make_cfg, caplog):
    cfg, overrides = make_cfg([
        "method=dylora", "task.batch_size=8", "train.max_steps=6", "train.eval_interval=3",
        "train.max_eval_samples=8",
    ])
    with caplog.at_level(logging.INFO, logger="adarank.methods.dylora"):
        metrics = run(cfg, overrides)
    progress = [r.getMessage() for r in caplog.records if r.name == "adarank.methods.dylora"]
    assert len(progress) == 9 and progress[-1].startswith("DyLoRA rank 8/8: accuracy ")  # one line per rank
    [folder] = [p.parent for p in Path(cfg.results.root).rglob("metrics.json")]
    assert validate_run_folder(folder) == []
    assert list(metrics["by_rank"]) == [str(b) for b in range(1, 9)]
    assert metrics["by_rank"]["8"]["accuracy"] == metrics["final"]["accuracy"]
    assert metrics["evaluations"] == 2  # periodic + final; the 8 rank passes come after
    assert json.loads((folder / "rank_pattern.json").read_text()) == {n: 8 for n in json.loads((folder / "rank_pattern.json").read_text())}
    assert metrics["rank"]["total_rank"] == 8 * 12 and sum(metrics["rank"]["sampled_rank_counts"]) == 6
    assert (folder / "growth_log.jsonl").read_text() == ""


def test_save_load_round_trip_gives_identical_logits_at_every_rank(make_cfg, tmp_path):
    cfg, _ = make_cfg(["method=dylora", "task.reference_rank=4"])

    def fresh():
        torch.manual_seed(0)
        return load_model(cfg.model, "sequence_classification", 2, 0.0)

    method = DyLoRA(cfg.method, cfg.task, None, cfg.model)
    model = method.prepare(fresh())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))
    method.save_adapter(model, str(tmp_path / "adapter"))
    ids = torch.randint(5, 1000, (2, 7), generator=torch.Generator().manual_seed(1))
    loaded = DyLoRA.load_adapter(fresh(), str(tmp_path / "adapter"))
    for b in (1, 3, 4):
        for m in (model, loaded):
            for lin in m.modules():
                if isinstance(lin, DyLoRALinear):
                    lin.eval_rank = b
        with torch.no_grad():
            assert torch.equal(model.eval()(input_ids=ids).logits, loaded.eval()(input_ids=ids).logits)


@pytest.mark.parametrize("override, message", [
    ("+method.rank=3", "unknown config key"),
    ("method.max_rank=0", "max_rank"),
    ("method.update=first", "update"),
])
def test_options_are_checked_before_any_training(make_cfg, override, message):
    cfg, overrides = make_cfg(["method=dylora", override])
    with pytest.raises(ConfigError, match=message):
        run(cfg, overrides)
    assert not list(Path(cfg.results.root).rglob("train_log.jsonl"))
