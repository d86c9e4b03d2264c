"""DoRA, rsLoRA, PiSSA, LoRA+ and EVA through peft (docs/baselines.md): each method's defining
quantity checked against its definition, their up-front checks, and EVA's allocation end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from adarank.checks import ConfigError, check_schedule, check_static
from adarank.methods import method_class
from adarank.methods.peft_support import ADAPTER, lora_layers
from adarank.results import validate_run_folder
from adarank.run import run
from adarank.training.optim import GrowingLinearSchedule, build_optimizer
from tests.conftest import compose
from tests.toys import ToyEncoder

TOY_MODEL = OmegaConf.create({"target_regex": r".*\.(query|value)", "head_modules": ["classifier"], "family": "toy"})
TASK = OmegaConf.create({"reference_rank": 4, "alpha": 8.0, "lora_dropout": 0.0, "lr": 1e-3, "kind": "glue"})


def toy(method: str, options: dict | None = None, width: int = 6):
    """A ToyEncoder with ``method``'s peft adapters (rank 4, alpha 8)."""
    torch.manual_seed(0)
    model = ToyEncoder(width, 3, num_layers=2)
    obj = method_class(method)(OmegaConf.create({"name": method, **(options or {})}), TASK, None, TOY_MODEL)
    return obj, obj.prepare(model)


