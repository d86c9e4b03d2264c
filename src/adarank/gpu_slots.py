"""One job per GPU on a multi-GPU machine, whatever local launcher started the jobs.

Hydra's local launchers do not place jobs on GPUs: ``submitit_local`` gives every job GPU 0 (or
none), ``joblib`` caps how many jobs run at once but reuses worker processes and knows nothing
about GPUs. So each run claims a GPU itself: it takes an exclusive lock on the first free
``<lock dir>/gpu<i>.lock`` (i < torch.cuda.device_count()), makes that GPU the current CUDA device
and holds the lock until the run ends. Jobs beyond the number of GPUs wait for a free one. The OS
drops a lock when its process dies, so a crashed job never blocks a GPU.

run.py:

    with claim_gpu(cfg.train.device) as device:    # "cuda:2", "cuda", "cpu", ... (a torch device string)
        ... build the model on torch.device(device) ...

Nothing happens with fewer than two visible GPUs (a SLURM job sees only its own), or when
ADARANK_GPU_SLOTS=off. ADARANK_GPU_LOCK_DIR sets the lock folder (default: a per-user folder under
the system temp dir; it must be shared by all jobs on the machine).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

ENV_SWITCH = "ADARANK_GPU_SLOTS"
ENV_LOCK_DIR = "ADARANK_GPU_LOCK_DIR"
POLL_SECONDS = 5.0


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


def acquire_slot(count: int, folder: Path | None = None, poll: float = POLL_SECONDS, timeout: float | None = None):
    """(slot index, lock handle) of the first free slot among ``count``; waits while all are taken."""
    folder = folder or lock_dir()
    start = time.monotonic()
    announced = False
    while True:
        for index in range(count):
            handle = try_lock(folder / f"gpu{index}.lock")
            if handle is not None:
                return index, handle
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"no free GPU slot among {count} after {timeout:.0f}s")
        if not announced:
            log.info("all %d GPUs are busy with other runs: waiting for a free one", count)
            announced = True
        time.sleep(poll)


@contextlib.contextmanager
def claim_gpu(requested: str = "auto") -> Iterator[str]:
    """Yield the torch device string this run should use, holding a GPU slot when there is a choice."""
    requested = str(requested or "auto")
    if requested.startswith("cuda:") or requested == "cpu" or os.environ.get(ENV_SWITCH, "").lower() in ("off", "0", "false"):
        yield requested  # an explicit device, or slots switched off
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        yield requested
        return
    index, handle = acquire_slot(count)
    try:
        torch.cuda.set_device(index)
        log.info("GPU slot %d of %d claimed (lock %s)", index, count, handle.name)
        yield f"cuda:{index}"
    finally:
        handle.close()  # releases the lock
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
