"""One run: validate, create the run folder, load data and model, train, write results.

``run(cfg)`` is a plain function (``train.py`` is a thin Hydra shim over it), so tests call it
in-process with a config composed by Hydra's compose API.
"""

from __future__ import annotations

import json
import logging
import time

import torch
from omegaconf import OmegaConf

from adarank import checks, results, run_folder, schedule_scaling
from adarank.data import build_task_data, fingerprint
from adarank.gpu_slots import claim_gpu
from adarank.methods import method_class
from adarank.models import apply_positional_query_option, load_model, load_tokenizer
from adarank.tracking import make_tracker
from adarank.training import checkpoint
from adarank.training.loop import Diverged, TrainResult, pick_device, plan_total_steps, train

log = logging.getLogger("adarank")


def run(cfg, overrides: list[str] | None = None) -> dict:
    """Run one experiment; return the metrics.json content (or the existing one when skipped).

    ``overrides`` are the command-line overrides, used only to give the run folder a readable
    name (the folder always carries a hash of the resolved config as well).
    """
    wall_start = time.perf_counter()
    threshold = checks.check_static(cfg)
    folder = results.run_dir(cfg, threshold, overrides or [])
    done = results.find_complete(folder)
    if done is not None and not cfg.force:
        return _skip(cfg, done)
    # locked while this process trains; force=true trains in a sibling that replaces the folder
    # only once complete (run_folder.py)
    with run_folder.claim(folder, bool(cfg.force)) as work:
        done = None if cfg.force else results.find_complete(folder)  # finished while we waited
        return _skip(cfg, done) if done is not None else _run_claimed(cfg, threshold, work, wall_start)


def _skip(cfg, done) -> dict:
    metrics = json.loads((done / results.METRICS_FILE).read_text())
    changed = fingerprint.changed_files((metrics.get("data") or {}).get("fingerprint"), cfg.task, cfg.data.dir)
    if changed:
        raise checks.ConfigError(
            f"{done} was trained on other data: {', '.join(changed)} changed since; force=true "
            "retrains it on the current data (the old result stays until the new one is complete)"
        )
    log.info("skipping %s: metrics.json exists with status %s (force=true reruns it)", done, metrics.get("status"))
    return run_folder.Skipped(metrics)


def _run_claimed(cfg, threshold, folder, wall_start) -> dict:
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    _seed_everything(int(cfg.seed))
    tokenizer = load_tokenizer(cfg.model, cfg.data.cache_dir)
    task_data = build_task_data(cfg.task, cfg.data, cfg.train, tokenizer)
    task_data.info["fingerprint"] = fingerprint.of_run(cfg, task_data.info)
    epochs = cfg.train.epochs or cfg.task.epochs
    total_steps = plan_total_steps(len(task_data.train_dataset), cfg.task.batch_size, epochs, cfg.train.max_steps)
    schedule = _resolve_schedule(cfg, total_steps, task_data.info["full_train_size"])
    checks.check_schedule(cfg, threshold, total_steps, len(task_data.train_dataset))

    # an interrupted run of this config left a checkpoint: continue it (force=true starts afresh)
    resume = None if cfg.force else checkpoint.read(folder)
    if resume is None:
        results.prepare_folder(folder)
    checkpointer = checkpoint.Checkpointer(folder, cfg.train.checkpoint_interval, resume)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    # one GPU per job on a multi-GPU box, held until the run ends (see gpu_slots.py)
    with claim_gpu(cfg.train.device) as device_name:
        tracker_start = time.perf_counter()
        tracker = make_tracker(cfg, folder)
        tracker_seconds = time.perf_counter() - tracker_start  # wandb's start-up is no run cost
        exit_code = 1
        try:
            metrics = _train_and_record(cfg, folder, task_data, threshold, total_steps, tracker, pick_device(device_name), checkpointer)
            metrics["schedule"] = schedule
            metrics["costs"]["wall_seconds"] = time.perf_counter() - wall_start - tracker_seconds
            tracker.log_summary(metrics)
            # metrics.json last: its presence marks the run complete
            results.write_json_atomic(folder / results.METRICS_FILE, metrics)
            if not cfg.results.keep_checkpoint:
                checkpoint.remove(folder)
            exit_code = 0
        finally:
            tracker.finish(exit_code)
    primary = cfg.task.primary_metric
    baseline = metrics["data"].get("trivial_baseline", {}).get(primary)
    if baseline is not None:
        log.info("trivial baseline (a constant prediction): %s %.2f", primary, baseline)
    if metrics["status"] == "completed":
        log.info("%s: best %s %.2f, final %.2f; wall %.1f s, final total rank %s, trainable params %s",
                 folder, primary, metrics["best"][primary], metrics["final"][primary], metrics["costs"]["wall_seconds"],
                 metrics["rank"].get("total_rank", "-"), metrics["costs"]["trainable_params_end"])
    return metrics


