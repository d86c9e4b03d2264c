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

import contextlib
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

ENV_SWITCH = "ADARANK_GPU_SLOTS"
ENV_LOCK_DIR = "ADARANK_GPU_LOCK_DIR"
#: set in a job's fresh process: the UUID of the GPU its parent locked for it
ENV_CLAIMED = "ADARANK_GPU_CLAIMED"
POLL_SECONDS = 5.0
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format


def lock_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"adarank-gpu-locks-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    path = Path(os.environ.get(ENV_LOCK_DIR) or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def try_lock(path: Path):
    """An open file holding an exclusive non-blocking lock on ``path``, or None when it is taken."""
    import fcntl

    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def acquire_slot(slots: int | list[str], folder: Path | None = None, poll: float = POLL_SECONDS,
                 timeout: float | None = None):
    """(slot, lock handle) of the first free slot; waits while all are taken. ``slots``: GPU
    UUIDs (lock files ``gpu-<UUID>.lock``), or a count (``gpu<i>.lock``, slot = index)."""
    folder = folder or lock_dir()
    names = list(range(slots)) if isinstance(slots, int) else list(slots)
    start = time.monotonic()
    announced = False
    while True:
        for name in names:
            handle = try_lock(folder / (f"gpu{name}.lock" if isinstance(name, int) else f"gpu-{name}.lock"))
            if handle is not None:
                return name, handle
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"no free GPU slot among {len(names)} after {timeout:.0f}s")
        if not announced:
            log.info("all %d GPUs are busy with other runs: waiting for a free one", len(names))
            announced = True
        time.sleep(poll)


# -- which GPUs ------------------------------------------------------------------------------
def visible_gpus() -> list[str]:
    """UUIDs of the GPUs this process may use, in CUDA's order ([] without nvidia-smi)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return select_visible(parse_gpu_list(out.stdout), os.environ.get("CUDA_VISIBLE_DEVICES"))


def parse_gpu_list(text: str) -> list[tuple[str, str]]:
    """[(index, UUID)] from ``nvidia-smi --query-gpu=index,uuid --format=csv,noheader``."""
    rows = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1]:
            rows.append((parts[0], parts[1]))
    return rows


def select_visible(rows: list[tuple[str, str]], visible: str | None) -> list[str]:
    """The UUIDs ``CUDA_VISIBLE_DEVICES`` lets through, in its order (all when unset). Entries are
    indices or UUIDs (a unique prefix is enough); as in CUDA, the list ends at the first entry
    that names no GPU."""
    if visible is None:
        return [uuid for _, uuid in rows]
    chosen = []
    for item in (i.strip() for i in visible.split(",")):
        match = [u for idx, u in rows if item == idx] if item.isdigit() else [u for _, u in rows if item and u.startswith(item)]
        if len(match) != 1 or match[0] in chosen:
            break
        chosen.append(match[0])
    return chosen


def _wants_slot(requested: str) -> bool:
    if requested.startswith("cuda:") or requested == "cpu":
        return False  # an explicit device
    return os.environ.get(ENV_SWITCH, "").lower() not in ("off", "0", "false")


# -- in this process -------------------------------------------------------------------------
@contextlib.contextmanager
def claim_gpu(requested: str = "auto") -> Iterator[str]:
    """Yield the torch device string this run should use, holding a GPU slot when there is a choice.

    In a job process that :func:`on_free_gpu` started, the parent holds the lock and the one
    visible GPU is this job's: the device as requested ("auto" / "cuda"). Called in any other process (``run()`` from a script), the
    lock is taken here; the GPU is then selected with ``CUDA_VISIBLE_DEVICES`` when CUDA is not
    initialised yet, else by finding its UUID among torch's devices."""
    requested = str(requested or "auto")
    if os.environ.get(ENV_CLAIMED) and _wants_slot(requested):
        yield requested
        return
    gpus = visible_gpus() if _wants_slot(requested) else []
    if len(gpus) < 2:
        yield requested
        return
    uuid, handle = acquire_slot(gpus)
    try:
        import torch

        if not torch.cuda.is_initialized():
            os.environ["CUDA_VISIBLE_DEVICES"] = uuid
            device = "cuda"
        else:
            device = f"cuda:{_torch_index(uuid)}"
            torch.cuda.set_device(device)
        log.info("GPU %s claimed (lock %s)", uuid, handle.name)
        yield device
    finally:
        handle.close()  # releases the lock


def _torch_index(uuid: str) -> int:
    import torch

    for index in range(torch.cuda.device_count()):
        if uuid.endswith(str(torch.cuda.get_device_properties(index).uuid)):
            return index
    raise RuntimeError(f"GPU {uuid} is not among this process's CUDA devices")


# -- a fresh process per job -----------------------------------------------------------------
def on_free_gpu(run):
    """``run(cfg, overrides)`` on a GPU of its own: where this machine offers a choice of GPUs, lock a
    free one and run the job in a fresh process that sees only it (see the module docstring);
    otherwise call ``run`` here. A finished run is skipped here, without taking a GPU."""

    def wrapped(cfg, overrides=None):
        requested = str(cfg.train.device)
        if os.environ.get(ENV_CLAIMED) or not _wants_slot(requested):
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
