"""One Hydra job around ``run()``: errors as one line, a status record per job, a sweep summary.

* A single run (``python train.py ...``) turns an expected error (configuration, data, a model
  that cannot be loaded, a run already being trained, a full disk) into one line on stderr and a
  non-zero exit; other exceptions keep their traceback.
* In a multirun (``-m``) no job stops the sweep: every job writes ``job_status.json`` into its
  Hydra job folder under the sweep folder (``status`` completed | skipped | diverged | failed, or
  requeued while a SLURM job waits to resume from its checkpoint,
  ``overrides``, and for a failure the error's type and message; the run folder itself gets
  ``failure.json`` when it exists, see run_folder.py), and :class:`SweepSummary`, a Hydra callback
  configured in conf/config.yaml, prints one summary line at the end and exits with status 1 when
  a job failed.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from hydra.types import RunMode

from adarank import results
from adarank.checks import ConfigError
from adarank.data.glue import GlueDataError
from adarank.data.squad import SquadDataError
from adarank.models import ModelUnavailableError
from adarank.run_folder import DiskFull, RunBusy, Skipped
from adarank.training.checkpoint import Requeued

log = logging.getLogger("adarank")

STATUS_FILE = "job_status.json"
# errors whose message says everything: no traceback
EXPECTED = {ConfigError: "configuration error", GlueDataError: "data error", SquadDataError: "data error",
            ModelUnavailableError: "model unavailable", RunBusy: "run in use", DiskFull: "disk full"}


def one_line(err: BaseException) -> str:
    kind = next((label for cls, label in EXPECTED.items() if isinstance(err, cls)), type(err).__name__)
    return f"{kind}: {' '.join(str(err).split())}"


def run_job(run, cfg, hydra_cfg):
    """``run(cfg, overrides)`` as one Hydra job; returns the best primary score (None if none)."""
    overrides = list(hydra_cfg.overrides.task)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        try:
            metrics = run(cfg, overrides=overrides)
        except tuple(EXPECTED) as err:
            raise SystemExit(one_line(err)) from None
        return _score(metrics)
    record_path = Path(hydra_cfg.runtime.output_dir) / STATUS_FILE
    try:
        metrics = run(cfg, overrides=overrides)
    except Requeued as stop:  # SLURM requeued the job: the requeued one resumes and records its end
        write_status(record_path, "requeued", overrides, step=stop.step)
        raise
    except Exception as err:  # noqa: BLE001 - recorded, and the sweep goes on
        if isinstance(err, tuple(EXPECTED)):
            log.error("job %s failed: %s", hydra_cfg.job.num, one_line(err))
        else:
            log.exception("job %s failed", hydra_cfg.job.num)
        write_status(record_path, "failed", overrides, error=type(err).__name__, message=str(err))
        return None
    status = "skipped" if isinstance(metrics, Skipped) else metrics.get("status", "completed")
    write_status(record_path, status, overrides)
    return _score(metrics)


def _score(metrics: dict):
    return (metrics.get("best") or {}).get(metrics.get("primary_metric"))


def write_status(path: Path, status: str, overrides: list[str], **extra) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    results.write_json_atomic(path, {"status": status, "overrides": overrides, **extra, "time": time.time()})


def summarize(sweep_dir: Path, since: float = 0.0) -> tuple[str, bool]:
    """The summary line of the job records under ``sweep_dir`` written after ``since``, and
    whether any job failed."""
    counts = {"completed": 0, "skipped": 0, "diverged": 0, "failed": 0}
    failed = []
    for path in sorted(Path(sweep_dir).glob(f"**/{STATUS_FILE}")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("time", 0) < since:
            continue
        status = record.get("status", "failed")
        counts[status] = counts.get(status, 0) + 1
        if status == "failed":
            failed.append(f"[{' '.join(record.get('overrides') or [])}] {record.get('error')}: {record.get('message')}")
    total = sum(counts.values())
    line = f"sweep finished: {total} jobs: " + ", ".join(f"{n} {status}" for status, n in counts.items())
    if failed:
        line += "; failed: " + "; ".join(" ".join(f.split()) for f in failed)
    return f"{line} (job records: {sweep_dir}/*/{STATUS_FILE})", bool(failed)


class SweepSummary(Callback):
    """Hydra callback: one summary line after a multirun, and exit status 1 if a job failed."""

    def __init__(self) -> None:
        self.start = 0.0

    def on_multirun_start(self, config, **kwargs) -> None:
        self.start = time.time() - 1.0

    def on_multirun_end(self, config, **kwargs) -> None:
        line, any_failed = summarize(Path(config.hydra.sweep.dir), self.start)
        print(line, flush=True)
        if any_failed:
            raise SystemExit(1)
