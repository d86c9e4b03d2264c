"""The real entrypoint: python train.py ... with Hydra overrides, single runs and multiruns."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def train_py(*args, cwd, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def test_multirun_writes_one_folder_per_job_and_reruns_skip(tmp_path, tiny_glue_dir):
    args = [
        "-m", "task=rte,mrpc", "method=lora,bitfit", "model=tiny", f"data.dir={tiny_glue_dir}",
        "train.max_steps=2", "task.warmup_steps=0", "train.progress=off", f"results.root={tmp_path}/results",
        f"hydra.sweep.dir={tmp_path}/hydra",
    ]
    train_py(*args, cwd=tmp_path)
    found = sorted(p.relative_to(tmp_path / "results").parts[:3] for p in (tmp_path / "results").rglob("metrics.json"))
    assert found == [("mrpc", "bitfit", "seed0"), ("mrpc", "lora", "seed0"),
                     ("rte", "bitfit", "seed0"), ("rte", "lora", "seed0")]
    variant = next((tmp_path / "results").rglob("metrics.json")).parent.name
    assert variant.startswith("data.dir") is False and variant.startswith("model=tiny,task.warmup_steps=0,train.max_steps=2-")
    again = train_py(*args, cwd=tmp_path)
    assert (again.stdout + again.stderr).count("skipping") == 4


def test_configuration_errors_exit_with_a_message(tmp_path):
    proc = train_py("method=full", "threshold=fixed", "model=tiny", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "configuration error" in proc.stderr and "does not grow ranks" in proc.stderr
    proc = train_py("method=nope", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "lora" in proc.stderr  # Hydra lists the available options


def test_no_network_and_no_local_copy_says_how_to_point_at_local_data(tmp_path):
    proc = train_py("model=tiny", "train.max_steps=1", f"results.root={tmp_path}/r", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "data.dir=/path/to/glue" in proc.stderr
    assert not list((tmp_path / "r").rglob("metrics.json")) if (tmp_path / "r").exists() else True
