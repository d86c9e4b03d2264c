"""One run: validate, create the run folder, load data and model, train, write results.

``run(cfg)`` is a plain function (``train.py`` is a thin Hydra shim over it), so tests call it
in-process with a config composed by Hydra's compose API.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import torch
from omegaconf import OmegaConf

from adarank import checks, protocol, results, run_folder, schedule_scaling
from adarank.budget import TrainableBudget
from adarank.data import build_task_data, fingerprint
from adarank.gpu_locks import claim_gpu
from adarank.methods import method_class
from adarank.models import apply_positional_query_option, load_model, load_tokenizer
from adarank.tracking import make_tracker
from adarank.training import best_state, checkpoint
from adarank.training.loop import Diverged, TrainResult, pick_device, plan_total_steps, train

log = logging.getLogger("adarank")


def run(cfg, overrides: list[str] | None = None) -> dict:
    """Run one experiment; return the metrics.json content (or the existing one when skipped).

    ``overrides`` are the command-line overrides, used only to give the run folder a readable
    name (the folder always carries a hash of the resolved config as well).
    """
    wall_start = time.perf_counter()
    threshold = checks.check_static(cfg)
    protocol.check(cfg, threshold)
    lr_choice = protocol.apply_lr(cfg, threshold)  # fair: the LR enters the config (and the hash)
    folder = results.run_dir(cfg, threshold, overrides or [])
    done = results.find_complete(folder)
    if done is not None and not cfg.force:
        return _skip(cfg, done)
    # what the run asks of this machine and of the model, before any data is read
    checks.check_results_root(cfg.results.root)
    checks.check_device(cfg.train.device)
    checks.check_model(cfg)
    # locked while this process trains; force=true trains in a sibling that replaces the folder
    # only once complete (run_folder.py)
    with run_folder.claim(folder, bool(cfg.force)) as work:
        done = None if cfg.force else results.find_complete(folder)  # finished while we waited
        return _skip(cfg, done) if done is not None else _run_claimed(cfg, threshold, work, wall_start, lr_choice)


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


def _run_claimed(cfg, threshold, folder, wall_start, lr_choice=None) -> dict:
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    _seed_everything(int(cfg.seed))
    tokenizer = load_tokenizer(cfg.model, cfg.data.cache_dir)
    task_data = build_task_data(cfg.task, cfg.data, cfg.train, tokenizer, cfg.get("protocol"))
    task_data.info["fingerprint"] = fingerprint.of_run(cfg, task_data.info)
    epochs = cfg.train.epochs or cfg.task.epochs
    total_steps = plan_total_steps(len(task_data.train_dataset), cfg.task.batch_size, epochs, cfg.train.max_steps)
    schedule = _resolve_schedule(cfg, total_steps, task_data.info["full_train_size"])
    checks.check_schedule(cfg, threshold, total_steps, len(task_data.train_dataset))

    # an interrupted run of this config left a checkpoint: continue it (force=true starts afresh),
    # unless it was written for other data or under another config hash
    identity = {"config_hash": run_folder.config_id(folder), "data_fingerprint": task_data.info["fingerprint"]}
    resume = None if cfg.force else checkpoint.read(folder)
    if resume is not None:
        _check_resume(folder, resume, identity, cfg.data.dir)
    else:
        results.prepare_folder(folder)
    checkpointer = checkpoint.Checkpointer(folder, cfg.train.checkpoint_interval, resume, identity, wall_start)
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
            metrics["protocol"] = {"name": protocol.name(cfg), **({"lr": lr_choice} if lr_choice else {})}
            # the whole run's, over every process that trained it (a resumed run's earlier ones too)
            metrics["costs"]["wall_seconds"] = checkpointer.wall_seconds() - tracker_seconds
            metrics["costs"]["resumes"] = checkpointer.resumes
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
        log.info("%s: %sbest %s %.2f, final %.2f; wall %.1f s, final total rank %s, trainable params %s",
                 folder, "validation " if "test_at_best_val" in metrics else "", primary,
                 metrics["best"][primary], metrics["final"][primary], metrics["costs"]["wall_seconds"],
                 metrics["rank"].get("total_rank", "-"), metrics["costs"]["trainable_params_end"])
        if "test_at_best_val" in metrics:
            log.info("fair protocol: validation %s best %.2f at step %d; test (dev) %.2f there, %.2f at the last step",
                     primary, metrics["best"][primary], metrics["best"]["step"],
                     metrics["test_at_best_val"][primary], metrics["test_at_last"][primary])
    return metrics


def _check_resume(folder, resume: dict, identity: dict, data_dir: str | None) -> None:
    """Refuse to continue a checkpoint written for other data or under another config hash: the
    steps before it would have trained on something else than the steps after it."""
    where = f"{folder} holds a checkpoint (step {resume['loop']['step']} of {resume['total_steps']})"
    choices = "restore {what} to resume it, or rerun with force=true to start over"
    recorded_hash = resume.get("config_hash")
    if recorded_hash is not None and recorded_hash != identity["config_hash"]:
        raise checks.ConfigError(
            f"{where} written under config hash {recorded_hash}, but this config hashes to "
            f"{identity['config_hash']}; " + choices.format(what="the config it was written under")
        )
    recorded = resume.get("data_fingerprint")
    if recorded is None:
        log.warning("%s: the checkpoint predates data fingerprints; its data cannot be compared", folder)
        return
    changed = fingerprint.differences(recorded, identity["data_fingerprint"])
    if changed and data_dir and identity["data_fingerprint"].get("source") == "local":
        changed = [os.path.join(data_dir, name) for name in changed]
    if changed:
        raise checks.ConfigError(
            f"{where} trained on other data: {', '.join(changed)} changed since; "
            + choices.format(what="the data it was trained on")
        )


def _build(cfg, task_data, threshold, device):
    """The model and method of a run as at step 0; also the ids of the backbone's own parameters."""
    _seed_everything(int(cfg.seed))  # the head's initialisation depends on the seed
    model = load_model(cfg.model, task_data.head, task_data.num_labels, float(cfg.task.cls_dropout), cfg.data.cache_dir)
    base_ids = {id(p) for p in model.parameters()}
    threshold_cfg = OmegaConf.create({**OmegaConf.to_container(cfg.threshold), "name": threshold or "none"})
    method = method_class(cfg.method.name)(cfg.method, cfg.task, threshold_cfg, cfg.model)
    model = method.prepare(model)
    # DeBERTa's positional query: through the adapter or the frozen weight only (docs/baselines.md P1)
    apply_positional_query_option(model, cfg.model, cfg.task.kind)
    model.to(device)
    return model, method, base_ids


