"""Who may write a run folder, where a forced rerun trains, and what a failed run leaves behind.

A run folder ``<results.root>/<task>/<method>/seed<k>/<slug>-<hash>`` goes through these states:

* absent, or present without ``metrics.json`` (an interrupted run, possibly with the checkpoint
  a normal rerun resumes from);
* locked: a process holds ``flock`` on ``.<hash>.lock`` beside it (keyed by the config hash, so
  two spellings of one config share the lock) for as long as it trains; a second process with
  the same config stops at once with :class:`RunBusy`, naming the holder's pid;
* complete: ``metrics.json`` exists with ``status`` ``completed`` or ``diverged``; a rerun skips
  it unless ``force=true``.

``force=true`` never trains in the run folder itself: it trains in a fresh sibling
``.staging-<hash>-<pid>/<slug>-<hash>`` and moves it into place only once its ``metrics.json``
exists, so a forced rerun that fails or is killed leaves the previous result untouched. A normal
rerun trains in the run folder itself (where an interrupted run's checkpoint is found).

A run that fails with an exception writes ``failure.json`` (status ``failed``, the error's type
and message) into its run folder when the folder exists; a later success removes it. A full disk
(ENOSPC, EDQUOT) becomes :class:`DiskFull`: one line naming the folder and its free space, and
``"error": "disk full"`` in failure.json. A run stopped on purpose is not a failure: Ctrl-C and a
SLURM requeue (timeout or preemption, after a checkpoint) append a line to ``interruptions.jsonl``
(``event`` interrupted | requeued, ``step``, ``time``, ``slurm_job_id``) and leave no failure.json.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

from adarank import results
from adarank.gpu_locks import try_lock
from adarank.training.checkpoint import Requeued

log = logging.getLogger("adarank")

FAILURE_FILE = "failure.json"
INTERRUPTIONS_FILE = "interruptions.jsonl"
STAGING_PREFIX = ".staging-"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class RunBusy(RuntimeError):
    """Another process is training this config."""


class DiskFull(OSError):
    """No space left where the run writes (its last checkpoint and any finished result stay)."""

    def __init__(self, folder: Path, err: OSError):
        free = _free_bytes(folder)
        shown = "unknown" if free is None else f"{free / 2**20:.1f} MB" if free >= 2**20 else f"{free // 1024} KB"
        writing = f" while writing {Path(err.filename).name}" if err.filename else ""
        super().__init__(
            f"no space left for {folder} ({shown} free on its filesystem){writing}; free some space or set "
            "results.root elsewhere, then rerun the same command (it resumes from the last checkpoint)"
        )
        self.errno = err.errno


def _disk_full_error(err: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT error behind ``err``, if any: libraries may wrap it (torch.save's zip
    writer raises a RuntimeError when its write failed for lack of space)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _free_bytes(folder: Path) -> int | None:
    for path in (folder, *folder.parents):
        if path.exists():
            return shutil.disk_usage(path).free
    return None


class Skipped(dict):
    """The metrics.json content of a finished run that ``run()`` skipped (a dict like any other)."""


def config_id(folder: Path) -> str:
    return folder.name.rsplit("-", 1)[-1]


def lock_path(folder: Path) -> Path:
    return folder.parent / f".{config_id(folder)}.lock"


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the run's lock; raise :class:`RunBusy` at once when another process holds it."""
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = try_lock(path)
    if handle is None:
        holder = path.read_text().strip() or "another process"
        raise RunBusy(
            f"{folder} is being trained by {holder} (lock {path}); wait for it to finish, or stop "
            "that process and rerun"
        )
    try:
        yield
    finally:
        handle.close()  # releases the lock; the file stays (removing it would race a new holder)


@contextlib.contextmanager
def claim(folder: Path, force: bool) -> Iterator[Path]:
    """Lock the run and yield the folder to train in: ``folder`` itself, or with ``force`` a fresh
    staging sibling that replaces ``folder`` only when it holds a ``metrics.json``."""
    with locked(folder):
        _recover(folder)
        work = folder.parent / f"{STAGING_PREFIX}{config_id(folder)}-{os.getpid()}" / folder.name if force else folder
        try:
            yield work
        except BaseException as err:
            if work != folder:
                shutil.rmtree(work.parent, ignore_errors=True)  # the old result stays as it was
            full = _disk_full_error(err)
            disk_full = full is not None and not isinstance(err, DiskFull)
            stop = DiskFull(folder, full) if disk_full else err
            if folder.is_dir():
                if isinstance(stop, (KeyboardInterrupt, Requeued)):
                    record_interruption(folder, stop)
                else:
                    write_failure(folder, stop)
            if disk_full:
                raise stop from None
            raise
        if work != folder and results.is_complete(work):
            _replace(folder, work)
        (folder / FAILURE_FILE).unlink(missing_ok=True)


def write_failure(folder: Path, err: BaseException) -> None:
    record = {
        "status": "failed",
        "error": "disk full" if isinstance(err, DiskFull) else type(err).__name__,
        "message": str(err),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "note": "metrics.json beside this file is an earlier, untouched result" if results.is_complete(folder) else None,
    }
    try:
        results.write_json_atomic(folder / FAILURE_FILE, record)
    except OSError as write_error:  # e.g. the disk is still full: the error itself is reported anyway
        log.warning("could not write %s: %s", folder / FAILURE_FILE, write_error)


def record_interruption(folder: Path, stop: BaseException) -> None:
    """Append a Ctrl-C or a SLURM requeue to interruptions.jsonl (not a failure: the run resumes)."""
    record = {
        "event": "requeued" if isinstance(stop, Requeued) else "interrupted",
        "step": getattr(stop, "step", None),  # None: stopped before a checkpoint of the current step
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
    try:
        with open(folder / INTERRUPTIONS_FILE, "a") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError as write_error:
        log.warning("could not write %s: %s", folder / INTERRUPTIONS_FILE, write_error)


def _replace(folder: Path, staged: Path) -> None:
    old = folder.parent / f"{STAGING_PREFIX}{config_id(folder)}-{os.getpid()}-old"
    if folder.exists():
        os.replace(folder, old)
    os.replace(staged, folder)
    shutil.rmtree(staged.parent, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def _recover(folder: Path) -> None:
    """Under the lock: finish or drop what a forced run killed mid-way left beside ``folder``."""
    for stale in sorted(folder.parent.glob(f"{STAGING_PREFIX}{config_id(folder)}-*")):
        staged = stale / folder.name
        if not folder.exists() and results.is_complete(staged):
            os.replace(staged, folder)  # killed between its two renames: the new result wins
        elif not folder.exists() and stale.name.endswith("-old") and stale.is_dir():
            os.replace(stale, folder)
            continue
        shutil.rmtree(stale, ignore_errors=True)
