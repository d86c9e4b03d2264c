"""The local multi-GPU launcher (adarank/gpu_slots.py, adarank/gpu_locks.py) without GPUs: GPUs named by UUID from a fake
``nvidia-smi``, locks by UUID, and each job run in a fresh process whose CUDA_VISIBLE_DEVICES is
set before torch is imported."""

from __future__ import annotations

import os
import stat

import pytest

from adarank import gpu_locks, gpu_slots
from adarank.checks import ConfigError
from adarank.run import run
from adarank.run_folder import Skipped

UUIDS = ["GPU-aaaa1111-2222-3333-4444-555555555555", "GPU-bbbb1111-2222-3333-4444-555555555555"]


@pytest.fixture
def two_gpus(tmp_path, monkeypatch):
    """A machine whose nvidia-smi lists two GPUs (and no CUDA for torch: this is a CPU test)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + "".join(f"echo '{i}, {u}'\n" for i, u in enumerate(UUIDS)))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(gpu_locks.ENV_LOCK_DIR, str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(gpu_locks.ENV_CLAIMED, raising=False)
    (tmp_path / "locks").mkdir()
    return tmp_path / "locks"


def test_gpus_are_named_by_uuid_and_filtered_like_cuda_does(two_gpus, monkeypatch):
    assert gpu_locks.visible_gpus() == UUIDS
    for visible, expected in (("1", UUIDS[1:]), ("1,0", UUIDS[::-1]), ("GPU-bbbb", UUIDS[1:]),
                              ("0,7,1", UUIDS[:1]), ("", []), ("-1", [])):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert gpu_locks.visible_gpus() == expected, visible


def test_parse_ignores_what_is_not_a_gpu_row():
    text = f"0, {UUIDS[0]}\nNo devices were found\n\n1, {UUIDS[1]}\n"
    assert gpu_locks.parse_gpu_list(text) == [("0", UUIDS[0]), ("1", UUIDS[1])]


def test_without_nvidia_smi_there_is_no_choice(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    assert gpu_locks.visible_gpus() == []


def test_slots_are_locked_by_uuid(two_gpus):
    first, a = gpu_locks.acquire_slot(UUIDS, two_gpus, poll=0.01)
    second, b = gpu_locks.acquire_slot(UUIDS, two_gpus, poll=0.01)
    assert (first, second) == tuple(UUIDS)
    assert sorted(p.name for p in two_gpus.iterdir()) == [f"gpu-{u}.lock" for u in UUIDS]
    with pytest.raises(TimeoutError):
        gpu_locks.acquire_slot(UUIDS, two_gpus, poll=0.01, timeout=0.05)
    a.close()
    again, c = gpu_locks.acquire_slot(UUIDS, two_gpus, poll=0.01)
    assert again == UUIDS[0]
    b.close(), c.close()


@pytest.mark.slow  # a child process imports torch and transformers afresh
def test_each_job_runs_in_a_fresh_process_that_sees_only_its_gpu(two_gpus, make_cfg, capfd):
    """The wrapper train.py uses: with two GPUs to choose from, it locks the first free one and
    runs the job in a child started with CUDA_VISIBLE_DEVICES=<its UUID> (set before the child
    imports torch); the child trains (on the CPU here) and its metrics come back. A finished run
    is then skipped in this process, without a GPU; a bad config comes back as the same error."""
    cfg, overrides = make_cfg(["method=lora", "train.max_steps=2"])
    metrics = gpu_slots.on_free_gpu(run)(cfg, overrides)
    assert metrics["status"] == "completed" and not isinstance(metrics, Skipped)
    err = capfd.readouterr().err
    assert f"CUDA_VISIBLE_DEVICES={UUIDS[0]}, set before torch was imported: True" in err
    assert gpu_locks.ENV_CLAIMED not in os.environ and "CUDA_VISIBLE_DEVICES" not in os.environ  # this process untouched
    assert isinstance(gpu_slots.on_free_gpu(run)(cfg, overrides), Skipped)
    assert "job process" not in capfd.readouterr().err  # skipped here, no child
    bad, bad_overrides = make_cfg(["method=lora", "train.max_steps=2", "task.lr=-1"])
    with pytest.raises(ConfigError, match="task.lr must be a finite number > 0"):
        gpu_slots.on_free_gpu(run)(bad, bad_overrides)


def test_explicit_devices_and_single_gpu_machines_run_in_this_process(two_gpus, make_cfg, monkeypatch):
    calls = []

    def fake_run(cfg, overrides=None):
        calls.append(str(cfg.train.device))
        return {}

    for device in ("cpu", "cuda:1"):
        cfg, overrides = make_cfg([f"train.device={device}"])
        gpu_slots.on_free_gpu(fake_run)(cfg, overrides)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # one GPU visible: nothing to choose
    cfg, overrides = make_cfg([])
    gpu_slots.on_free_gpu(fake_run)(cfg, overrides)
    assert calls == ["cpu", "cuda:1", "auto"]
