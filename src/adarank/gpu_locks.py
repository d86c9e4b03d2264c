"""GPU slots on a multi-GPU machine: which GPUs this process may use (by UUID), and an exclusive
lock file per GPU that a job holds until it ends. ``claim_gpu`` is what ``run()`` calls; the
launcher side, a fresh process per job on its locked GPU, is gpu_slots.py (its docstring explains
the scheme and the switches ADARANK_GPU_SLOTS / ADARANK_GPU_LOCK_DIR)."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

ENV_SWITCH = "ADARANK_GPU_SLOTS"
ENV_LOCK_DIR = "ADARANK_GPU_LOCK_DIR"
#: set in a job's fresh process: the UUID of the GPU its parent locked for it
ENV_CLAIMED = "ADARANK_GPU_CLAIMED"
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


def wants_slot(requested: str) -> bool:
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
    if os.environ.get(ENV_CLAIMED) and wants_slot(requested):
        yield requested
        return
    gpus = visible_gpus() if wants_slot(requested) else []
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
