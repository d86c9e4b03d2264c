"""End to end through the entrypoint: the tiny DeBERTaV2 with 12 layers (72 adapted modules, as
DeBERTaV3-base) produces the growth log the pure schedule predicts for the run's T."""

import json

import pytest

from adarank.methods.triadapt.schedule import plan
from adarank.run import run

pytestmark = pytest.mark.slow


def test_growth_log_equals_pure_schedule(make_cfg, tmp_path, threshold="linear"):
    # 48 training rows, batch 8 -> 6 steps/epoch x 50 epochs, capped at T = 14 optimizer steps;
    # t0 = 3, interval 2, so that growth events fit: t = 4, 6, ... (B = 0 until the first non-zero
    # lr at step 1, so D first moves at step 2: scores at t = 4 are real, not tied weight-decay noise)
    cfg, overrides = make_cfg([
        "task=rte", "method=triadapt", f"threshold={threshold}", "model.num_layers=12",
        "task.batch_size=8", "train.max_steps=14", "train.max_eval_samples=8",
        "task.init_warmup=3", "task.incre_interval=2", "task.warmup_steps=2",
    ])
    metrics = run(cfg, overrides)
    [folder] = [p.parent for p in (tmp_path / "results").rglob("metrics.json")]
    log = [json.loads(line) for line in (folder / "growth_log.jsonl").read_text().splitlines()]
    pattern = json.loads((folder / "rank_pattern.json").read_text())

    expected = plan(14, 3, 2, 72, 8, 1, 4, threshold, "ceil")
    assert len(pattern) == 72 and expected
    assert [(e["step"], e["k"], e["total_rank"]) for e in log] == [
        (e.step, e.k, e.total_rank) for e in expected
    ]
    assert all(len(e["modules"]) == e["k"] for e in log)  # no ties: exactly k modules grew
    assert sum(pattern.values()) == expected[-1].total_rank == metrics["rank"]["total_rank"]
    assert metrics["threshold"] == threshold
    assert metrics["costs"]["allocation_seconds"] > 0
    assert metrics["costs"]["trainable_params_end"] > metrics["costs"]["trainable_params_start"]
    # by hand: R = 504, α = (t - 3)/11: t=4: ceil(504/11 = 45.8) = 46 (R 320); t=6: ceil(320·3/11
    # = 87.3) = 88 -> M = 72 (R 32); t=8: ceil(32·5/11 = 14.5) = 15 -> 60 ranks > 32: the last event
    # overshoots to 72 + 4·133 = 604 (A10)
    assert [(e["step"], e["k"]) for e in log] == [(4, 46), (6, 72), (8, 15)]
    assert sum(pattern.values()) == 604
