"""Issue 24 §5: sweeps on a real (throw-away, single-node) SLURM cluster, through the real
entrypoint ``python train.py -m ... hydra/launcher=slurm_cpu`` and submitit:

(a) a 3-job sweep completes and ``make tables`` reads it;
(b) a job forced past its time limit gets SLURM's own USR2 signal, writes a checkpoint, is
    requeued and resumes, and ends with the metrics, train log, growth log and rank pattern of an
    uninterrupted run;
(c) ``scancel`` of a running job leaves no finished-looking folder, and rerunning the sweep
    finishes it;
(d) the requeue of (b) is recorded as a requeue, never as a failure.

How (b) forces the limit: SLURM's shortest limit is one minute and its controller checks limits
every 30 s, so the job is submitted with a 5-minute limit and, once it trains, ``scontrol update
TimeLimit=1`` puts it past ``limit - signal_delay_s``: at the controller's next check (0-30 s)
SLURM sends USR2 to the job step, the path a real timeout takes. SLURM holds a requeued job for
120 s before it may start again; the test releases it at once with ``scontrol update
StartTime=now`` and gives it back its 5-minute limit. The runs are the tiny model with a test-only
pause per step (ADARANK_TEST_STEP_SECONDS), so that a job is still training when a signal comes,
at little CPU cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adarank import run as run_module
from adarank import run_folder as folders
from adarank.training import checkpoint
from tests.cluster.conftest import wait_for
from tests.conftest import REPO, compose, merge_overrides

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

LAUNCHER = ["hydra/launcher=slurm_cpu", "hydra.launcher.partition=cpu", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=5", "hydra.launcher.signal_delay_s=30",
            "hydra.launcher.max_num_timeout=2"]
TINY = ["model=tiny", "task.warmup_steps=0", "train.progress=log", "train.log_interval=10", "task.batch_size=8",
        "train.max_eval_samples=8", "train.num_threads=1"]
GROWTH = ["method=increlora", "task.init_warmup=10", "task.incre_interval=20", "task.reference_rank=3",
          "task.incre_rank_num=1", "task.top_h=6"]


def sweep(tmp_path, tiny_glue_dir, overrides: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), "-m", *LAUNCHER, *TINY, f"data.dir={tiny_glue_dir}",
            f"results.root={tmp_path / 'results'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides]


def environment(cluster, **extra) -> dict:
    return {**cluster.env, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "WANDB_MODE": "disabled", **extra}


def start_sweep(cluster, tmp_path, tiny_glue_dir, overrides, **extra) -> subprocess.Popen:
    out = open(tmp_path / "sweep.out", "ab")
    return subprocess.Popen(sweep(tmp_path, tiny_glue_dir, overrides), cwd=tmp_path, env=environment(cluster, **extra),
                            stdout=out, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, tmp_path, cluster, timeout: float = 240) -> str:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the sweep did not end in {timeout} s\n{sweep_output(tmp_path)}\n{cluster.logs()}")
    return sweep_output(tmp_path)


def sweep_output(tmp_path) -> str:
    return (tmp_path / "sweep.out").read_text(errors="replace")


def job_logs(tmp_path) -> str:
    return "".join(p.read_text(errors="replace") for p in (tmp_path / "sweep").rglob("*") if p.is_file()
                   and (p.suffix in (".out", ".err", ".log")))


def submitted_job(tmp_path) -> str:
    """The SLURM id of the (single) job the sweep submitted: its submitit folder's name."""
    def find():
        folders_ = [p.name for p in (tmp_path / "sweep" / ".submitit").glob("*") if p.is_dir()] \
            if (tmp_path / "sweep" / ".submitit").is_dir() else []
        return folders_[0] if len(folders_) == 1 else None
    return wait_for(find, 120, "the job to be submitted")


def the_run_folder(tmp_path) -> Path:
    return wait_for(lambda: next((p.parent for p in (tmp_path / "results").rglob("config.yaml")), None), 120,
                    "the run folder")


def test_a_three_job_sweep_completes_and_make_tables_reads_it(slurm_cluster, tmp_path, tiny_glue_dir):
    process = start_sweep(slurm_cluster, tmp_path, tiny_glue_dir, ["method=lora,bitfit,hadapter", "train.max_steps=4"])
    out = finish(process, tmp_path, slurm_cluster)
    assert process.returncode == 0, out[-3000:]
    assert "sweep finished: 3 jobs: 3 completed, 0 skipped, 0 diverged, 0 failed" in out
    assert len(list((tmp_path / "results").rglob("metrics.json"))) == 3
    tables = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), "--results",
                             str(tmp_path / "results"), "--out", str(tmp_path / "tables")],
                            capture_output=True, text=True, timeout=300, env=environment(slurm_cluster))
    assert tables.returncode == 0, tables.stderr[-3000:]
    assert tables.stdout.startswith("3 finished run(s)")
    assert (tmp_path / "tables" / "table1.md").is_file()


