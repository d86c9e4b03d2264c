"""logger=none / logger=wandb (offline): what is logged, and that finish() always closes the run."""

from __future__ import annotations

import sys
import types

import pytest
from omegaconf import OmegaConf

from adarank.tracking import NullTracker, WandbTracker, make_tracker
from tests.conftest import compose


def base_cfg(logger: str = "wandb"):
    return compose(["task=rte", "method=triadapt", "threshold=linear", f"logger={logger}", "seed=2"])


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    """Keep wandb's own folders (cache, settings) inside the test's tmp folder."""
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    return tmp_path


def test_logger_none_is_a_no_op(tmp_path):
    tracker = make_tracker(base_cfg("none"), tmp_path)
    assert isinstance(tracker, NullTracker)
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.log_growth({"step": 1, "k": 2, "total_rank": 3, "modules": []})
    tracker.log_summary({"best": {"accuracy": 1.0}})
    tracker.finish(0)
    assert list(tmp_path.iterdir()) == []


def test_unknown_logger_is_refused(tmp_path):
    cfg = OmegaConf.create({"logger": {"name": "tensorboard"}})
    with pytest.raises(ValueError, match="unknown logger"):
        make_tracker(cfg, tmp_path)


class FakeRun:
    def __init__(self, **kwargs):
        self.init = kwargs
        self.logged: list[dict] = []
        self.summary: dict = {}
        self.finished: list[int] = []

    def define_metric(self, *args, **kwargs):
        pass

    def log(self, data):
        self.logged.append(data)

    def finish(self, exit_code=0):
        self.finished.append(exit_code)


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.runs = []

    def init(**kwargs):
        run = FakeRun(**kwargs)
        module.runs.append(run)
        return run

    module.init = init
    module.Table = lambda columns, data: {"columns": columns, "data": data}
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_wandb_tracker_logs_config_metrics_growth_and_rank_pattern(tmp_path, fake_wandb, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    (tmp_path / "rank_pattern.json").write_text('{"deberta.encoder.layer.0.attention.self.query_proj": 3}')
    tracker = make_tracker(base_cfg(), tmp_path)
    assert isinstance(tracker, WandbTracker)
    run = fake_wandb.runs[0]
    assert run.init["config"]["task"]["name"] == "rte" and "hydra" not in run.init["config"]
    assert run.init["dir"] == str(tmp_path) and run.init["group"] == "rte" and run.init["mode"] == "offline"
    assert run.init["name"].startswith("rte/triadapt-linear/seed2")
    tracker.log({"train/loss": 0.5, "eval": {"accuracy": 70.0}, "note": "text"}, step=10)
    tracker.log_growth({"step": 20, "k": 3, "total_rank": 80, "modules": ["a", "b"]})
    tracker.log_summary({"best": {"accuracy": 71.0, "step": 20}, "costs": {"wall_seconds": 2.0},
                         "rank": {"total_rank": 80}, "primary_metric": "accuracy"})
    tracker.finish(0)
    tracker.finish(0)  # idempotent
    assert run.logged[0] == {"train/loss": 0.5, "eval/accuracy": 70.0, "train/step": 10}
    assert run.logged[1]["growth/total_rank"] == 80 and run.logged[1]["growth/modules_changed"] == 2
    assert run.summary["best/accuracy"] == 71.0 and run.summary["rank/total_rank"] == 80
    tables = {k: v for entry in run.logged for k, v in entry.items() if k in ("growth/events", "rank/pattern")}
    assert tables["growth/events"]["data"][0][:3] == [20, 3, 80]
    assert tables["rank/pattern"]["data"] == [["deberta.encoder.layer.0.attention.self.query_proj", 3.0]]
    assert run.finished == [0]


def test_wandb_folder_is_never_the_run_folder(tmp_path, fake_wandb, monkeypatch):
    """Without $WANDB_DIR, wandb writes next to the results tree: force=true deletes run folders."""
    monkeypatch.delenv("WANDB_DIR", raising=False)
    cfg = base_cfg()
    cfg.results.root = str(tmp_path / "results" / "raw")
    make_tracker(cfg, tmp_path / "results" / "raw" / "rte" / "run")
    assert fake_wandb.runs[0].init["dir"] == str(tmp_path / "results" / "wandb")
    cfg.logger.dir = str(tmp_path / "mine")
    make_tracker(cfg, tmp_path / "run2")
    assert fake_wandb.runs[1].init["dir"] == str(tmp_path / "mine")


def test_wandb_mode_from_the_environment_wins(tmp_path, fake_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    make_tracker(base_cfg(), tmp_path)
    assert "mode" not in fake_wandb.runs[0].init


def test_failed_run_finishes_with_its_exit_code(tmp_path, fake_wandb):
    tracker = make_tracker(base_cfg(), tmp_path)
    with pytest.raises(RuntimeError):
        try:
            raise RuntimeError("training blew up")
        finally:
            tracker.finish(1)
    assert fake_wandb.runs[0].finished == [1]


def test_wandb_offline_run_folder_is_written(wandb_home):
    pytest.importorskip("wandb")
    run_dir = wandb_home / "run"
    tracker = make_tracker(base_cfg(), run_dir)
    tracker.log({"train/loss": 0.5}, step=1)
    tracker.log_growth({"step": 2, "k": 1, "total_rank": 10, "modules": ["m"]})
    tracker.log_summary({"best": {"accuracy": 50.0}})
    tracker.finish(0)
    offline = list((wandb_home / "wandb_home" / "wandb").glob("offline-run-*"))  # $WANDB_DIR
    assert len(offline) == 1 and not (run_dir / "wandb").exists()
    records = list(offline[0].glob("run-*.wandb"))
    assert records and records[0].stat().st_size > 0


@pytest.mark.slow
def test_real_run_with_wandb_offline(make_cfg, wandb_home):
    """run(cfg) with logger=wandb writes an offline wandb run into $WANDB_DIR."""
    pytest.importorskip("wandb")
    from adarank.run import run

    cfg, overrides = make_cfg(["task=rte", "method=lora", "logger=wandb", "train.max_steps=2"])
    metrics = run(cfg, overrides)
    assert metrics["status"] == "completed"
    offline = list((wandb_home / "wandb_home").rglob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))