def _train_and_record(cfg, folder, task_data, threshold, total_steps, tracker, device, checkpointer) -> dict:
    """Build model and method, train, write the per-run files; return the metrics.json content."""
    _seed_everything(int(cfg.seed))  # the head's initialisation depends on the seed
    model = load_model(cfg.model, task_data.head, task_data.num_labels, float(cfg.task.cls_dropout), cfg.data.cache_dir)
    threshold_cfg = OmegaConf.create({**OmegaConf.to_container(cfg.threshold), "name": threshold or "none"})
    method = method_class(cfg.method.name)(cfg.method, cfg.task, threshold_cfg, cfg.model)
    model = method.prepare(model)
    # DeBERTa's positional query: through the adapter or the frozen weight only (docs/baselines.md P1)
    apply_positional_query_option(model, cfg.model, cfg.task.kind)
    model.to(device)
    log.info(
        "%s / %s on %s: %d optimizer steps, results in %s",
        cfg.task.name, results.method_label(cfg.method.name, threshold), cfg.model.name, total_steps, folder,
    )
    # resuming: the loop truncates the log to the checkpoint's offset and appends
    diverged = None
    with open(folder / "train_log.jsonl", "a" if checkpointer.resume else "w") as train_log:
        try:
            outcome = train(model, method, task_data, cfg, total_steps, train_log, tracker, device, checkpointer)
        except Diverged as err:  # a result too: not retried by a resumed sweep (force=true retries)
            log.warning("%s: %s; recorded as status diverged", folder, err)
            diverged = {"step": err.step, "loss": str(err.loss), "last_finite_loss": err.last_finite_loss}
            outcome = TrainResult(costs={"optimizer_steps": err.step})
    # e.g. DyLoRA's evaluation at every rank: methods add whole-dev evaluations after the final one
    extra_evaluations = {} if diverged else method.final_evaluations(model, lambda: task_data.evaluate(model, device, final=True))
    results.write_json_atomic(folder / "rank_pattern.json", method.rank_pattern(model) or {})
    results.write_jsonl(folder / "growth_log.jsonl", method.growth_log)  # the loop sent each event live
    if cfg.results.save_adapter:
        method.save_adapter(model, str(folder / "adapter"))
    return {
        "schema_version": results.SCHEMA_VERSION,
        "status": "diverged" if diverged else "completed",
        **({"diverged": diverged} if diverged else {}),
        "task": cfg.task.name,
        "method": cfg.method.name,
        "threshold": threshold,
        "seed": int(cfg.seed),
        "model": cfg.model.name,
        "variant": folder.name,
        "primary_metric": cfg.task.primary_metric,
        "best": outcome.best,
        "final": outcome.final,
        **extra_evaluations,
        "evaluations": outcome.evaluations,
        "costs": {"wall_seconds": None, **outcome.costs},
        "rank": method.summary(model),
        "data": task_data.info,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "provenance": results.provenance(device),
    }


def _resolve_schedule(cfg, total_steps: int, full_train_size: int) -> dict:
    """``train.schedule``: the task's values as given, or rescaled to this run (written into
    ``cfg.task`` so that config.yaml and metrics.json hold what the run used)."""
    if cfg.train.schedule != "scaled":
        return {"mode": "paper"}
    try:
        report = schedule_scaling.apply(cfg, total_steps, full_train_size)
    except schedule_scaling.ScheduleError as err:
        raise checks.ConfigError(f"method={cfg.method.name}: {err}") from err
    changed = ", ".join(f"{key} {v['paper']:g}->{v['scaled']:g}" for key, v in report["values"].items())
    log.info("scaled schedule (x%.4g of the %d-step run): %s", report["factor"], report["paper_steps"], changed)
    return report


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
