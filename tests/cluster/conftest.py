"""A throw-away single-node SLURM cluster for the tests in this folder (scripts/slurm_local.sh).

One cluster per test session: the fixture is session-scoped, and under ``pytest -n 2`` the
scheduler of tests/conftest.py sends every test of this folder to the same xdist worker, so one
cluster is started, not one per worker. The tests skip, naming what is
missing, where SLURM or munge is not installed or the user is not root (slurmd starts jobs as
their user); CI installs both (.ci/run) and runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "slurm_local.sh"
TOOLS = ("sbatch", "scontrol", "squeue", "scancel", "sinfo", "slurmctld", "slurmd", "munged")


def skip_reason() -> str | None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"no SLURM here ({', '.join(missing)} not found): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "starting a throw-away SLURM cluster needs root (slurmd starts jobs as their user)"
    if find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        return "hydra-submitit-launcher is not installed: pip install -e '.[slurm]'"
    return None


class Cluster:
    """Handle on the running cluster: its config folder, environment and a few scontrol helpers."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}

    def run(self, *args: str) -> str:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, check=True, timeout=60).stdout

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict ({} once SLURM has forgotten the job)."""
        try:
            text = self.run("scontrol", "show", "job", "--oneliner", job_id)
        except subprocess.CalledProcessError:
            return {}
        return dict(field.split("=", 1) for field in text.split() if "=" in field)

    def queued(self) -> list[str]:
        return self.run("squeue", "--noheader", "--format=%i").split()

    def cancel_all(self, timeout: float = 60) -> None:
        if self.queued():
            subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True, timeout=60)
        wait_for(lambda: not self.queued(), timeout, "the cluster's jobs to end")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.folder.glob("*.log")))


def wait_for(condition, timeout: float, what: str, poll: float = 0.5):
    """Poll ``condition()`` until it returns something truthy; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("adarank-slurm")
    started = subprocess.run([str(SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=120)
    cluster = Cluster(folder)
    try:
        assert started.returncode == 0, f"{started.stdout}{started.stderr}\n{cluster.logs()}"
        yield cluster
    finally:
        try:
            cluster.cancel_all()
        finally:
            subprocess.run([str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=120)
