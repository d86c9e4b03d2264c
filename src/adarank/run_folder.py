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
and message) into its run folder when the folder exists; a later success removes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

from adarank import results
from adarank.gpu_slots import try_lock

log = logging.getLogger("adarank")

FAILURE_FILE = "failure.json"
STAGING_PREFIX = ".staging-"


class RunBusy(RuntimeError):
    """Another process is training this config."""


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
            if folder.is_dir():
                write_failure(folder, err)
            raise
        if work != folder and results.is_complete(work):
            _replace(folder, work)
        (folder / FAILURE_FILE).unlink(missing_ok=True)


def write_failure(folder: Path, err: BaseException) -> None:
    record = {
        "status": "failed",
        "error": type(err).__name__,
        "message": str(err),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "note": "metrics.json beside this file is an earlier, untouched result" if results.is_complete(folder) else None,
    }
    results.write_json_atomic(folder / FAILURE_FILE, record)


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
