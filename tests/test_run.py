"""run(cfg) in-process on the tiny model: complete results folders, skipping, interruption, errors."""

import json
from pathlib import Path

import pytest

from adarank import run as run_module
from adarank.checks import ConfigError
from adarank.results import validate_run_folder


def run_folder(metrics: dict, cfg) -> Path:
    return next(Path(cfg.results.root).rglob(metrics["variant"]))


@pytest.mark.parametrize("method", ["full", "bitfit", "lora"])
def test_a_run_writes_a_complete_schema_valid_folder(make_cfg, method):
    cfg, overrides = make_cfg([f"method={method}", "train.eval_interval=2"])
    metrics = run_module.run(cfg, overrides)
    folder = run_folder(metrics, cfg)
    assert validate_run_folder(folder) == []
    assert folder.parts[-4:-1] == ("rte", method, "seed0")
    assert metrics["threshold"] is None
    assert metrics["costs"]["optimizer_steps"] == 4
    assert metrics["evaluations"] == 2  # step 2 (periodic) and step 4 (final)
    assert metrics["best"]["step"] in (2, 4) and metrics["final"]["step"] == 4
    assert 0 <= metrics["final"]["accuracy"] <= 100
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval" in r] == [2, 4]


def test_trainable_parameters_per_method(make_cfg):
    counts = {}
    for method in ("full", "bitfit", "lora"):
        cfg, overrides = make_cfg([f"method={method}", "train.max_steps=1"])
        counts[method] = run_module.run(cfg, overrides)["costs"]["trainable_params_start"]
    hidden, inter, layers = 32, 64, 2
    head = (hidden * hidden + hidden) + (hidden * 2 + 2)  # pooler dense + classifier
    # LoRA r=8 on q, k, v, attention output (h x h), intermediate (h -> 4h... here 64), output (64 -> h)
    per_layer = 4 * 8 * (hidden + hidden) + 8 * (hidden + inter) + 8 * (inter + hidden)
    assert counts["lora"] == layers * per_layer + head
    # per layer: q, k, v, attention output, intermediate, output biases and 2 LayerNorms; plus the
    # embedding LayerNorm and the relative-position LayerNorm of DeBERTaV3's encoder
    biases = layers * (4 * hidden + inter + hidden + 2 * hidden) + 2 * hidden
    assert counts["bitfit"] == head + biases
    assert counts["full"] > 100 * counts["lora"]


def test_lora_rank_pattern_covers_the_encoder_linears_not_the_pooler(make_cfg):
    cfg, overrides = make_cfg(["method=lora", "model.num_layers=12", "train.max_steps=1"])
    metrics = run_module.run(cfg, overrides)
    pattern = json.loads((run_folder(metrics, cfg) / "rank_pattern.json").read_text())
    assert len(pattern) == 72 and set(pattern.values()) == {8}
    assert not any("pooler" in name for name in pattern)
    assert metrics["rank"] == {"total_rank": 576, "adapted_modules": 72}


def test_a_finished_run_is_skipped_unless_forced(make_cfg, caplog):
    cfg, overrides = make_cfg(["method=bitfit", "train.max_steps=1"])
    first = run_module.run(cfg, overrides)
    metrics_path = run_folder(first, cfg) / "metrics.json"
    stamp = metrics_path.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="adarank"):
        again = run_module.run(cfg, overrides)
    assert again == first and metrics_path.stat().st_mtime_ns == stamp
    assert "skipping" in caplog.text
    forced_cfg, forced_overrides = make_cfg(["method=bitfit", "train.max_steps=1", "force=true"])
    run_module.run(forced_cfg, forced_overrides)
    assert metrics_path.stat().st_mtime_ns != stamp


def test_different_configs_never_share_a_folder(make_cfg):
    a, oa = make_cfg(["method=bitfit", "train.max_steps=1"])
    b, ob = make_cfg(["method=bitfit", "train.max_steps=1", "task.lr=0.01"])
    assert run_module.run(a, oa)["variant"] != run_module.run(b, ob)["variant"]


def test_an_interrupted_run_leaves_no_metrics_and_reruns_cleanly(make_cfg, monkeypatch):
    cfg, overrides = make_cfg(["method=bitfit", "train.max_steps=1"])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_module.run(cfg, overrides)
    folders = list(Path(cfg.results.root).rglob("config.yaml"))
    assert len(folders) == 1 and not (folders[0].parent / "metrics.json").exists()
    monkeypatch.undo()
    metrics = run_module.run(cfg, overrides)
    assert validate_run_folder(run_folder(metrics, cfg)) == []


def test_configuration_errors_come_before_any_folder(make_cfg):
    cfg, overrides = make_cfg(["method=lora", "threshold=nonlinear"])
    with pytest.raises(ConfigError, match="does not grow ranks"):
        run_module.run(cfg, overrides)
    assert not Path(cfg.results.root).exists()


def test_mnli_reports_matched_and_mismatched(make_cfg):
    cfg, overrides = make_cfg(["task=mnli", "method=bitfit", "train.max_steps=1"])
    final = run_module.run(cfg, overrides)["final"]
    assert set(final) == {"accuracy", "mismatched_accuracy", "step"}


def test_stsb_is_a_regression_with_correlations(make_cfg):
    cfg, overrides = make_cfg(["task=stsb", "method=bitfit", "train.max_steps=2"])
    metrics = run_module.run(cfg, overrides)
    assert metrics["primary_metric"] == "pearson"
    assert set(metrics["final"]) == {"pearson", "spearman", "step"}


@pytest.mark.parametrize("method,expected", [("lora", "adapter_model.safetensors"), ("bitfit", "trainable.pt")])
def test_save_adapter_writes_the_trained_weights(make_cfg, method, expected):
    cfg, overrides = make_cfg([f"method={method}", "train.max_steps=1", "results.save_adapter=true"])
    folder = run_folder(run_module.run(cfg, overrides), cfg)
    assert (folder / "adapter" / expected).is_file()


def test_a_default_value_spelled_out_is_the_same_run(make_cfg, caplog):
    plain, plain_overrides = make_cfg(["method=bitfit", "train.max_steps=1"])
    first = run_module.run(plain, plain_overrides)
    spelled, spelled_overrides = make_cfg(["method=bitfit", "train.max_steps=1", "task.init_warmup=100"])
    with caplog.at_level("INFO", logger="adarank"):
        again = run_module.run(spelled, spelled_overrides)
    assert "skipping" in caplog.text and again == first
