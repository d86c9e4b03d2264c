"""The fair protocol's sweeps (conf/sweep/lr_search*.yaml, fair_table1.yaml, mini_fair*.yaml): their
grids, that every job composes under the intended protocol, the seeds kept apart, and the LR search
through Hydra's Optuna sweeper."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from adarank.analysis.runs import load_runs
from adarank.analysis.select_lr import lr_grid
from adarank.analysis.sweep_configs import compose_jobs, sweep_jobs
from tests.conftest import REPO

TABLE1_ARMS = 11
EXPECTED = {
    "lr_search_table1": (8 * TABLE1_ARMS * 6, "fair", {"0"}),
    "fair_table1": (8 * TABLE1_ARMS * 5, "fair", {"1", "2", "3", "4", "5"}),
    # + DoRA, rsLoRA, PiSSA, LoRA+, EVA, SoRA (issue 27)
    "lr_search_table1_extended": (8 * (TABLE1_ARMS + 6) * 6, "fair", {"0"}),
    "fair_table1_extended": (8 * (TABLE1_ARMS + 6) * 5, "fair", {"1", "2", "3", "4", "5"}),
    "mini_fair_search": (2 * 5 * 4, "fair", {"0"}),
    "mini_fair": (2 * 5 * 5, "fair", {"1", "2", "3", "4", "5"}),
    "mini_fair_paper": (2 * 5 * 3, "paper", {"0", "1", "2"}),
}
NEEDS_TABLE = {"fair_table1", "fair_table1_extended", "mini_fair"}


def jobs_of(name: str) -> list[list[str]]:
    return sweep_jobs(name, ["protocol.lr_table=t.yaml"] if name in NEEDS_TABLE else [])


def sample(jobs: list[list[str]], name: str, seed: str) -> list[list[str]]:
    """The jobs worth composing: one per (task, arm) of a mini sweep, one per arm of RTE in a table
    sweep, at one seed and the default LR (composing all 528 takes minutes)."""
    out = []
    for job in jobs:
        values = dict(item.split("=", 1) for item in job)
        if values["seed"] != seed or values.get("protocol.lr_scale", "1") != "1":
            continue
        if name.startswith("mini") or values.get("task") == "rte":
            out.append(job)
    return out


@pytest.mark.parametrize("name", EXPECTED)
def test_fair_sweeps_expand_to_their_grids_and_compose(name):
    count, protocol, seeds = EXPECTED[name]
    jobs = jobs_of(name)
    assert len(jobs) == count and len({tuple(sorted(j)) for j in jobs}) == count
    assert {dict(i.split("=", 1) for i in job)["seed"] for job in jobs} == seeds
    configs = compose_jobs(sample(jobs, name, min(seeds)))
    assert {cfg.protocol.name for cfg in configs} == {protocol}
    if name.startswith("mini"):
        assert {(cfg.model.name, cfg.task.max_seq_length, cfg.train.schedule) for cfg in configs} == {("minilm", 64, "scaled")}
        assert {cfg.task.name for cfg in configs} == {"mrpc", "stsb"}
        # one evaluation interval for both tasks: their runs share one setup in the tables
        assert len({cfg.train.eval_interval for cfg in configs}) == 1
    if name in NEEDS_TABLE:
        assert {cfg.protocol.lr_table for cfg in configs} == {"t.yaml"}


def test_the_lr_grids():
    scales = sorted({float(dict(i.split("=", 1) for i in job)["protocol.lr_scale"]) for job in sweep_jobs("lr_search", ["task=rte"])})
    assert scales == [0.125, 0.25, 0.5, 1.0, 2.0, 4.0]  # Table V's LR / 8 ... x 4, log-spaced
    assert len(sweep_jobs("lr_search", ["task=rte", "protocol.lr_scale=0.5,1"])) == 2  # the command line replaces it


def test_the_final_stages_require_an_lr_table():
    from adarank import protocol
    from adarank.checks import ConfigError

    for name in NEEDS_TABLE:
        [cfg] = compose_jobs(sweep_jobs(name)[:1])
        with pytest.raises(ConfigError, match="add protocol.lr_table=path/to/selected_lr.yaml"):
            protocol.check(cfg, None)


@pytest.mark.slow
def test_the_optuna_search_samples_the_grids_range_and_selects_on_validation(tmp_path, tiny_glue_dir):
    """+sweep=lr_search_optuna through train.py: TPE draws lr_scale in [1/8, 4] (log), each trial's
    objective is the run's validation score, a rerun skips every trial and draws the same LRs, and
    select_lr picks among the drawn LRs on validation."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO / "src")}

    def search(sweep_dir: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, str(REPO / "train.py"), "-m", "+sweep=lr_search_optuna", "task=rte", "method=lora",
             "model=tiny", f"data.dir={tiny_glue_dir}", "train.max_steps=3", "task.warmup_steps=0", "train.progress=off",
             f"results.root={tmp_path / 'raw'}", f"hydra.sweep.dir={tmp_path / sweep_dir}", "hydra.sweeper.n_trials=3"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    search("first")
    runs = load_runs(tmp_path / "raw")
    assert len(runs) == 3 and set(runs["protocol"]) == {"fair"} and set(runs["lr_source"]) == {"scale"}
    scales = sorted(runs["lr_scale"].astype(float))
    assert len(set(scales)) == 3 and all(0.125 <= s <= 4 for s in scales)
    assert not any(s in (0.125, 0.25, 0.5, 1, 2, 4) for s in scales)  # drawn, not the grid's
    result = yaml.safe_load((tmp_path / "first" / "optimization_results.yaml").read_text())
    # the objective is the validation score, not dev's (which differ here: 40 vs 50 on the tiny data)
    assert runs["val_score"].max() != runs["score"].max()
    assert result["best_value"] == pytest.approx(runs["val_score"].max())

    search("again")  # the finished trials are skipped and lead the seeded sampler to the same LRs
    statuses = [json.loads(p.read_text())["status"] for p in sorted((tmp_path / "again").glob("*/job_status.json"))]
    assert statuses == ["skipped"] * 3 and len(load_runs(tmp_path / "raw")) == 3

    grid = lr_grid(load_runs(tmp_path / "raw"))
    picked = grid[grid["selected"]].iloc[0]
    best = grid.sort_values(["val_mean", "lr"], ascending=[False, True]).iloc[0]
    assert picked["lr"] == best["lr"] and sorted(grid["lr_scale"].astype(float)) == scales