def test_b_d_a_job_past_its_time_limit_is_requeued_not_failed_and_resumes_like_an_uninterrupted_run(
        slurm_cluster, tmp_path, tiny_glue_dir):
    """(b) and (d) in one job (one requeue costs over a minute): an IncreLoRA job of 200 steps
    (0.2 s pause each: 40 s, more than the 30 s SLURM may take to send its signal), forced past
    its time limit after its first checkpoint (step 10)."""
    overrides = [*GROWTH, "train.max_steps=200", "train.eval_interval=50", "train.checkpoint_interval=10"]
    process = start_sweep(slurm_cluster, tmp_path, tiny_glue_dir, overrides, **{checkpoint.TEST_STEP_SECONDS_ENV: "0.2"})
    try:
        job = submitted_job(tmp_path)
        folder = the_run_folder(tmp_path)
        wait_for(lambda: checkpoint.path_in(folder).is_file(), 120, "the first checkpoint")
        slurm_cluster.run("scontrol", "update", f"JobId={job}", "TimeLimit=1")  # now past limit - signal_delay_s
        waiting = wait_for(lambda: (lambda j: j if j.get("JobState") == "PENDING" and j.get("Restarts") == "1" else None)(
            slurm_cluster.job(job)), 90, "SLURM's signal and the requeue")
        # (d) while the requeued job waits: a requeue event, no failure record, not finished-looking
        assert waiting.get("Reason") == "BeginTime"
        step = checkpoint.read(folder)["loop"]["step"]
        assert 0 < step < 200
        assert not (folder / folders.FAILURE_FILE).exists() and not (folder / "metrics.json").exists()
        [event] = [json.loads(line) for line in (folder / folders.INTERRUPTIONS_FILE).read_text().splitlines()]
        assert event["event"] == "requeued" and event["step"] == step and event["slurm_job_id"]
        [status_file] = (tmp_path / "sweep").glob("*/job_status.json")
        assert json.loads(status_file.read_text())["status"] == "requeued"
        slurm_cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now", "TimeLimit=5")
        out = finish(process, tmp_path, slurm_cluster)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, out[-3000:]
    assert "sweep finished: 1 jobs: 1 completed" in out
    logs = job_logs(tmp_path)
    assert "this job is timed-out" in logs  # submitit's reading of SLURM's signal
    assert f"resuming from step {step} of 200" in logs
    # (d) after the requeued job finished: still no failure record, the job record says completed
    assert not (folder / folders.FAILURE_FILE).exists()
    assert json.loads(status_file.read_text())["status"] == "completed"
    # (b) the same run, uninterrupted, in this process, ends identically
    final = merge_overrides({}, [*TINY, *overrides, f"data.dir={tiny_glue_dir}", f"results.root={tmp_path / 'reference'}"])
    reference = run_module.run(compose(final), final)
    [reference_folder] = {p.parent for p in (tmp_path / "reference").rglob("metrics.json")}
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in ("best", "final", "evaluations", "rank"):
        assert metrics[key] == reference[key], key
    assert json.loads((folder / "growth_log.jsonl").read_text().splitlines()[0])["step"] > 0
    for name in ("train_log.jsonl", "growth_log.jsonl", "rank_pattern.json"):
        assert (folder / name).read_text() == (reference_folder / name).read_text(), name
    assert not checkpoint.path_in(folder).exists()


def test_c_scancel_leaves_no_finished_looking_folder_and_the_rerun_finishes_it(slurm_cluster, tmp_path, tiny_glue_dir):
    overrides = ["method=lora", "train.max_steps=100", "train.checkpoint_interval=10"]
    process = start_sweep(slurm_cluster, tmp_path, tiny_glue_dir, overrides, **{checkpoint.TEST_STEP_SECONDS_ENV: "0.2"})
    try:
        job = submitted_job(tmp_path)
        folder = the_run_folder(tmp_path)
        wait_for(lambda: checkpoint.path_in(folder).is_file(), 120, "the first checkpoint")
        slurm_cluster.run("scancel", job)
        wait_for(lambda: job not in slurm_cluster.queued(), 60, "the cancelled job to leave the queue")
    finally:
        # without accounting (sacct) submitit cannot learn that a job was cancelled: the waiting
        # launcher is stopped here (docs/reproducing.md)
        process.kill()
        process.wait()
    assert not (folder / "metrics.json").exists()
    assert not (folder / folders.FAILURE_FILE).exists()
    step = checkpoint.read(folder)["loop"]["step"]
    assert 0 < step < 100
    rerun = start_sweep(slurm_cluster, tmp_path, tiny_glue_dir, overrides)
    out = finish(rerun, tmp_path, slurm_cluster)
    assert rerun.returncode == 0, out[-3000:]
    assert "sweep finished: 1 jobs: 1 completed" in out
    assert f"resuming from step {step} of 100" in job_logs(tmp_path)
    assert json.loads((folder / "metrics.json").read_text())["costs"]["optimizer_steps"] == 100