def one_step(method, model, lr=1e-2, optimizer="adamw_torch", weight_decay=0.0):
    optimizer = build_optimizer(method.optimizer_groups(model, weight_decay), lr, optimizer)
    scheduler = GrowingLinearSchedule(optimizer, 0, 10)
    x, y = torch.randn(8, 6, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    model(x, labels=y).backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return optimizer, scheduler


def test_dora_magnitude_and_direction_after_one_step_are_peft_s_definition():
    method, model = toy("dora")
    layers = lora_layers(model)
    for layer in layers.values():  # m starts at the row norms of W0 (B = 0): W' = W0
        w0 = layer.get_base_layer().weight
        torch.testing.assert_close(layer.lora_magnitude_vector[ADAPTER].weight, w0.norm(dim=1))
        with torch.no_grad():
            layer.lora_B[ADAPTER].weight.normal_(0, 0.3)  # so that A and m get gradients too
    before = {n: layer.lora_magnitude_vector[ADAPTER].weight.detach().clone() for n, layer in layers.items()}
    one_step(method, model)
    x = torch.randn(5, 6)
    for name, layer in layers.items():
        m = layer.lora_magnitude_vector[ADAPTER].weight
        assert not torch.equal(m, before[name])  # the magnitude trains
        base = layer.get_base_layer()
        s = layer.scaling[ADAPTER]
        assert s == 8.0 / 4
        v = base.weight + s * layer.lora_B[ADAPTER].weight @ layer.lora_A[ADAPTER].weight
        w_prime = (m / v.norm(dim=1)).unsqueeze(1) * v  # DoRA Eq. 5: m ⊙ V / ||V||_c, row norms
        with torch.no_grad():
            torch.testing.assert_close(layer.eval()(x), x @ w_prime.t() + base.bias)
    assert method.rank_pattern(model) == {f"encoder.layer.{i}.{m}": 4 for i in range(2) for m in ("query", "value")}


def test_rslora_scales_by_alpha_over_sqrt_r():
    _, model = toy("rslora")
    _, lora_model = toy("lora")
    for layer, plain in zip(lora_layers(model).values(), lora_layers(lora_model).values()):
        assert layer.scaling[ADAPTER] == 8.0 / math.sqrt(4) == 4.0
        assert plain.scaling[ADAPTER] == 8.0 / 4
        with torch.no_grad():
            layer.lora_B[ADAPTER].weight.normal_()
            x = torch.randn(3, 6)
            a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            torch.testing.assert_close(layer(x) - layer.get_base_layer()(x), 4.0 * x @ a.t() @ b.t())


@pytest.mark.parametrize("niter", [None, 4])
def test_pissa_starts_at_the_principal_directions_and_freezes_the_residual(niter):
    torch.manual_seed(0)
    original = ToyEncoder(6, 3, num_layers=2)
    weights = {n: m.weight.detach().clone() for n, m in original.named_modules() if n.endswith(("query", "value"))}
    method, model = toy("pissa", {"svd_niter": niter})
    for name, layer in lora_layers(model).items():
        w = weights[name]
        u, s, vh = torch.linalg.svd(w)
        a0, b0, scale = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight, layer.scaling[ADAPTER]
        residual = layer.get_base_layer().weight
        torch.testing.assert_close(w - scale * b0 @ a0, residual, atol=1e-6, rtol=0)  # W - BA = the frozen base
        if niter is not None:  # the fast SVD (q = r on a flat random spectrum) only approximates the top r
            continue
        principal = u[:, :4] @ torch.diag(s[:4]) @ vh[:4]
        torch.testing.assert_close(scale * b0 @ a0, principal, atol=1e-5, rtol=0)  # the top r directions
        torch.testing.assert_close(torch.linalg.svdvals(residual)[:2], s[4:], atol=1e-5, rtol=0)
        # A0's rows: the top right singular vectors scaled by sqrt(S_r / s), B0's columns the left ones
        torch.testing.assert_close(a0 @ a0.t(), torch.diag(s[:4] / scale), atol=1e-5, rtol=0)
        torch.testing.assert_close(b0.t() @ b0, torch.diag(s[:4] / scale), atol=1e-5, rtol=0)
    x = torch.randn(4, 6)
    with torch.no_grad():  # the model starts at the pretrained function
        torch.testing.assert_close(model(x), original(x), atol=1e-5, rtol=0)
    residuals = [layer.get_base_layer().weight.double().sum() for layer in lora_layers(model).values()]
    assert method.state_dict()["residual_checksum"] == float(sum(residuals))


def test_pissa_keeps_the_pretrained_query_for_deberta_s_frozen_positional_query():
    cfg = compose(["method=pissa", "model=tiny", "task=rte"])  # GLUE: positional query through the frozen weight
    from adarank.models import frozen_linear, load_model

    torch.manual_seed(0)
    model = load_model(cfg.model, "sequence_classification", 2, 0.0)
    originals = {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith("query_proj")}
    model = method_class("pissa")(cfg.method, cfg.task, None, cfg.model).prepare(model)
    layers = lora_layers(model)
    for name, weight in originals.items():
        assert torch.equal(frozen_linear(layers[name]).weight, weight)  # W, not W_res
        assert not torch.equal(layers[name].get_base_layer().weight, weight)
    squad = compose(["method=pissa", "model=tiny", "task=squad_v2"])  # through the adapter: nothing kept
    model = method_class("pissa")(squad.method, squad.task, None, squad.model).prepare(
        load_model(squad.model, "question_answering", 2, 0.0))
    assert not any(hasattr(layer, "pretrained_linear") for layer in lora_layers(model).values())


@pytest.mark.parametrize("optimizer", ["adamw_legacy", "adamw_torch"])
def test_loraplus_trains_b_at_lambda_times_the_lr_through_the_schedule(optimizer):
    method, model = toy("loraplus")
    groups = method.optimizer_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    by_lr = {}
    for group in groups:
        by_lr.setdefault((group["lr"], group["weight_decay"]), set()).update(names[id(p)] for p in group["params"])
    lora_a = {n for n in names.values() if "lora_A" in n}
    lora_b = {n for n in names.values() if "lora_B" in n}
    assert by_lr[(1e-3, 0.01)] == lora_a | {"base_model.model.classifier.modules_to_save.default.weight"}
    assert by_lr[(16e-3, 0.01)] == lora_b
    assert by_lr[(16e-3, 0.0)] == {"base_model.model.classifier.modules_to_save.default.bias"}  # 1-D: the B rate
    # the run's optimizer and LR schedule: every group follows the warm-up/decay from its own peak
    opt = build_optimizer(groups, method.learning_rate(), optimizer)
    assert type(opt).__name__ == {"adamw_legacy": "LegacyAdamW", "adamw_torch": "AdamW"}[optimizer]
    peaks = [g["lr"] for g in opt.param_groups]
    assert sorted(peaks) == pytest.approx([1e-3, 16e-3, 16e-3])
    scheduler = GrowingLinearSchedule(opt, 4, 20)
    for step in range(8):
        factor = min(step / 4, (20 - step) / 16)  # linear warm-up over 4 steps, then decay to 0 at 20
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([peak * factor for peak in peaks], abs=1e-15)
        scheduler.step()
    # and the optimizer uses them: Adam's first update has the size of the LR, |Δ| ≈ η for A, 16η for B
    method, model = toy("loraplus")
    for layer in lora_layers(model).values():
        with torch.no_grad():
            layer.lora_B[ADAPTER].weight.normal_()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    one_step(method, model, lr=1e-3, optimizer=optimizer)
    for name, param in model.named_parameters():
        if "lora_" in name:
            delta = (param - before[name]).abs()
            moved = delta[delta > 1e-7]
            assert moved.numel() > 0
            torch.testing.assert_close(moved.median(), torch.tensor(16e-3 if "lora_B" in name else 1e-3), rtol=0.05, atol=0)


def test_eva_redistributes_the_budget_and_reports_it_like_a_rank_allocation(make_cfg):
    cfg, overrides = make_cfg(["method=eva", "task.batch_size=8", "train.max_steps=3", "model.positional_query_adapter=true"])
    metrics = run(cfg, overrides)
    [folder] = [p.parent for p in Path(cfg.results.root).rglob("metrics.json")]
    assert validate_run_folder(folder) == []
    r, modules = 8, 12
    pattern = json.loads((folder / "rank_pattern.json").read_text())
    assert len(pattern) == modules and sum(pattern.values()) == r * modules  # the budget r x M, redistributed
    assert len(set(pattern.values())) > 1 and max(pattern.values()) <= 2 * r  # rho = 2
    [event] = [json.loads(line) for line in (folder / "growth_log.jsonl").read_text().splitlines()]
    assert event["step"] == 0 and event["total_rank"] == event["budget"] == r * modules
    assert event["modules"] == sorted(n for n, rank in pattern.items() if rank != r)
    assert event["k"] == sum(max(0, r - rank) for rank in pattern.values()) > 0
    assert metrics["rank"]["total_rank"] == r * modules
    assert metrics["costs"]["allocation_seconds"] > 0
    # a fresh prepare on the same batches gives the same allocation; the adapters have the ranks EVA
    # gave them, A starts at orthonormal right-singular vectors, B at 0, and alpha / r is the task's
    from adarank.data import build_task_data
    from adarank.models import load_model, load_tokenizer

    method = method_class("eva")(cfg.method, cfg.task, None, cfg.model)
    data = build_task_data(cfg.task, cfg.data, cfg.train, load_tokenizer(cfg.model))
    torch.manual_seed(0)
    model = method.prepare(load_model(cfg.model, "sequence_classification", 2, 0.0))
    from adarank.models import set_positional_query_adapter

    set_positional_query_adapter(model, True)
    method.training_data(data.train_dataset, data.collate, 0)
    assert method.rank_pattern(model) == pattern
    for name, layer in lora_layers(model).items():
        a = layer.lora_A[ADAPTER].weight
        assert a.shape[0] == pattern[name]
        torch.testing.assert_close(a @ a.t(), torch.eye(a.shape[0]), atol=1e-4, rtol=0)
        assert not layer.lora_B[ADAPTER].weight.any()
        assert layer.scaling[ADAPTER] == pytest.approx(float(cfg.task.alpha) / r)


def test_eva_stops_with_a_clear_error_when_it_does_not_converge(make_cfg):
    cfg, overrides = make_cfg(["method=eva", "task.batch_size=8", "method.batch_size=4", "method.tau=1.0",
                               "method.max_batches=2"])
    from adarank.methods.eva import EvaNotConverged

    with pytest.raises(EvaNotConverged, match="method.max_batches=2"):
        run(cfg, overrides)


@pytest.mark.parametrize("overrides, message", [
    (["method=dora", "threshold=linear"], "does not grow ranks"),
    (["method=eva", "threshold=fixed"], "does not grow ranks"),
    (["method=sora", "threshold=nonlinear"], "does not grow ranks"),
    (["method=rslora", "+method.r=4"], "unknown config key method.r"),
    (["method=pissa", "+method.niter=4"], "unknown config key method.niter"),
])
def test_options_that_do_not_apply_are_refused_by_the_static_check(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_static(compose(overrides))


@pytest.mark.parametrize("overrides, message", [
    (["method=pissa", "method.svd_niter=0"], "svd_niter must be null .* or an integer >= 1, not 0"),
    (["method=pissa", "method.svd_niter=2.5"], "svd_niter"),
    (["method=pissa", "method.svd_niter=true"], "svd_niter"),
    (["method=loraplus", "method.lr_ratio=0.5"], "lr_ratio .* must be a number >= 1, not 0.5"),
    (["method=loraplus", "method.lr_ratio=fast"], "lr_ratio"),
    (["method=eva", "method.rho=0.5"], "rho must be a number >= 1"),
    (["method=eva", "method.tau=1.5"], r"tau must be a number in \[0, 1\]"),
    (["method=eva", "method.batch_size=1"], "batch_size must be an integer >= 2"),
    (["method=eva", "method.max_batches=0"], "max_batches must be an integer >= 1"),
    (["method=eva", "method.whiten=yes"], "whiten must be true or false"),
    (["method=dora", "task.lora_dropout=1.0"], "lora_dropout must lie in"),
    (["method=rslora", "task.alpha=0"], "task.alpha must be > 0"),
    (["method=dora", "task.reference_rank=0"], "reference_rank must be an integer >= 1"),
])
def test_bad_option_values_are_refused_before_any_compute(overrides, message):
    cfg = compose(["task=rte", "task.warmup_steps=0", *overrides])
    with pytest.raises(ConfigError, match=message):
        check_schedule(cfg, None, 100, 320)


def test_eva_needs_a_full_svd_batch(make_cfg):
    cfg, overrides = make_cfg(["method=eva", "method.batch_size=64"])  # 48 training rows
    with pytest.raises(ConfigError, match="method.batch_size=64 training examples, the run has 48"):
        run(cfg, overrides)
    assert not list(Path(cfg.results.root).rglob("train_log.jsonl"))


def test_make_bench_runs_the_new_arms_side_by_side_with_lora():
    """The six arms through the bench's turn-taking loop: every one times its own steps only (EVA's
    SVD batches are no training steps) and EVA's initialisation shows in its whole-run allocation."""
    from adarank.tools.bench import BenchConfig, run_bench
    from tests.test_bench import check_schema

    methods = ["lora", "dora", "rslora", "pissa", "loraplus", "eva", "sora"]
    threads = torch.get_num_threads()
    try:
        # batch 16: EVA's default SVD batch, which the bench must tell apart from its training batches
        report = run_bench(BenchConfig(preset="tiny", batch=16, seq_len=16, steps=3, warmup=1, methods=tuple(methods),
                                       memory=False, ops=False), log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    check_schema(report, methods, steps=3)
    rows = {row["method"]: row for row in report["results"]}
    assert rows["eva"]["allocation_s_whole_run"] > 0 and rows["eva"]["events_total"] == 1
    assert rows["dora"]["trainable_params_start"] > rows["lora"]["trainable_params_start"]  # + the magnitudes
