"""Growth events reach the log, train_log.jsonl and the tracker at their step, not after training
(issue 15 §4); the last log line reports wall time, total rank and trainable parameters; wandb's
start-up is not counted in wall_seconds."""

from __future__ import annotations

import json
import logging
import time

from adarank.run import run
from adarank.training.events import budget_left, describe
from tests.test_tracking import fake_wandb  # noqa: F401  (fixture)


def test_describe_growth_and_masking_events():
    tri = {"step": 4, "k": 3, "modules": ["a", "b", "c"], "total_rank": 20, "budget_before": 40, "budget_after": 28}
    assert describe(tri) == "growth at step 4, k=3, 3 module(s) changed, total rank 20, budget left 28"
    incre = {"step": 6, "k": 2, "modules": ["a", "b"], "total_rank": 30, "budget": 48, "budget_exhausted": False}
    assert budget_left(incre) == 18
    ada = {"step": 9, "k": 5, "budget": 40, "total_rank": 40, "modules": ["a"], "final": False}
    assert describe(ada).startswith("masking at step 9") and describe(ada).endswith("budget 40")


def test_growth_is_reported_live(make_cfg, tmp_path, fake_wandb, monkeypatch, caplog):  # noqa: F811
    import importlib.machinery

    fake_wandb.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # peft's imports look it up
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    original_init = fake_wandb.init

    def slow_init(**kwargs):  # a tracker that takes a second to start
        time.sleep(1.0)
        return original_init(**kwargs)

    fake_wandb.init = slow_init
    cfg, overrides = make_cfg([
        "task=rte", "method=triadapt", "threshold=linear", "logger=wandb", "train.progress=log",
        "task.batch_size=8", "train.max_steps=8", "train.max_eval_samples=8", "train.log_interval=1",
        "task.init_warmup=3", "task.incre_interval=2", "task.warmup_steps=2",
    ])
    caplog.set_level(logging.INFO, logger="adarank")
    began = time.perf_counter()
    metrics = run(cfg, overrides)
    elapsed = time.perf_counter() - began
    assert metrics["costs"]["wall_seconds"] <= elapsed - 0.9  # the 1 s start-up is not a run cost

    [folder] = [p.parent for p in (tmp_path / "results").rglob("metrics.json")]
    growth = [json.loads(line) for line in (folder / "growth_log.jsonl").read_text().splitlines()]
    assert growth, "the schedule grows at t = 4, 6"
    train_log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert [r["growth"] for r in train_log if "growth" in r] == growth

    run_ = fake_wandb.runs[0]
    assert run_.init["dir"] == str(tmp_path / "wandb_dir")
    logged = run_.logged
    growth_at = [i for i, entry in enumerate(logged) if "growth/k" in entry]
    final_eval = max(i for i, entry in enumerate(logged) if "eval/accuracy" in entry)
    assert [logged[i]["train/step"] for i in growth_at] == [e["step"] for e in growth]
    assert max(growth_at) < final_eval  # sent during training, not after it
    assert any("train/extra_loss" in entry for entry in logged)  # the orthogonal regulariser

    lines = [r.getMessage() for r in caplog.records]
    assert sum(line.startswith("growth at step") for line in lines) == len(growth)
    assert any(line.startswith("eval at step") for line in lines)
    assert "trainable params" in lines[-1] and f"final total rank {metrics['rank']['total_rank']}" in lines[-1]
