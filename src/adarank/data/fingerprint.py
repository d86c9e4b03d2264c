"""A fingerprint of the data a run used, recorded in metrics.json (``data.fingerprint``).

* local files (``data.dir``): per file, its path relative to ``data.dir``, size and sha256;
* the hub: per split, the ``datasets`` fingerprint of the loaded split (the loaders put it in
  ``TaskData.info["hub_fingerprint"]``).

A checkpoint records the fingerprint too; :func:`differences` compares it with the data of a run
about to resume from it (run.py refuses to mix data within one run).

Before a finished run is skipped, :func:`changed_files` compares its recorded local fingerprint
with the files now under ``data.dir``; ``run()`` refuses to skip a run whose data changed (the
message names the files) so that an old result is never silently kept for new data. Hub data is
not re-checked on a skip (that would mean loading the dataset); runs recorded before
fingerprints existed are skipped as before.
"""

from __future__ import annotations

import hashlib
import os

CHUNK = 1 << 20


def local_files(task_cfg, data_dir: str) -> dict[str, str]:
    """Split name -> path of every file the task reads under ``data_dir``."""
    if task_cfg.kind == "glue":
        from adarank.data.glue import local_files as files
    else:
        from adarank.data.squad import local_files as files
    return files(task_cfg, data_dir)


def file_record(path: str) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return {"size": os.path.getsize(path), "sha256": digest.hexdigest()}


def local_fingerprint(task_cfg, data_dir: str) -> dict:
    files = {}
    for path in local_files(task_cfg, data_dir).values():
        files[os.path.relpath(path, data_dir)] = file_record(path)
    return {"source": "local", "files": files}


def of_run(cfg, info: dict) -> dict:
    """The fingerprint to record for a run whose data loader returned ``info``."""
    if cfg.data.dir:
        return local_fingerprint(cfg.task, cfg.data.dir)
    return {"source": "hub", "splits": info.pop("hub_fingerprint", None)}


def changed_files(recorded: dict | None, task_cfg, data_dir: str | None) -> list[str]:
    """Files under ``data_dir`` that differ from (or are absent in) a run's recorded fingerprint;
    empty when there is nothing to compare (hub data, or a run recorded without fingerprint)."""
    if not data_dir or not isinstance(recorded, dict) or recorded.get("source") != "local":
        return []
    before = recorded.get("files") or {}
    changed = []
    for path in local_files(task_cfg, data_dir).values():
        name = os.path.relpath(path, data_dir)
        if not os.path.isfile(path):
            changed.append(f"{path} (missing)")
            continue
        old = before.get(name)
        if old is None or old.get("size") != os.path.getsize(path) or old != file_record(path):
            changed.append(path)
    return changed


def differences(recorded: dict, current: dict) -> list[str]:
    """What differs between two fingerprints: the local files (relative names) or hub splits
    whose record changed, appeared or disappeared, or the data source itself."""
    if recorded.get("source") != current.get("source"):
        return [f"the data source ({recorded.get('source')} -> {current.get('source')})"]
    key = "files" if current.get("source") == "local" else "splits"
    before, now = recorded.get(key) or {}, current.get(key) or {}
    if not isinstance(before, dict) or not isinstance(now, dict):
        return [] if before == now else [f"the {key}"]
    return [name for name in sorted(set(before) | set(now)) if before.get(name) != now.get(name)]
