"""Checkpoints and exact resume (issue 11): a real subprocess running train.py is killed with
SIGKILL (or stopped by SIGINT) at the end of a chosen step, one step after its last checkpoint (so
that the train log holds lines the resumed run must drop and redo), the same command is run
again, and the finished run must equal an uninterrupted one bit for bit: best, final, every
evaluation (the whole train log), rank_pattern.json, growth_log.jsonl and the trained tensors.

The processes that get killed are forked from the test process (``train.py``'s own ``main``,
through ``runpy``), so they do not pay Python's and torch's import time again; one test runs
``python train.py`` itself. The kill point is made deterministic by the test-only environment
variable of adarank.training.checkpoint (the process signals itself at the end of step N).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adarank import run as run_module
from adarank.training import checkpoint
from tests.conftest import REPO

# 48 training rows, batch 8: 6 batches per epoch, so T = 14 crosses two epoch boundaries
COMMON = [
    "task.batch_size=8", "train.max_steps=14", "train.eval_interval=3", "train.max_eval_samples=8",
    "train.log_interval=1", "train.checkpoint_interval=2", "train.num_threads=1", "results.save_adapter=true",
    "task.warmup_steps=2", "task.lora_dropout=0.1",
]
GROWTH = ["task.init_warmup=1", "task.incre_interval=2", "task.reference_rank=3", "task.incre_rank_num=1", "task.top_h=6"]
# (method overrides, kill during growth/masking, kill after it): the process dies at the end of
# that step, one step after its last checkpoint. IncreLoRA and TriAdapt-fixed grow at t = 2, 4, 6,
# 8 (budget 36 reached; t = the 0-based step the event happens in): checkpoints 4 (growth under
# way) and 10 (done). AdaLoRA masks at t = 4, 6, 8, puts the final mask at t = 10 (T - t_final)
# and re-applies it at every later step: checkpoints 6 and 12.
CASES = {
    "full": (["method=full"], 5, 11),
    "bitfit": (["method=bitfit"], 5, 11),
    "hadapter": (["method=hadapter"], 5, 11),
    "lora": (["method=lora"], 5, 11),
    "dylora": (["method=dylora"], 5, 11),
    # allocation rounds at steps 5 and 7 (40 rows after 8 held out: 5 steps per epoch, K1 = 5, K2 = 2):
    # checkpoints 6 (between the rounds) and 10
    "alora": (["method=alora", "method.val_examples=8", "method.rounds=2", "method.k2_epochs=0.4"], 7, 11),
    "adalora": (["method=adalora", "task.adalora.init_warmup=2", "task.adalora.final_warmup=4",
                 "task.adalora.mask_interval=2", "task.adalora.warmup_steps=2"], 7, 13),
    "increlora": (["method=increlora", *GROWTH], 5, 11),
    "triadapt-fixed": (["method=triadapt", "threshold=fixed", *GROWTH], 5, 11),
    # the dynamic thresholds spread growth over the whole run (the last event at t = 12): a
    # checkpoint every step, the second kill at the last step, after checkpoint 13
    "triadapt-linear": (["method=triadapt", "threshold=linear", *GROWTH, "train.checkpoint_interval=1"], 5, 14),
    "triadapt-nonlinear": (["method=triadapt", "threshold=nonlinear", *GROWTH, "train.checkpoint_interval=1"], 6, 14),
    # the fair protocol (issue 26): the best validation state (before both kills) comes back from
    # the checkpoint, so test_at_best_val (STS-B: a Pearson correlation, which any other state
    # would change) is evaluated on the same state after two resumes
    "triadapt-linear-fair": (["method=triadapt", "threshold=linear", *GROWTH, "train.checkpoint_interval=1",
                              "protocol=fair", "task=stsb"], 8, 14),
    # issue 27: DoRA's magnitude vector, PiSSA's residual base weight (re-derived on resume), LoRA+'s
    # four parameter groups, EVA's initialisation (repeated on the same batches before loading),
    # SoRA's gates (pruned from step 1 with this xi) and its own AdamW group
    "dora": (["method=dora"], 5, 11),
    "rslora": (["method=rslora"], 5, 11),
    "pissa": (["method=pissa"], 5, 11),
    "loraplus": (["method=loraplus"], 5, 11),
    "eva": (["method=eva", "method.batch_size=8"], 5, 11),
    "sora": (["method=sora", "method.xi=0.02", "task.lr=0.05", "train.checkpoint_interval=1"], 5, 14),
}


def _train_py(argv: list[str], env: dict) -> None:
    """Child process: ``python train.py <argv>`` without re-importing the world."""
    os.environ.update(env)
    sys.argv = [str(REPO / "train.py"), *argv]
    runpy.run_path(str(REPO / "train.py"), run_name="__main__")


def forked_train_py(argv: list[str], env: dict) -> int:
    """Run train.py in a forked child; return its exit code (-9 when SIGKILLed)."""
    child = multiprocessing.get_context("fork").Process(target=_train_py, args=(argv, env))
    child.start()
    child.join(timeout=300)
    return child.exitcode


def run_folder(root: Path) -> Path:
    [folder] = {p.parent for p in root.rglob("train_log.jsonl")}
    return folder


def trained_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted((folder / "adapter").rglob("*")):
        if path.suffix in (".pt", ".bin"):
            out.update({f"{path.name}:{k}": v for k, v in torch.load(path, weights_only=True).items()})
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            out.update({f"{path.name}:{k}": v for k, v in load_file(path).items()})
    assert out, f"no tensors under {folder / 'adapter'}"
    return out


def assert_same_run(a: Path, b: Path) -> None:
    ma, mb = (json.loads((f / "metrics.json").read_text()) for f in (a, b))
    for key in ("best", "final", "evaluations", "rank", "test_at_best_val", "test_at_last"):
        assert ma.get(key) == mb.get(key), key
    for name in ("train_log.jsonl", "rank_pattern.json", "growth_log.jsonl"):
        assert (a / name).read_text() == (b / name).read_text(), name
    ta, tb = trained_tensors(a), trained_tensors(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


@pytest.mark.parametrize("case", list(CASES))
def test_killed_twice_and_resumed_run_equals_an_uninterrupted_one(make_cfg, tmp_path, case):
    method, during, after = CASES[case]
    overrides = [*COMMON, *method]
    cfg, final = make_cfg(overrides)
    reference = run_module.run(cfg, final)
    ref_folder = run_folder(Path(cfg.results.root))

    argv = [*final, f"results.root={tmp_path / 'killed'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    def kill_at(step: int) -> dict:
        return {checkpoint.TEST_SIGNAL_ENV: f"{step}:KILL"}

    assert forked_train_py(argv, kill_at(during)) == -signal.SIGKILL
    folder = run_folder(tmp_path / "killed")
    assert checkpoint.read(folder)["loop"]["step"] == during - 1
    logged = [json.loads(line)["step"] for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert logged[-1] == during  # the lines of step `during` are past the checkpoint's offset
    assert forked_train_py(argv, kill_at(after)) == -signal.SIGKILL  # resumed from during - 1
    assert checkpoint.read(folder)["loop"]["step"] == after - 1
    assert forked_train_py(argv, {}) == 0
    assert not checkpoint.path_in(folder).exists()
    assert_same_run(ref_folder, folder)
    assert reference["evaluations"] >= 5
    if "test_at_best_val" in reference:  # the kept best state crossed both kills
        assert reference["best"]["step"] < during - 1 < reference["final"]["step"]


def test_sigint_stops_after_the_step_with_a_checkpoint_and_the_rerun_finishes_identically(make_cfg, monkeypatch):
    """A real SIGINT in the middle of training (here at step 5, between two periodic
    checkpoints): the loop finishes the step, writes a checkpoint of it and raises Interrupted."""
    from adarank.training import loop

    cfg, final = make_cfg([*COMMON, *CASES["triadapt-linear"][0], "train.checkpoint_interval=4"])
    run_module.run(cfg, final)
    ref_folder = run_folder(Path(cfg.results.root))

    cfg2, final2 = make_cfg([*final, f"results.root={Path(cfg.results.root).parent / 'interrupted'}"])
    update = loop.Progress.update

    def update_then_interrupt(self, step, loss, lr):
        update(self, step, loss, lr)
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(loop.Progress, "update", update_then_interrupt)
    with pytest.raises(checkpoint.Interrupted, match="interrupted at step 5; rerun the same command to resume"):
        run_module.run(cfg2, final2)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    monkeypatch.undo()
    folder = run_folder(Path(cfg2.results.root))
    assert checkpoint.read(folder)["loop"]["step"] == 5
    run_module.run(cfg2, final2)
    assert_same_run(ref_folder, folder)


def test_a_resumed_runs_wall_time_counts_the_processes_before_it(make_cfg, monkeypatch):
    """costs.wall_seconds of a resumed run is the whole run's: the first process (slowed to 0.2 s
    a step, stopped after step 6) spent >= 1.2 s, which the resumed process's own wall time (fast
    steps) would miss; the mini SQuAD sweep's resumed runs reported only their last part."""
    cfg, final = make_cfg([*COMMON, "method=lora", "train.checkpoint_interval=3"])
    monkeypatch.setenv(checkpoint.TEST_STEP_SECONDS_ENV, "0.2")
    monkeypatch.setenv(checkpoint.TEST_SIGNAL_ENV, "6:INT")
    with pytest.raises(checkpoint.Interrupted, match="interrupted at step 6"):
        run_module.run(cfg, final)
    folder = run_folder(Path(cfg.results.root))
    saved = checkpoint.read(folder)
    assert saved["loop"]["step"] == 6 and saved["resumes"] == 0 and saved["wall_seconds"] >= 1.2
    monkeypatch.delenv(checkpoint.TEST_STEP_SECONDS_ENV)
    monkeypatch.delenv(checkpoint.TEST_SIGNAL_ENV)
    metrics = run_module.run(cfg, final)
    costs = metrics["costs"]
    assert costs["resumes"] == 1 and costs["wall_seconds"] > saved["wall_seconds"]
    assert json.loads((folder / "metrics.json").read_text())["costs"]["wall_seconds"] == costs["wall_seconds"]


