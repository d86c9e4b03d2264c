"""Run folders under results/raw, atomic result files, skip-if-done and provenance."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
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
    "train.deterministic",
    "results.keep_checkpoint",
    # the fair protocol's LR table: the LR it gives is written into task.lr / method.lr (protocol.py)
    "protocol.lr_table",
)
# config keys added after runs were recorded, with the value that reproduces the earlier
# computation: a run at that value keeps the hash it had before the key existed (a key at any
# other value enters the hash as usual). Add every new semantic key here with its neutral value
# (a whole new config group is one key whose neutral value is the group's dict).
HASH_NEUTRAL_DEFAULTS: dict[str, object] = {
    # every run recorded so far trained on a CPU, where TF32 does not exist (issue 23)
    "train.tf32": True,
    "train.pad_to_multiple_of": None,
    "protocol": {"name": "paper"},  # conf/protocol/paper.yaml: the protocol every earlier run used
    # SQuAD's T_paper from the official training set's size: the same computation as before for
    # every run on the official set (only a scaled run on a part of it changes; issue 28)
    "task.paper_train_examples": 130319,
}
# overrides that already name the folder (task/method label/seed) or are not semantic
IDENTITY_OVERRIDES = ("task", "method", "threshold", "seed") + NON_SEMANTIC_KEYS
PACKAGES = ("torch", "transformers", "peft", "datasets", "hydra-core", "adarank")


def method_label(method: str, threshold: str | None) -> str:
    return f"{method}-{threshold}" if threshold else method


def arm_name(method: str, threshold: str | None) -> str:
    """The sweep-arm name of a run (conf/sweep/arm/): growing methods carry their threshold."""
    if method == "increlora":
        return "increlora"  # IncreLoRA only has the fixed-k rule
    if method == "triadapt":
        return f"triadapt_{threshold if threshold and threshold != 'none' else 'linear'}"
    return method


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
    The temporary name is unique per process and call, so two writers never share it. The file
    gets the mode any other file of the run gets (0666 less the umask; a temporary file alone
    would be 0600, unreadable to the other users of a shared results tree)."""
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", delete=False)
    try:
        os.chmod(handle.name, 0o666 & ~_umask())
        with handle:
            json.dump(obj, handle, indent=2, sort_keys=False, default=_jsonable)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_folder(out: Path, marker: str):
    """Yield a fresh hidden sibling of ``out`` to write into; once the block ends without error it
    replaces ``out`` (so ``out`` holds either the old or the new complete content, never half of
    it), otherwise it is removed and ``out`` stays as it was. An existing ``out`` is replaced only
    when empty or holding ``marker`` (a folder this same writer made), never another folder."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).exists())):
        raise FileExistsError(f"{out} exists and was not written by this command (no {marker} in it); "
                              "remove it or choose another output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it 0700
        yield staging
        old = out.with_name(f"{staging.name}.old")  # unique, like the staging folder
        if out.exists():
            os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only left when the block failed


def writes_folder_whole(marker: str):
    """Decorator for ``write(source, out, ...)`` that writes a whole folder: it writes into
    :func:`staged_folder` and returns its result with every path under the staging folder (in
    its list attributes, e.g. a report's ``files``, and every ``path`` of the records in them, e.g.
    its figures ``drawn``) moved to ``out``."""

    def decorate(write):
        @functools.wraps(write)
        def wrapper(source, out, *args, **kwargs):
            out = Path(out)
            with staged_folder(out, marker) as staging:
                result = write(source, staging, *args, **kwargs)
            def moved(path: Path) -> Path:
                return out / path.relative_to(staging) if path.is_relative_to(staging) else path

            for name, value in vars(result).items():
                if isinstance(value, list) and value and all(isinstance(v, Path) for v in value):
                    setattr(result, name, [moved(v) for v in value])
                elif isinstance(value, list) and value and all(dataclasses.is_dataclass(v) and isinstance(getattr(v, "path", None), Path) for v in value):
                    setattr(result, name, [dataclasses.replace(v, path=moved(v.path)) for v in value])  # e.g. figures drawn
            return result

        return wrapper

    return decorate


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it back at once
    os.umask(mask)
    return mask


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
FIELD_TYPES = {"task": str, "method": str, "model": str, "variant": str, "primary_metric": str, "best": dict,
               "final": dict, "costs": dict, "rank": dict, "config": dict}
OPTIONAL_FIELD_TYPES = {"schedule": dict, "by_rank": dict, "data": dict}
#: the numbers of ``rank`` the tables and figures read (methods add others of any type)
RANK_NUMBERS = ("total_rank", "adapted_modules", "init_total_rank", "target_total_rank")


def metrics_problems(metrics) -> list[str]:
    """Why a parsed metrics.json cannot be read as a run (empty list: it can): every field the
    tables read has its type (numbers are int/float, never bool; costs and rank numbers may be
    null). ``make tables`` skips such files; a finished run of this harness never has any."""
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
    problems += [f"{k} is {type(metrics[k]).__name__}, not {t.__name__}" for k, t in OPTIONAL_FIELD_TYPES.items()
                 if metrics.get(k) is not None and not isinstance(metrics[k], t)]
    if not _is_count(metrics["seed"]):
        problems.append(f"seed {metrics['seed']!r} is not an integer >= 0")
    if not _is_count(metrics["evaluations"]):
        problems.append(f"evaluations {metrics['evaluations']!r} is not an integer >= 0")
    if metrics["threshold"] is not None and not isinstance(metrics["threshold"], str):
        problems.append(f"threshold {metrics['threshold']!r} is not a name or null")
    if isinstance(metrics["config"], dict) and not metrics["config"]:
        problems.append("config is empty")
    for section in ("costs", "rank", "best", "final", "test_at_best_val", "test_at_last"):
        if isinstance(metrics.get(section), dict):
            read = RANK_NUMBERS if section == "rank" else metrics[section]
            values = {k: metrics[section].get(k) for k in read}
            # nested sections are read leaf by leaf: costs.trainable (budget.py: {start|peak|end:
            # {part: count}}) and a SQuAD evaluation's answerability diagnostics (data/squad.py)
            for key in [k for k, v in values.items() if isinstance(v, dict)]:
                values.update(_leaves(key, values.pop(key)))
            problems += [f"{section}.{k} is {v!r}, not a number" for k, v in values.items()
                         if v is not None and not _is_json_number(v)]
    if isinstance(metrics.get("by_rank"), dict):
        problems += [f"by_rank key {k!r} is not a rank" for k in metrics["by_rank"] if not str(k).isdigit()]
    if problems or metrics["status"] != "completed":
        return problems
    for which in ("best", "final"):
        value = metrics[which].get(metrics["primary_metric"])
        if not _is_json_number(value) or not math.isfinite(value):
            problems.append(f"{which}.{metrics['primary_metric']} is {value!r}, not a finite number")
    return problems


def _leaves(prefix: str, value) -> dict:
    """``{"a.b.c": leaf}`` of nested dicts (a leaf that is no dict is returned as it is)."""
    if not isinstance(value, dict):
        return {} if value is None else {prefix: value}
    out = {}
    for key, inner in value.items():
        out.update(_leaves(f"{prefix}.{key}", inner))
    return out


def _is_json_number(value) -> bool:
    """An int or float (not a bool), NaN and infinity included, as json reads them: that a
    completed run's primary score is finite is checked on its own (metrics_problems); config
    options use validation.is_finite_number instead."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
