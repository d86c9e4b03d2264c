"""Issue 12 §1-2: a result is never lost or mixed up, failures are recorded, a sweep always finishes.

In-process runs on the tiny model (1-2 steps); one train.py multirun subprocess for the summary.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from adarank import jobs, results, run_folder
from adarank import run as run_module
from adarank.analysis import build_report, load_runs
from adarank.analysis.synthetic import fake_run
from adarank.analysis.tables import blocks
from adarank.checks import ConfigError, check_static
from adarank.training.loop import Diverged
from tests.conftest import REPO

FAST = ["method=bitfit", "train.max_steps=1", "task.warmup_steps=0"]


def folder_of(cfg, overrides) -> Path:
    return results.run_dir(cfg, check_static(cfg), overrides)


def fail_training(*args, **kwargs):
    raise RuntimeError("out of memory (simulated)")


def test_a_failed_forced_rerun_leaves_the_old_result_and_a_failure_record(make_cfg, monkeypatch):
    cfg, overrides = make_cfg(FAST)
    first = run_module.run(cfg, overrides)
    folder = folder_of(cfg, overrides)
    before = (folder / "metrics.json").read_bytes()
    forced, forced_overrides = make_cfg([*FAST, "force=true"])
    assert folder_of(forced, forced_overrides) == folder  # force is not part of the identity
    monkeypatch.setattr(run_module, "train", fail_training)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_module.run(forced, forced_overrides)
    assert (folder / "metrics.json").read_bytes() == before  # untouched
    failure = json.loads((folder / run_folder.FAILURE_FILE).read_text())
    assert failure["status"] == "failed" and "out of memory" in failure["message"]
    assert sorted(p.name for p in folder.parent.iterdir() if not p.name.endswith(".lock")) == [folder.name]
    monkeypatch.undo()
    again = run_module.run(forced, forced_overrides)  # a successful forced rerun replaces it
    assert again["variant"] == first["variant"] == folder.name
    assert (folder / "metrics.json").read_bytes() != before
    assert not (folder / run_folder.FAILURE_FILE).exists()
    assert results.validate_run_folder(folder) == []
    assert not list(folder.parent.glob(".staging-*"))


def test_a_run_being_trained_is_locked_and_the_message_names_the_holder(make_cfg):
    cfg, overrides = make_cfg(FAST)
    folder = folder_of(cfg, overrides)
    with run_folder.locked(folder):  # what a training process holds (a second open file = a second holder)
        with pytest.raises(run_folder.RunBusy, match=f"pid {os.getpid()}"):
            run_module.run(cfg, overrides)
        assert not folder.exists()  # refused before touching the folder
    assert run_module.run(cfg, overrides)["status"] == "completed"


def test_a_forced_run_killed_between_its_renames_is_recovered(make_cfg):
    cfg, overrides = make_cfg(FAST)
    run_module.run(cfg, overrides)
    folder = folder_of(cfg, overrides)
    # the state after os.replace(folder, old): the new result staged, the old one aside
    staged = folder.parent / f"{run_folder.STAGING_PREFIX}{run_folder.config_id(folder)}-1" / folder.name
    staged.parent.mkdir()
    shutil.copytree(folder, staged)
    os.replace(folder, folder.parent / f"{run_folder.STAGING_PREFIX}{run_folder.config_id(folder)}-1-old")
    with run_folder.claim(folder, force=False) as work:
        assert work == folder and results.is_complete(folder)
    assert [p.name for p in folder.parent.iterdir() if p.is_dir()] == [folder.name]


def test_temporary_names_are_unique_per_writer(tmp_path, monkeypatch):
    seen = []
    replace = os.replace
    monkeypatch.setattr(results.os, "replace", lambda src, dst: (seen.append(Path(src).name), replace(src, dst)))
    results.write_json_atomic(tmp_path / "metrics.json", {"a": 1})
    results.write_json_atomic(tmp_path / "metrics.json", {"a": 2})
    assert len(set(seen)) == 2 and all(f".{os.getpid()}." in name for name in seen)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_data_fingerprint_is_recorded_and_changed_data_is_not_silently_skipped(make_cfg, tmp_path):
    data = tmp_path / "glue"
    shutil.copytree(Path(make_cfg()[0].data.dir) / "RTE", data / "RTE")
    cfg, overrides = make_cfg([*FAST, f"data.dir={data}"])
    metrics = run_module.run(cfg, overrides)
    files = metrics["data"]["fingerprint"]["files"]
    assert set(files) == {"RTE/train.tsv", "RTE/dev.tsv"}
    assert files["RTE/dev.tsv"]["size"] == (data / "RTE" / "dev.tsv").stat().st_size
    assert len(files["RTE/dev.tsv"]["sha256"]) == 64
    assert isinstance(run_module.run(cfg, overrides), run_folder.Skipped)  # same data: skipped
    with open(data / "RTE" / "dev.tsv", "a") as handle:
        handle.write("999\tan extra line .\tanother .\tentailment\n")
    with pytest.raises(ConfigError, match=r"RTE/dev.tsv changed.*force=true"):
        run_module.run(cfg, overrides)
    forced, forced_overrides = make_cfg([*FAST, f"data.dir={data}", "force=true"])
    new = run_module.run(forced, forced_overrides)
    assert new["data"]["fingerprint"]["files"]["RTE/dev.tsv"] != files["RTE/dev.tsv"]
    assert isinstance(run_module.run(cfg, overrides), run_folder.Skipped)


def test_nan_loss_is_a_diverged_result_not_retried_and_shown_in_tables(make_cfg, monkeypatch):
    cfg, overrides = make_cfg(FAST)

    def diverge(*args, **kwargs):
        raise Diverged(7, float("nan"), 0.69)

    monkeypatch.setattr(run_module, "train", diverge)
    metrics = run_module.run(cfg, overrides)
    assert metrics["status"] == "diverged"
    assert metrics["diverged"] == {"step": 7, "loss": "nan", "last_finite_loss": 0.69}
    folder = folder_of(cfg, overrides)
    assert results.validate_run_folder(folder) == []
    assert results.metrics_problems(json.loads((folder / "metrics.json").read_text())) == []
    again = run_module.run(cfg, overrides)  # a resumed sweep does not retry it
    assert isinstance(again, run_folder.Skipped) and again["status"] == "diverged"
    root = Path(cfg.results.root)
    runs = load_runs(root)
    assert list(runs["status"]) == ["diverged"] and pd.isna(runs["score"].iloc[0])


def test_the_loop_raises_diverged_with_the_last_finite_loss(make_cfg):
    """A real NaN: the tiny model's first forward pass is poisoned after step 1."""
    from adarank.training import loop

    cfg, overrides = make_cfg(["method=bitfit", "train.max_steps=3", "task.warmup_steps=0", "task.lr=1e30"])
    metrics = run_module.run(cfg, overrides)
    assert metrics["status"] == "diverged", metrics.get("final")
    assert metrics["diverged"]["step"] >= 2 and math.isfinite(metrics["diverged"]["last_finite_loss"])
    assert issubclass(loop.Diverged, FloatingPointError)