def test_train_py_exits_130_with_one_line_on_sigint_and_force_starts_afresh(make_cfg, tmp_path):
    cfg, final = make_cfg([*COMMON, "method=lora", "train.checkpoint_interval=3"])
    argv = [sys.executable, str(REPO / "train.py"), *final, f"hydra.run.dir={tmp_path / 'hydra'}"]
    env = {**os.environ, checkpoint.TEST_SIGNAL_ENV: "4:INT", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if "interrupted at step" in line]
    assert lines == ["interrupted at step 4; rerun the same command to resume"]
    folder = run_folder(Path(cfg.results.root))
    assert checkpoint.read(folder)["loop"]["step"] == 4  # written at the interruption

    cfg_force, final_force = make_cfg([*final, "force=true"])
    metrics = run_module.run(cfg_force, final_force)  # starts again from step 0: a fresh log
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 15))
    assert metrics["costs"]["optimizer_steps"] == 14
    assert not checkpoint.path_in(folder).exists()


def test_a_second_ctrl_c_during_the_graceful_stop_exits_130_in_one_line(make_cfg, tmp_path):
    """Issue 24 §2: two SIGINTs at the end of step 4 (the second while the first one's stop is
    under way) stop at once: exit 130, one line, no traceback; the last periodic checkpoint stays
    and the folder records an interruption, not a failure."""
    from adarank import run_folder as folders

    cfg, final = make_cfg([*COMMON, "method=lora", "train.checkpoint_interval=3"])
    argv = [sys.executable, str(REPO / "train.py"), *final, f"hydra.run.dir={tmp_path / 'hydra'}"]
    env = {**os.environ, checkpoint.TEST_SIGNAL_ENV: "4:INT,4:INT", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if "interrupted" in line] == [
        "interrupted; rerun the same command to resume from the last checkpoint, if one was written"]
    folder = run_folder(Path(cfg.results.root))
    assert checkpoint.read(folder)["loop"]["step"] == 3
    assert not (folder / folders.FAILURE_FILE).exists()
    [event] = [json.loads(line) for line in (folder / folders.INTERRUPTIONS_FILE).read_text().splitlines()]
    assert event["event"] == "interrupted" and event["step"] is None


