"""ALoRA (docs/alora.md): the gated layer, Eq. 6 on a hand-computed toy, batched ablation scoring
equal to one configuration at a time (DeBERTa's shared relative-position projections included),
pruning and footnote 3's reallocation, budget accounting, optimizer state of surviving parameters,
an end-to-end run, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from adarank.checks import ConfigError
from adarank.methods.alora import ALoRA
from adarank.methods.alora import method as alora_method
from adarank.methods.alora.allocator import (
    ablation_configs, ablation_scores, distribute, hf_loss, importance, lowest, round_steps,
)
from adarank.methods.alora.layer import GatedLoRALinear
from adarank.methods.base import StepContext
from adarank.models import load_model
from adarank.results import validate_run_folder
from adarank.run import run
from adarank.training.optim import GrowingLinearSchedule, build_optimizer
from tests.conftest import compose
from tests.toys import ToyStack

TASK = OmegaConf.create({"reference_rank": 2, "alpha": 4, "lora_dropout": 0.0, "weight_decay": 0.01, "batch_size": 4})
TOY_MODEL = OmegaConf.create({"target_regex": r"layers\.\d+", "head_modules": ["head"]})


def toy_loss(model, batch):
    return nn.functional.cross_entropy(model(batch["x"]), batch["labels"], reduction="none")


# --- the pieces, by hand --------------------------------------------------------------------------


def test_layer_is_base_plus_gated_update_scaled_by_alpha_over_r_init():
    torch.manual_seed(0)
    lin = GatedLoRALinear(nn.Linear(4, 3), init_rank=2, alpha=4.0)
    new = lin.add_ranks(1)
    assert torch.equal(new[1], torch.zeros(3, 1))  # a new rank starts with B = 0: the output is unchanged
    with torch.no_grad():
        for p in (*lin.lora_B, *new):
            p.normal_()
    lin.prune([1])
    a = torch.cat(list(lin.lora_A)); b = torch.cat(list(lin.lora_B), 1)
    x = torch.randn(5, 4)
    expected = lin.base(x) + 2.0 * x @ a.t() @ torch.diag(torch.tensor([1.0, 0.0, 1.0])) @ b.t()
    torch.testing.assert_close(lin(x), expected)
    assert lin.rank == 2 and lin.slots == 3 and lin.blocks == [2, 1] and lin.live() == [0, 2]


def test_importance_is_eq6_on_a_hand_computed_toy():
    """One 1x1 module, no base: y = g1·1 + g2·2 (A = [1, 1], B = [1, 2], α/r = 1), loss (y - 3)².
    S(M) = 0; S(M\\1) = -1, S(M\\2) = -4; S(M_1) = -4, S(M_2) = -1, so
    IS(1) = 0 + 1 - 4 = -3 and IS(2) = 0 + 4 - 1 = 3: rank 1 is the one to prune."""
    lin = GatedLoRALinear(nn.Linear(1, 1), init_rank=2, alpha=2.0)
    with torch.no_grad():
        lin.base.weight.zero_(); lin.base.bias.zero_()
        lin.lora_A[0].copy_(torch.tensor([[1.0], [1.0]])); lin.lora_B[0].copy_(torch.tensor([[1.0, 2.0]]))
    configs, ranks = ablation_configs(lin.gate)
    assert configs.tolist() == [[1, 1], [0, 1], [1, 0], [1, 0], [0, 1]] and ranks.tolist() == [0, 1]
    batch = {"x": torch.ones(2, 1)}
    scores, forwards = ablation_scores(lin, [lin], configs, batch, lambda m, b: (m(b["x"]).squeeze(-1) - 3) ** 2)
    assert scores.tolist() == [0.0, -1.0, -4.0, -4.0, -1.0] and forwards == 2  # M alone, then the other 4 together
    assert importance(scores).tolist() == [-3.0, 3.0]


def test_prune_and_distribute_rules():
    assert lowest(torch.tensor([0.5, -1.0, 0.2, -1.0]), 2) == [1, 3]
    assert lowest(torch.tensor([0.0, 0.0, 0.0]), 2) == [0, 1]  # ties: the earlier rank
    # footnote 3: 8 ranks over m1 > m2 > m3 (mean IS) -> 3, 3, 2
    assert distribute(8, [0, 1, 2], {0: 0.9, 1: 0.5, 2: 0.1}) == {0: 3, 1: 3, 2: 2}
    assert distribute(2, [4, 7, 9], {4: 0.1, 7: 0.3, 9: 0.2}) == {7: 1, 9: 1}
    assert distribute(3, [], {}) == {}
    # K1 = round(1 x 5) = 5, K2 = round(0.25 x 5 = 1.25) = 1; with 10 steps per epoch K2 = round(2.5) = 3
    assert round_steps(5, 1.0, 0.25, 3) == [5, 6, 7]
    assert round_steps(10, 1.0, 0.25, 3) == [10, 13, 16]


def test_batched_scores_equal_one_configuration_at_a_time_on_deberta(make_cfg):
    """DeBERTa projects its relative-position embeddings once per batch with query_proj/key_proj:
    configurations differing there never share a pass, and every score equals the plain forward."""
    cfg, _ = make_cfg(["method=alora", "task.reference_rank=2", "model.num_layers=1"])
    torch.manual_seed(0)
    model = load_model(cfg.model, "sequence_classification", 2, 0.0)
    method = ALoRA(cfg.method, cfg.task, None, cfg.model)
    method.prepare(model)
    layers = list(method.layers.values())
    with torch.no_grad():
        for layer in layers:
            layer.lora_B[0].normal_(0, 0.5)
    batch = {"input_ids": torch.randint(5, 900, (3, 9), generator=torch.Generator().manual_seed(1)),
             "attention_mask": torch.ones(3, 9, dtype=torch.long), "labels": torch.tensor([0, 1, 1])}
    configs, _ = ablation_configs(torch.cat([layer.gate for layer in layers]))
    batched, forwards = ablation_scores(model, layers, configs, batch, examples_per_forward=64)
    # 6 modules x 2 ranks: 25 configurations; the 8 that differ on query/key go alone
    assert configs.shape[0] == 25 and forwards == 1 + 8 + 2
    assert {l: layers[i].saw_shared_input for i, l in enumerate(method.layers)} == {
        n: n.endswith(("query_proj", "key_proj")) for n in method.layers}
    model.eval()
    with torch.no_grad():
        for c in range(configs.shape[0]):
            for layer, g in zip(layers, configs[c].split([2] * len(layers))):
                layer.gate.copy_(g)
            assert float(-hf_loss(model, batch).mean()) == pytest.approx(float(batched[c]), abs=1e-5)
        assert float(-hf_loss(model, batch).mean()) == pytest.approx(float(model(**batch).loss.neg()), abs=1e-6)


@pytest.mark.parametrize("head, num_labels", [("sequence_classification", 1), ("question_answering", 2)])
def test_per_example_loss_averages_to_the_model_loss(make_cfg, head, num_labels):
    cfg, _ = make_cfg(["model.num_layers=1"])
    torch.manual_seed(0)
    model = load_model(cfg.model, head, num_labels, 0.0).eval()
    batch = {"input_ids": torch.randint(5, 900, (3, 9), generator=torch.Generator().manual_seed(1))}
    if head == "question_answering":
        batch.update(start_positions=torch.tensor([0, 3, 5]), end_positions=torch.tensor([0, 4, 8]))
    else:
        batch["labels"] = torch.tensor([0.5, 2.0, 4.5])
    with torch.no_grad():
        assert float(hf_loss(model, batch).mean()) == pytest.approx(float(model(**batch).loss), rel=1e-5)


# --- one round on a toy ---------------------------------------------------------------------------


def toy_method(modules=3, **method_over):
    torch.manual_seed(0)
    method = ALoRA(OmegaConf.create({"name": "alora", "val_examples": 4, **method_over}), TASK, None, TOY_MODEL)
    model = method.prepare(ToyStack(modules, 6, 2))
    method.loss_fn = toy_loss
    method.val_batch = {"x": torch.randn(4, 6), "labels": torch.tensor([0, 1, 0, 1])}
    method.round_at = [3]
    optimizer = build_optimizer(method.optimizer_groups(model, 0.01), 1e-2)
    scheduler = GrowingLinearSchedule(optimizer, 1, 10)
    return method, model, optimizer, scheduler


def fake_scores(values):
    """ablation_scores stand-in whose IS per live rank is ``values`` (S(M) = 0, S(M\\r) = 0)."""
    def scores(model, layers, configs, batch, loss_fn, per):
        n = len(values)
        assert configs.shape[0] == 1 + 2 * n
        return torch.tensor([0.0] + [0.0] * n + list(values)), 1
    return scores


def test_round_prunes_lowest_and_gives_ranks_to_untouched_modules(monkeypatch):
    method, model, optimizer, scheduler = toy_method()
    # live ranks in order: layers.0 slots 0,1 | layers.1 slots 0,1 | layers.2 slots 0,1; n_A = 3
    monkeypatch.setattr(alora_method, "ablation_scores", fake_scores([-5, 1, -4, -3, 2, 4]))
    params_before = sum(p.numel() for p in model.parameters() if p.requires_grad)
    event, params = method.allocation_round(model, 3)
    # lowest three: layers.0/0 (-5), layers.1/0 (-4), layers.1/1 (-3); only layers.2 lost none -> all 3
    assert event["pruned"] == {"layers.0": [0], "layers.1": [0, 1]} and event["added"] == {"layers.2": 3}
    assert event["threshold"] == -3.0
    assert method.rank_pattern(model) == {"layers.0": 1, "layers.1": 0, "layers.2": 5}
    assert event["total_rank"] == 6 == event["budget"]  # budget r_ref x M kept
    assert [p.shape for p in params] == [(3, 6), (6, 3)]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == params_before + 3 * (6 + 6)
    # live now: layers.0 slot 1 | layers.2 slots 0..4 (2 new); a module with no live rank
    # (layers.1) is not "a module that lost none": it gets nothing
    monkeypatch.setattr(alora_method, "ablation_scores", fake_scores([0.5, 3, 2, 1, 0, -1]))
    event, _ = method.allocation_round(model, 4)
    assert event["pruned"] == {"layers.0": [1], "layers.2": [3, 4]} and event["added"] == {}
    assert method.rank_pattern(model) == {"layers.0": 0, "layers.1": 0, "layers.2": 3}


def test_footnote3_split_by_mean_importance(monkeypatch):
    method, model, *_ = toy_method(modules=4, prune_per_module=1)
    # n_A = 4, all from layers.0 (2) and layers.1 (2); layers.2 mean 1.5 > layers.3 mean 1.0: 2 + 2
    monkeypatch.setattr(alora_method, "ablation_scores", fake_scores([-9, -8, -7, -6, 1, 2, 1, 1]))
    event, _ = method.allocation_round(model, 3)
    assert event["added"] == {"layers.2": 2, "layers.3": 2}
    monkeypatch.setattr(alora_method, "ablation_scores", fake_scores([-9, -8, -7, 5, 1, 1, 1, 1]))
    # live now: layers.2 (4 ranks), layers.3 (4); n_A = 4 lowest: -9, -8, -7 (layers.2) and the
    # first 1 of layers.3 (ties: earlier); no module kept all its ranks -> nothing added
    event, _ = method.allocation_round(model, 4)
    assert event["added"] == {} and method.rank_pattern(model)["layers.2"] == 1


def test_optimizer_state_of_surviving_parameters_is_untouched_and_new_ranks_join_as_a_group():
    method, model, optimizer, scheduler = toy_method()
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 0, 1, 1])

    def step(t):
        nn.functional.cross_entropy(model(x), y).backward()
        method.before_optimizer_step(StepContext(t, 10, model, optimizer, scheduler))

    for t in range(3):
        step(t); optimizer.step(); scheduler.step(); optimizer.zero_grad(set_to_none=True)
    old = [p for g in optimizer.param_groups for p in g["params"]]
    state = {id(p): {k: v.clone() for k, v in optimizer.state[p].items()} for p in old}
    values = {id(p): p.detach().clone() for p in old}
    step(3)  # the round (before this step's update)
    assert len(method.growth_log) == 1 and len(optimizer.param_groups) == 3
    for p in old:
        assert torch.equal(p, values[id(p)])
        assert all(torch.equal(optimizer.state[p][k], v) for k, v in state[id(p)].items())
    new = optimizer.param_groups[-1]["params"]
    grown = [layer for layer in method.layers.values() if len(layer.lora_A) > 1]
    assert grown and [id(p) for p in new] == [id(p) for layer in grown for p in (layer.lora_A[1], layer.lora_B[1])]
    assert optimizer.param_groups[-1]["weight_decay"] == 0.01 and all(p not in optimizer.state for p in new)
    optimizer.step(); scheduler.step()
    assert method.allocation_seconds > 0


# --- through run() --------------------------------------------------------------------------------

E2E = ["method=alora", "task.batch_size=8", "train.max_steps=9", "train.eval_interval=9", "train.max_eval_samples=8",
       "method.val_examples=8", "method.rounds=2", "method.k2_epochs=0.4", "task.lr=0.01"]


def test_end_to_end_run_and_adapter_round_trip(make_cfg, tmp_path):
    cfg, overrides = make_cfg([*E2E, "results.save_adapter=true"])
    metrics = run(cfg, overrides)
    [folder] = [p.parent for p in Path(cfg.results.root).rglob("metrics.json")]
    assert validate_run_folder(folder) == []
    log = [json.loads(line) for line in (folder / "growth_log.jsonl").read_text().splitlines()]
    # 48 rows - 8 held out = 40, batch 8: 5 steps per epoch; K1 = 5, K2 = round(2) = 2
    assert [e["step"] for e in log] == [5, 7] == metrics["rank"]["round_steps"]
    assert all(sum(map(len, e["pruned"].values())) == 12 for e in log)  # n_A = 1 x 12 modules
    pattern = json.loads((folder / "rank_pattern.json").read_text())
    assert sum(pattern.values()) == log[-1]["total_rank"] == metrics["rank"]["total_rank"]
    assert metrics["costs"]["allocation_seconds"] > 0

    torch.manual_seed(0)
    fresh = load_model(cfg.model, "sequence_classification", 2, float(cfg.task.cls_dropout))
    ALoRA.load_adapter(fresh, str(folder / "adapter"))
    assert {n: l.rank for n, l in fresh.named_modules() if isinstance(l, GatedLoRALinear)} == pattern
    # the loaded model reproduces the final dev accuracy
    from adarank.data import build_task_data
    from adarank.models import load_tokenizer
    data = build_task_data(cfg.task, cfg.data, cfg.train, load_tokenizer(cfg.model))
    assert data.evaluate(fresh, torch.device("cpu"))["accuracy"] == metrics["final"]["accuracy"]


def test_save_load_round_trip_gives_identical_logits(tmp_path, monkeypatch):
    method, model, *_ = toy_method()
    monkeypatch.setattr(alora_method, "ablation_scores", fake_scores([-5, 1, -4, -3, 2, 4]))
    method.allocation_round(model, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    method.save_adapter(model, str(tmp_path / "a"))
    torch.manual_seed(1)
    fresh = ToyStack(3, 6, 2)
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if "base" not in k and "lora" not in k and "gate" not in k}, strict=False)
    for i in range(3):  # the frozen backbone comes from the same pretrained weights
        fresh.layers[i].load_state_dict(model.layers[i].base.state_dict())
    ALoRA.load_adapter(fresh, str(tmp_path / "a"))
    x = torch.randn(4, 6)
    assert torch.equal(model.eval()(x), fresh.eval()(x))


@pytest.mark.parametrize("override, message", [
    ("method.val_examples=48", "leave nothing to train on"),
    ("method.rounds=3", "last of the 3 allocation rounds is at optimizer step 9"),
    ("+method.beta1=0.8", "unknown config key"),
    ("method.new_group_lr=warm", "new_group_lr"),
])
def test_options_are_checked_before_any_training(make_cfg, override, message):
    cfg, overrides = make_cfg([*E2E, override])
    with pytest.raises(ConfigError, match=message):
        run(cfg, overrides)
    assert not list(Path(cfg.results.root).rglob("train_log.jsonl"))


def test_scaled_schedule_scales_the_rounds_and_the_smoke_preset_fits_every_glue_task():
    from adarank.schedule_scaling import apply
    from tests.test_schedule_scaling import GLUE_TRAIN_SIZES

    # MRPC: epoch = ceil(3668 / 32) = 115 steps, full run 115 x 30 = 3450; 120 / 3450 of it:
    # K1 = 115 -> round(4.0) = 4, K2 = round(28.75) = 29 -> round(1.009) = 1
    cfg = compose(["task=mrpc", "method=alora", "+preset=smoke"])
    report = apply(cfg, 120, 3668)
    assert report["values"]["method.k1_steps"] == {"paper": 115, "scaled": 4}
    assert report["values"]["method.k2_steps"] == {"paper": 29, "scaled": 1}
    assert alora_method._schedule(cfg.method, cfg.task, 3668) == list(range(4, 12))
    for task, size in GLUE_TRAIN_SIZES.items():
        cfg = compose([f"task={task}", "method=alora", "+preset=smoke"])
        apply(cfg, 120, size)
        ALoRA.check_data(cfg.method, cfg.task, 120, size)
