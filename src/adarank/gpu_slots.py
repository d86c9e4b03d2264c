"""One job per GPU on a multi-GPU machine, whatever local launcher started the jobs.

Hydra's local launchers do not place jobs on GPUs: ``submitit_local`` gives every job GPU 0 (or
none), ``joblib`` caps how many jobs run at once but reuses its worker processes and knows
nothing about GPUs. So each job claims a GPU itself:

* GPUs are named by UUID (``nvidia-smi --query-gpu=index,uuid``, which never initialises CUDA;
  restricted to ``CUDA_VISIBLE_DEVICES`` when it is set), never by index: an index means another
  GPU in a process whose ``CUDA_VISIBLE_DEVICES`` differs;
* the job takes an exclusive lock on the first free ``<lock dir>/gpu-<UUID>.lock`` and holds it
  until it ends (jobs beyond the number of GPUs wait for a free one; the OS drops a lock when its
  process dies, so a crashed job never blocks a GPU);
* the run itself (:func:`on_free_gpu`, what ``train.py`` calls) then executes in a **fresh
  process** started with ``CUDA_VISIBLE_DEVICES=<UUID>``: CUDA reads that variable once, when the
  process first touches it, so a reused joblib worker that ran an earlier job must not run the
  next one itself (it would keep its CUDA context, and its device numbering, of the earlier GPU).
  The child sees one GPU, ``cuda:0``; its log lines go to the same job log.

Nothing of this happens with fewer than two GPUs (a SLURM job sees only its own), with an
explicit ``train.device`` (``cpu``, ``cuda:N``), or with ADARANK_GPU_SLOTS=off. ADARANK_GPU_LOCK_DIR
sets the lock folder (default: a per-user folder under the system temp dir; it must be shared by
all jobs on the machine).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from adarank.gpu_locks import ENV_CLAIMED, acquire_slot, visible_gpus, wants_slot

log = logging.getLogger(__name__)

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format


# -- a fresh process per job -----------------------------------------------------------------
def on_free_gpu(run):
    """``run(cfg, overrides)`` on a GPU of its own: where this machine offers a choice of GPUs, lock a
    free one and run the job in a fresh process that sees only it (see the module docstring);
    otherwise call ``run`` here. A finished run is skipped here, without taking a GPU."""

    def wrapped(cfg, overrides=None):
        requested = str(cfg.train.device)
        if os.environ.get(ENV_CLAIMED) or not wants_slot(requested):
            return run(cfg, overrides=overrides)
        gpus = visible_gpus()
        if len(gpus) < 2 or _finished(cfg, overrides):
            return run(cfg, overrides=overrides)
        uuid, handle = acquire_slot(gpus)
        try:
            log.info("GPU %s claimed (lock %s): the job runs in a fresh process that sees only it", uuid, handle.name)
            return run_in_fresh_process(cfg, overrides, uuid)
        finally:
            handle.close()

    return wrapped


def _finished(cfg, overrides) -> bool:
    from adarank import checks, results

    if cfg.force:
        return False
    try:
        folder = results.run_dir(cfg, checks.check_static(cfg), list(overrides or []))
    except Exception:  # noqa: BLE001 - the job itself reports a bad config
        return False
    return results.find_complete(folder) is not None


def run_in_fresh_process(cfg, overrides, uuid: str, python: str = sys.executable) -> dict:
    """Run the job ``python -m adarank.gpu_slots`` with CUDA_VISIBLE_DEVICES=``uuid``; return its
    metrics, or raise its error (same type and message) or KeyboardInterrupt."""
    from omegaconf import OmegaConf

    from adarank.run_folder import Skipped

    with tempfile.TemporaryDirectory(prefix="adarank-job-") as tmp:
        request = Path(tmp) / "job.json"
        reply = Path(tmp) / "result.json"
        log_files = [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
        request.write_text(json.dumps({
            "config": OmegaConf.to_container(cfg, resolve=True),
            "overrides": list(overrides or []),
            "log_files": log_files,
            "result": str(reply),
        }))
        for handler in logging.getLogger().handlers:
            handler.flush()
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": uuid, ENV_CLAIMED: uuid}
        child = subprocess.Popen([python, "-m", "adarank.gpu_slots", str(request)], env=env)
        try:
            code = child.wait()
        except KeyboardInterrupt:  # Ctrl-C reaches the child too: let it write its checkpoint
            child.wait()
            raise
        if not reply.is_file():
            raise RuntimeError(f"the job process on GPU {uuid} exited with code {code} before reporting")
        result = json.loads(reply.read_text())
    if result["status"] == "interrupted":
        from adarank.training.checkpoint import Interrupted

        raise Interrupted(result["step"])
    if result["status"] == "error":
        raise _rebuild_error(result)
    metrics = result["metrics"]
    return Skipped(metrics) if result["skipped"] else metrics


def _rebuild_error(result: dict) -> BaseException:
    """The child's exception as the same type when it takes a message, else a RuntimeError."""
    try:
        kind = getattr(importlib.import_module(result["module"]), result["type"])
        if isinstance(kind, type) and issubclass(kind, Exception):
            return kind(result["message"])
    except Exception:  # noqa: BLE001 - any type that cannot be rebuilt from its message
        pass
    return RuntimeError(f"{result['type']}: {result['message']}\n{result['traceback']}")


def _job_main(request_path: str) -> int:
    """The fresh job process: run the job, write its outcome for the parent."""
    visible, torch_loaded = os.environ.get("CUDA_VISIBLE_DEVICES"), "torch" in sys.modules
    request = json.loads(Path(request_path).read_text())
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for target in [None, *request["log_files"]]:
        handler = logging.StreamHandler() if target is None else logging.FileHandler(target, mode="a")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    log.info("job process %d: CUDA_VISIBLE_DEVICES=%s, set before torch was imported: %s", os.getpid(), visible,
             not torch_loaded)
    from omegaconf import OmegaConf

    from adarank.run import run
    from adarank.run_folder import Skipped
    from adarank.training.checkpoint import Interrupted

    cfg = OmegaConf.create(request["config"])
    OmegaConf.set_struct(cfg, True)
    outcome: dict = {}
    code = 0
    try:
        metrics = run(cfg, overrides=request["overrides"])
        outcome.update(status="ok", metrics=dict(metrics), skipped=isinstance(metrics, Skipped))
    except Interrupted as stop:
        outcome.update(status="interrupted", step=stop.step)
        code = 130
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises it again
        outcome.update(status="error", type=type(err).__name__, module=type(err).__module__, message=str(err),
                       traceback=traceback.format_exc())
        code = 1
    Path(request["result"]).write_text(json.dumps(outcome, default=str))
    return code


if __name__ == "__main__":  # python -m adarank.gpu_slots <request.json> (internal: on_free_gpu)
    sys.exit(_job_main(sys.argv[1]))