def test_a_preemption_signal_is_deferred_to_a_checkpoint_then_handed_to_submitit(make_cfg, tmp_path):
    """Under submitit, SLURM's timeout/preemption signal (USR2) runs submitit's handler, which
    requeues the job and exits. The loop defers it to the end of the optimizer step, writes a
    checkpoint, then calls it; the requeued job (the same command) resumes and ends identically."""
    cfg, final = make_cfg([*COMMON, *CASES["increlora"][0], "train.checkpoint_interval=4"])
    run_module.run(cfg, final)
    ref_folder = run_folder(Path(cfg.results.root))

    calls = []

    def submitit_handler(signum, frame):  # stands for submitit's checkpoint_and_try_requeue
        calls.append((signum, checkpoint.read(run_folder(tmp_path / "preempted"))["loop"]["step"]))
        raise SystemExit(-1)

    cfg2, final2 = make_cfg([*final, f"results.root={tmp_path / 'preempted'}"])
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    os.environ[checkpoint.TEST_SIGNAL_ENV] = "5:USR2"  # between the checkpoints of steps 4 and 8
    try:
        with pytest.raises(SystemExit):
            run_module.run(cfg2, final2)
    finally:
        del os.environ[checkpoint.TEST_SIGNAL_ENV]
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # restored on the way out
        signal.signal(signal.SIGUSR2, previous)
    assert calls == [(signal.SIGUSR2, 5)]
    run_module.run(cfg2, final2)
    assert_same_run(ref_folder, run_folder(tmp_path / "preempted"))