def test_tables_say_diverged_instead_of_missing(tmp_path):
    root = tmp_path / "raw"
    fake_run(root, "rte", "lora", 0, 80.0)
    path = fake_run(root, "rte", "lora", 1, 81.0)
    fake_run(root, "mrpc", "lora", 0, 80.0)
    for metrics_file in [path / "metrics.json", *(root / "mrpc").rglob("metrics.json")]:
        metrics = json.loads(metrics_file.read_text())
        metrics.update(status="diverged", diverged={"step": 3, "loss": "nan", "last_finite_loss": 0.7}, best={}, final={})
        metrics_file.write_text(json.dumps(metrics))
    report = build_report(root)
    texts, _ = blocks(report.tables["table1"], "table1", report.setups[0])["Ours"]
    lora = texts.loc[texts.index.str.startswith("LoRA")].iloc[0]
    assert lora["MRPC"].startswith("diverged (1/3 seeds)")
    assert lora["RTE"].startswith("80.00 (n=1, 1 diverged)")


# --- job records and the sweep summary ------------------------------------------------------------


def hydra_cfg(tmp_path, multirun: bool):
    from hydra.types import RunMode

    return OmegaConf.create({
        "mode": RunMode.MULTIRUN if multirun else RunMode.RUN,
        "overrides": {"task": ["task=rte", "train.device=gpu"]},
        "runtime": {"output_dir": str(tmp_path / "sweep" / "0")},
        "job": {"num": 0},
    })


def test_a_single_run_turns_expected_errors_into_one_line(make_cfg, tmp_path):
    cfg, _ = make_cfg(["train.device=gpu"])
    with pytest.raises(SystemExit) as stop:
        jobs.run_job(run_module.run, cfg, hydra_cfg(tmp_path, multirun=False))
    assert str(stop.value) == "configuration error: unknown train.device 'gpu'; choose auto, cpu, cuda or cuda:N"


def test_a_failed_job_of_a_multirun_is_recorded_and_returns(make_cfg, tmp_path):
    cfg, _ = make_cfg(["train.device=gpu"])
    assert jobs.run_job(run_module.run, cfg, hydra_cfg(tmp_path, multirun=True)) is None
    record = json.loads((tmp_path / "sweep" / "0" / jobs.STATUS_FILE).read_text())
    assert record["status"] == "failed" and record["error"] == "ConfigError"
    assert record["overrides"] == ["task=rte", "train.device=gpu"]
    line, failed = jobs.summarize(tmp_path / "sweep")
    assert failed and "0 completed, 0 skipped, 0 diverged, 1 failed" in line and "train.device=gpu" in line


@pytest.mark.slow
def test_a_multirun_finishes_every_job_and_ends_with_one_summary_line(tmp_path, tiny_glue_dir):
    """train.device=gpu fails its check, train.device=cpu trains; the sweep goes on, then exits 1."""
    args = [
        sys.executable, str(REPO / "train.py"), "-m", "model=tiny", "method=bitfit", "train.device=gpu,cpu",
        "train.max_steps=1", "task.warmup_steps=0", "train.progress=off", f"data.dir={tiny_glue_dir}",
        f"results.root={tmp_path}/results", f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert "Traceback" not in out
    (summary,) = [line for line in out.splitlines() if line.startswith("sweep finished")]
    assert "2 jobs: 1 completed, 0 skipped, 0 diverged, 1 failed" in summary and "[" in summary
    assert "train.device=gpu" in summary and "unknown train.device 'gpu'" in summary
    assert len(list((tmp_path / "results").rglob("metrics.json"))) == 1
