"""Run folders under results/raw, atomic result files, skip-if-done and provenance."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

from omegaconf import OmegaConf

SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"
# config keys that do not change what a run computes: left out of the run's identity hash
NON_SEMANTIC_KEYS = (
    "force",
    "logger",
    "results",
    "data.dir",
    "data.cache_dir",
    "model.local_path",
    "train.device",
    "train.progress",
    "train.num_workers",
    "train.num_threads",
    "train.log_interval",
    "train.eval_batch_size",
    "train.checkpoint_interval",
    "results.keep_checkpoint",
)
# config keys added after runs were recorded, with the value that reproduces the earlier
# computation: a run at that value keeps the hash it had before the key existed (a key at any
# other value enters the hash as usual). Add every new semantic key here with its neutral value
# (a whole new config group is one key whose neutral value is the group's dict).
HASH_NEUTRAL_DEFAULTS: dict[str, object] = {
    # SQuAD's T_paper from the official training set's size: the same computation as before for
    # every run on the official set (only a scaled run on a part of it changes; issue 28)
    "task.paper_train_examples": 130319,
}
# overrides that already name the folder (task/method label/seed) or are not semantic
IDENTITY_OVERRIDES = ("task", "method", "threshold", "seed") + NON_SEMANTIC_KEYS
PACKAGES = ("torch", "transformers", "peft", "datasets", "hydra-core", "adarank")


def method_label(method: str, threshold: str | None) -> str:
    return f"{method}-{threshold}" if threshold else method


def config_hash(cfg) -> str:
    """8 hex digits identifying everything in ``cfg`` that changes the computation."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    for key in NON_SEMANTIC_KEYS:
        _pop_dotted(container, key)
    for key, neutral in HASH_NEUTRAL_DEFAULTS.items():
        if _get_dotted(container, key, _MISSING) == neutral:
            _pop_dotted(container, key)
    text = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


_MISSING = object()


def _get_dotted(container: dict, key: str, default=None):
    node = container
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _pop_dotted(container: dict, key: str) -> None:
    """Remove ``a.b.c`` from nested dicts (its parents stay, even when left empty)."""
    *parents, last = key.split(".")
    node = container
    for part in parents:
        node = node.get(part)
        if not isinstance(node, dict):
            return
    node.pop(last, None)


def variant_slug(overrides: list[str]) -> str:
    """A readable name for the overrides that are not already part of the folder path."""
    kept = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key in IDENTITY_OVERRIDES or key.split(".")[0].split("/")[0] in ("hydra", "logger", "results", "sweep"):
            continue  # sweep/arm only picks method + threshold, already in the path
        kept.append(item.lstrip("+~"))
    if not kept:
        return "default"
    slug = re.sub(r"[^A-Za-z0-9_.=,-]+", "_", ",".join(sorted(kept)))
    return slug[:80]


def run_dir(cfg, threshold: str | None, overrides: list[str]) -> Path:
    label = method_label(cfg.method.name, threshold)
    variant = f"{variant_slug(overrides)}-{config_hash(cfg)}"
    return Path(cfg.results.root) / cfg.task.name / label / f"seed{cfg.seed}" / variant


def is_complete(folder: Path) -> bool:
    return (folder / METRICS_FILE).is_file()


def find_complete(folder: Path) -> Path | None:
    """A finished run with the same config hash as ``folder``, whatever its readable slug.

    The hash is the run's identity; the slug only reflects how the config was typed (a sweep
    that spells out a default value computes the same config as a plain run).
    """
    if is_complete(folder):
        return folder
    config_id = folder.name.rsplit("-", 1)[-1]
    matches = sorted(folder.parent.glob(f"*-{config_id}/{METRICS_FILE}")) if folder.parent.is_dir() else []
    return matches[0].parent if matches else None