def _train_and_record(cfg, folder, task_data, threshold, total_steps, tracker, device, checkpointer) -> dict:
    """Build model and method, train, write the per-run files; return the metrics.json content."""
    model, method, base_ids = _build(cfg, task_data, threshold, device)
    budget = TrainableBudget(base_ids, cfg.model.head_modules)
    fair = protocol.is_fair(cfg)
    # fair: every evaluation of the loop (periodic, final, the choice of "best") is on the
    # validation split; the loop never holds the dev evaluator (test_evaluations below)
    loop_data = dataclasses.replace(task_data, evaluate=task_data.validation) if fair else task_data
    log.info(
        "%s / %s on %s: %d optimizer steps, results in %s",
        cfg.task.name, results.method_label(cfg.method.name, threshold), cfg.model.name, total_steps, folder,
    )
    # resuming: the loop truncates the log to the checkpoint's offset and appends
    diverged = None
    with open(folder / "train_log.jsonl", "a" if checkpointer.resume else "w") as train_log:
        try:
            outcome = train(model, method, loop_data, cfg, total_steps, train_log, tracker, device, checkpointer,
                            budget=budget, keep_best=fair)
        except Diverged as err:  # a result too: not retried by a resumed sweep (force=true retries)
            log.warning("%s: %s; recorded as status diverged", folder, err)
            diverged = {"step": err.step, "loss": str(err.loss), "last_finite_loss": err.last_finite_loss}
            if err.detected_at is not None:  # the loss is read at check steps: the steps in between ran
                diverged["detected_at_step"] = err.detected_at
            outcome = TrainResult(costs={"optimizer_steps": err.detected_at or err.step})
    tests = test_evaluations(cfg, task_data, threshold, device, model, outcome) if fair and not diverged else {}
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
        **tests,
        **extra_evaluations,
        "evaluations": outcome.evaluations,
        "costs": {"wall_seconds": None, **outcome.costs},
        "rank": method.summary(model),
        "data": task_data.info,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "provenance": results.provenance(device),
    }


def test_evaluations(cfg, task_data, threshold, device, model, outcome) -> dict:
    """The fair protocol's only dev ("test") evaluations, after training: the last step's model,
    and the model of the best validation evaluation, rebuilt from its saved trainable state (the
    same model when the best evaluation is the final one)."""
    last = {**task_data.evaluate(model, device, final=True), "step": outcome.final["step"]}
    if outcome.best["step"] == outcome.final["step"]:
        return {"test_at_best_val": dict(last), "test_at_last": last}
    if outcome.best_state is None:
        raise RuntimeError(f"the best validation evaluation is at step {outcome.best['step']} but its state was not kept")
    rng = checkpoint.capture_rng()  # building draws random numbers; what runs after must not notice
    chosen, method, _ = _build(cfg, task_data, threshold, device)
    best_state.restore(chosen, method, outcome.best_state)
    at_best = {**task_data.evaluate(chosen, device, final=True), "step": outcome.best["step"]}
    del chosen, method
    checkpoint.restore_rng(rng)
    return {"test_at_best_val": at_best, "test_at_last": last}


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