def test_the_slurm_launcher_requeues_timed_out_jobs_with_the_same_task():
    """conf/hydra/launcher/slurm.yaml allows requeues, and the plugin's checkpoint() (which
    submitit calls on the timeout signal) resubmits the same launcher call with the same arguments."""
    submitit = pytest.importorskip("submitit")
    launcher_module = pytest.importorskip("hydra_plugins.hydra_submitit_launcher.submitit_launcher")
    from omegaconf import OmegaConf

    slurm = OmegaConf.load(REPO / "conf" / "hydra" / "launcher" / "slurm.yaml")
    assert slurm.max_num_timeout > 0 and slurm.signal_delay_s >= 60
    launcher = launcher_module.SlurmLauncher(max_num_timeout=slurm.max_num_timeout)
    args = (["task=rte", "method=lora"], "hydra.sweep.dir", 0, "job_id_for_0", {})
    delayed = launcher.checkpoint(*args)
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function is launcher and delayed.args == args


@pytest.mark.slow
def test_submitit_local_requeue_resumes_from_the_checkpoint(make_cfg, tmp_path):
    """The whole path with submitit's local executor (three interpreters, about 40 s of CPU):
    the job signals itself USR2 at the end of step 4, submitit requeues it, the rerun resumes."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg, final = make_cfg([*COMMON, "method=lora", "train.max_steps=8"])
    argv = [sys.executable, str(REPO / "train.py"), "-m", "hydra/launcher=submitit_local",
            f"hydra.sweep.dir={tmp_path / 'sweep'}", *final]
    env = {**os.environ, checkpoint.TEST_SIGNAL_ENV: "4:USR2", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    logs = "".join(p.read_text() for p in (tmp_path / "sweep").rglob("*_log.*"))
    assert "Requeued job" in logs and "resuming from step 4 of 8" in logs
    folder = run_folder(Path(cfg.results.root))
    assert json.loads((folder / "metrics.json").read_text())["costs"]["optimizer_steps"] == 8
    assert not checkpoint.path_in(folder).exists()


def test_auto_interval_keeps_the_save_under_one_percent_of_the_steps_in_between():
    assert checkpoint.auto_interval(2.0, [0.1] * 50) == 2000  # 2 s save, 0.1 s steps: 1 % at 2,000
    assert checkpoint.auto_interval(0.01, [0.1] * 50) == checkpoint.AUTO_FIRST  # never below
    assert checkpoint.auto_interval(1.0, [9.0] * 200 + [1.0] * 100) == 100  # the last 100 steps
    saver = checkpoint.Checkpointer(".", "auto")
    assert saver.due(100, 200) and not saver.due(99, 200) and not saver.due(200, 200)
    with pytest.raises(ValueError, match="auto or >= 0"):
        checkpoint.Checkpointer(".", -1)


def test_checkpoint_cost_measures_the_real_save(tmp_path):
    from adarank.tools import checkpoint_cost

    out = tmp_path / "cost.json"
    assert checkpoint_cost.main(["--preset", "tiny", "--methods", "lora,full", "--repeats", "1", "--out", str(out)]) == 0
    lora, full = json.loads(out.read_text())["rows"]
    assert 0 < lora["checkpoint_mb"] < full["checkpoint_mb"] and lora["save_seconds"] > 0
    # AdamW's two moments: a full checkpoint is at least 3 x the trainable fp32 bytes
    assert full["checkpoint_mb"] * 2**20 >= 3 * 4 * full["trainable_params"]
