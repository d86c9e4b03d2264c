"""The paper sweeps (conf/sweep/), the launchers (conf/hydra/launcher/), GPU slots, and a real
multirun through train.py with a local parallel launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from adarank.analysis.sweep_configs import compose_jobs, sweep_jobs
from adarank.gpu_locks import acquire_slot, claim_gpu, try_lock
from tests.conftest import CONF_DIR, REPO

EXPECTED_JOBS = {
    "table1": 8 * 11 * 3,  # 8 GLUE tasks x (9 paper arms + DyLoRA + ALoRA) x 3 seeds
    "table2": 8 * 2 * 3,   # orth_reg on / off
    "table3": 8 * 3 * 3,   # norm r / sqrt_r / none
    "table4": 7 * 3,       # SQuAD 2.0 x 7 arms
    "fig2": 4,             # MNLI, seed 0: TriAdaptLoRA linear + fixed-k, AdaLoRA, IncreLoRA
    "fig3": 5 * 2 * 3,     # 5 init warm-up values x {TriAdaptLoRA, IncreLoRA} x 3 seeds
    "fig4": 5 * 2 * 3,
    "fig5": 5 * 2 * 3,
    "mini": 2 * 10 * 3,    # MiniLM on real MRPC and STS-B x (9 paper arms + DyLoRA; not ALoRA, see the sweep) x 3 seeds
    "table1_extended": 8 * 17 * 3,  # table1's 11 arms + DoRA, rsLoRA, PiSSA, LoRA+, EVA, SoRA
    "mini_extended": 2 * 6 * 3,     # the six new arms at the mini sweep's setting
    "mini_squad": 7 * 3,   # MiniLM on real SQuAD 2.0 x (6 Table IV arms, no HAdapter, + AdaLoRA) x 3 seeds
}
NEW_ARMS = ("dora", "rslora", "pissa", "loraplus", "eva", "sora")
GROWING = {"increlora", "triadapt"}


def key_values(job: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in job)


@pytest.mark.parametrize("name, count", EXPECTED_JOBS.items())
def test_sweep_expands_to_the_intended_jobs(name, count):
    jobs = sweep_jobs(name)
    assert len(jobs) == count
    assert len({tuple(sorted(job)) for job in jobs}) == count  # no job twice


def test_command_line_narrows_a_sweep():
    jobs = sweep_jobs("table1", ["task=rte", "seed=0"])
    assert len(jobs) == 11
    assert all(key_values(job)["task"] == "rte" for job in jobs)


def test_comma_slices_narrow_a_sweep_like_train_py():
    jobs = sweep_jobs("table1", ["task=rte,mrpc", "+sweep/arm=lora,increlora", "seed=0"])
    assert sorted((key_values(j)["task"], key_values(j)["+sweep/arm"]) for j in jobs) == [
        ("mrpc", "increlora"), ("mrpc", "lora"), ("rte", "increlora"), ("rte", "lora")]


@pytest.mark.parametrize("name", EXPECTED_JOBS)
def test_every_kind_of_job_composes(name):
    """One job per distinct arm / swept value (tasks and seeds are covered by the config tests):
    the composed config has the intended method, a legal threshold and the swept value."""
    jobs = sweep_jobs(name)
    first_task = task_of(jobs[0])
    distinct = {}
    for job in jobs:
        values = key_values(job)
        if task_of(job) == first_task and values["seed"] == key_values(jobs[0])["seed"]:
            distinct[tuple(sorted(job))] = job
    configs = compose_jobs(list(distinct.values()))
    for job, cfg in zip(distinct.values(), configs):
        values = key_values(job)
        arm = values["+sweep/arm"]
        method, _, threshold = arm.partition("_")
        assert cfg.method.name == method
        if cfg.method.name in GROWING:
            assert cfg.threshold.name == (threshold or "fixed")
        else:
            assert cfg.threshold.name == "none"
        for key, value in values.items():
            if key.startswith(("task.", "method.")):
                group, field = key.split(".", 1)
                assert str(cfg[group][field]).lower() == value.lower()


def task_of(job: list[str]) -> str:
    values = key_values(job)
    return values.get("task") or values["+sweep/mini_task"]  # the mini sweep sets task and length together


def test_mini_sweep_gives_each_task_its_length_and_full_fine_tuning_its_own_lr():
    """MRPC 96 steps, STS-B 48, evaluated once at the end; full fine-tuning at its own LR."""
    from adarank.methods import method_class

    jobs = sweep_jobs("mini", ["seed=0", "+sweep/arm=full_short,lora"])
    configs = compose_jobs(jobs)
    assert sorted((cfg.task.name, cfg.method.name) for cfg in configs) == [
        ("mrpc", "full"), ("mrpc", "lora"), ("stsb", "full"), ("stsb", "lora")]
    for cfg in configs:
        steps = {"mrpc": 96, "stsb": 48}[cfg.task.name]
        assert (cfg.train.max_steps, cfg.train.eval_interval, cfg.train.schedule) == (steps, steps, "scaled")
        method = method_class(cfg.method.name)(cfg.method, cfg.task, cfg.threshold, cfg.model)
        # Table V's LR is the low-rank methods'; full fine-tuning has its own (docs/baselines.md F1),
        # 5e-5 in short runs (conf/sweep/arm/full_short.yaml)
        assert method.learning_rate() == (5e-5 if cfg.method.name == "full" else cfg.task.lr)
    default_full = compose_jobs([["task=mrpc", "method=full"]])[0]
    assert method_class("full")(default_full.method, default_full.task, None, default_full.model).learning_rate() == 2e-5


def test_table1_covers_the_nine_method_threshold_pairs_and_the_extra_methods():
    pairs = {key_values(job)["+sweep/arm"] for job in sweep_jobs("table1")}
    assert pairs == {"full", "bitfit", "hadapter", "lora", "adalora", "increlora",
                     "triadapt_fixed", "triadapt_linear", "triadapt_nonlinear", "dylora", "alora"}


def test_extended_sweeps_add_the_new_arms_and_keep_the_old_runs_identical():
    from adarank.results import config_hash

    old, extended = sweep_jobs("table1", ["task=rte", "seed=0"]), sweep_jobs("table1_extended", ["task=rte", "seed=0"])
    arms = [key_values(job)["+sweep/arm"] for job in extended]
    assert arms == [key_values(job)["+sweep/arm"] for job in old] + list(NEW_ARMS)
    # a table1 run and the same arm in table1_extended: one config, one run folder
    for a, b in zip(compose_jobs(old), compose_jobs(extended[: len(old)])):
        assert config_hash(a) == config_hash(b)
    mini = compose_jobs(sweep_jobs("mini", ["seed=0", "+sweep/mini_task=stsb", "+sweep/arm=lora"]))[0]
    for cfg in compose_jobs(sweep_jobs("mini_extended", ["seed=0", "+sweep/mini_task=stsb"])):
        assert cfg.method.name in NEW_ARMS
        for key in ("model", "train", "data"):  # the mini sweep's setting
            assert cfg[key] == mini[key], key
        assert cfg.task.max_seq_length == 64


# --- launchers -----------------------------------------------------------------------------------


def compose_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_hydra(["+sweep=table1", "hydra/launcher=slurm", "hydra.launcher.partition=a100"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "a100" and launcher.gpus_per_node == 1
    assert launcher.timeout_min > 0 and launcher.array_parallelism > 0
    assert cfg.hydra.sweeper.params["seed"] == "0,1,2"


def test_local_gpus_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cfg = compose_hydra(["hydra/launcher=local_gpus", "hydra.launcher.n_jobs=8"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 8 and cfg.hydra.launcher.backend == "loky"


# --- one job per GPU -----------------------------------------------------------------------------


def test_gpu_slots_are_exclusive(tmp_path):
    first = try_lock(tmp_path / "gpu0.lock")
    assert first is not None
    assert try_lock(tmp_path / "gpu0.lock") is None  # held: a second job cannot take GPU 0
    index, second = acquire_slot(2, tmp_path, poll=0.01)
    assert index == 1
    with pytest.raises(TimeoutError):
        acquire_slot(2, tmp_path, poll=0.01, timeout=0.05)
    first.close()  # the job on GPU 0 ends
    index, third = acquire_slot(2, tmp_path, poll=0.01)
    assert index == 0
    second.close()
    third.close()


def test_gpu_slot_lock_is_released_when_the_process_dies(tmp_path):
    code = (
        "import sys, time; from pathlib import Path; from adarank.gpu_locks import try_lock; "
        f"h = try_lock(Path({str(tmp_path)!r}) / 'gpu0.lock'); print('locked' if h else 'busy', flush=True); "
        "sys.stdin.readline()"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        assert try_lock(tmp_path / "gpu0.lock") is None
    finally:
        child.communicate("\n", timeout=30)
    handle = try_lock(tmp_path / "gpu0.lock")
    assert handle is not None
    handle.close()


def test_claim_gpu_without_a_choice_changes_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("ADARANK_GPU_LOCK_DIR", str(tmp_path))
    with claim_gpu("cpu") as device:
        assert device == "cpu"
    with claim_gpu("cuda:1") as device:
        assert device == "cuda:1"
    import torch

    if torch.cuda.device_count() < 2:
        with claim_gpu("auto") as device:
            assert device == "auto"


# --- a real multirun with a local parallel launcher ----------------------------------------------


@pytest.mark.slow
def test_real_multirun_with_local_launcher_resumes_then_make_tables(tmp_path, tiny_glue_dir):
    """A slice of the Table I sweep on the tiny model through train.py: first seed 0 alone (an
    "interrupted" sweep), then seeds 0 and 1 in parallel with the joblib launcher, which skips the
    finished seed 0 and runs seed 1; `make tables` then finds both seeds."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    results = tmp_path / "raw"
    common = [
        sys.executable, str(REPO / "train.py"), "-m", "+sweep=table1", "task=rte", "+sweep/arm=lora",
        "model=tiny", "train.max_steps=2", "task.warmup_steps=0", "train.progress=off", "task.max_seq_length=32",
        f"data.dir={tiny_glue_dir}", f"results.root={results}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "ADARANK_GPU_LOCK_DIR": str(tmp_path / "locks")}

    def launch(*extra: str) -> None:
        done = subprocess.run(common + list(extra), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    launch("seed=0", f"hydra.sweep.dir={tmp_path / 'hydra1'}")
    (first,) = results.rglob("metrics.json")
    stamp = first.stat().st_mtime
    launch("seed=0,1", f"hydra.sweep.dir={tmp_path / 'hydra2'}", "hydra/launcher=local_gpus", "hydra.launcher.n_jobs=2")
    found = sorted(results.rglob("metrics.json"))
    assert sorted(json.loads(path.read_text())["seed"] for path in found) == [0, 1]
    assert first.stat().st_mtime == stamp  # the finished run was skipped, not redone

    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_tables.py"), "--results", str(results), "--out", str(tmp_path / "tables")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    table1 = (tmp_path / "tables" / "table1.md").read_text()
    assert "model=tiny" in table1 and "(n=2)" in table1