def prepare_folder(folder: Path) -> None:
    """Create the run folder, clearing what an interrupted earlier attempt left there."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def write_json_atomic(path: Path, obj) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file.
    The temporary name is unique per process and call, so two writers never share it."""
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", delete=False)
    try:
        with handle:
            json.dump(obj, handle, indent=2, sort_keys=False, default=_jsonable)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, rows) -> None:
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, default=_jsonable) + "\n")


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def provenance(device) -> dict:
    root = Path(__file__).resolve().parents[2]
    return {
        "git_sha": _git(root, "rev-parse", "HEAD"),
        "git_dirty": bool(_git(root, "status", "--porcelain", "--untracked-files=no")),
        "packages": {name: _version(name) for name in PACKAGES},
        "device": _device_name(device),
        "python": platform.python_version(),
    }


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _device_name(device) -> str:
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


REQUIRED_METRICS_KEYS = (
    "schema_version", "status", "task", "method", "threshold", "seed", "model", "variant",
    "primary_metric", "best", "final", "evaluations", "costs", "rank", "config", "provenance",
)
REQUIRED_COSTS = (
    "wall_seconds", "train_seconds", "optimizer_steps", "median_step_seconds", "allocation_seconds",
    "peak_memory_mb", "trainable_params_start", "trainable_params_end",
)
RUN_FILES = ("metrics.json", "config.yaml", "train_log.jsonl", "rank_pattern.json", "growth_log.jsonl")


STATUSES = ("completed", "diverged")
FIELD_TYPES = {"task": str, "method": str, "model": str, "primary_metric": str, "best": dict, "final": dict,
               "costs": dict, "config": dict}


def metrics_problems(metrics) -> list[str]:
    """Why a parsed metrics.json cannot be read as a run (empty list: it can). ``make tables``
    skips such files; a finished run of this harness never has any."""
    import math

    if not isinstance(metrics, dict):
        return [f"not a JSON object but {type(metrics).__name__}"]
    problems = [f"lacks {k}" for k in REQUIRED_METRICS_KEYS if k not in metrics]
    if problems:
        return problems  # a foreign schema
    if metrics["status"] not in STATUSES:
        problems.append(f"status {metrics['status']!r} is none of {', '.join(STATUSES)}")
    problems += [f"{k} is {type(metrics[k]).__name__}, not {t.__name__}" for k, t in FIELD_TYPES.items()
                 if not isinstance(metrics[k], t)]
    if not isinstance(metrics["seed"], int) or isinstance(metrics["seed"], bool):
        problems.append(f"seed {metrics['seed']!r} is not an integer")
    if problems or metrics["status"] != "completed":
        return problems
    for which in ("best", "final"):
        value = metrics[which].get(metrics["primary_metric"])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{which}.{metrics['primary_metric']} is {value!r}, not a finite number")
    return problems


def validate_run_folder(folder: Path) -> list[str]:
    """Problems with a finished run folder (empty list = complete and schema-valid)."""
    problems = [f"missing {name}" for name in RUN_FILES if not (folder / name).is_file()]
    if problems:
        return problems
    metrics = json.loads((folder / METRICS_FILE).read_text())
    problems += [f"metrics.json lacks {k}" for k in REQUIRED_METRICS_KEYS if k not in metrics]
    if metrics.get("status") == "diverged":  # no evaluation: where and how the loss broke instead
        return problems + [f"diverged lacks {k}" for k in ("step", "last_finite_loss") if k not in metrics.get("diverged", {})]
    problems += [f"costs lack {k}" for k in REQUIRED_COSTS if k not in metrics.get("costs", {})]
    primary = metrics.get("primary_metric")
    for which in ("best", "final"):
        if primary not in metrics.get(which, {}) or "step" not in metrics.get(which, {}):
            problems.append(f"{which} lacks {primary} or step")
    for line in (folder / "growth_log.jsonl").read_text().splitlines():
        event = json.loads(line)
        problems += [f"growth event lacks {k}" for k in ("step", "k", "total_rank") if k not in event]
    return problems
