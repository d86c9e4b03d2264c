"""The optimizer-step loop: AdamW, linear warm-up/decay, clipping, method hooks, periodic dev
evaluation, progress and cost accounting.

An ordinary step does not wait for the device (docs/performance.md "Host-device syncs per
step"): the batch is copied asynchronously, and the loss, its finiteness and the step times are
read back only at check steps (log, evaluation, checkpoint, stop, end; training/step_watch.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field

import torch

from adarank.budget import TrainableBudget
from adarank.models import count_trainable
from adarank.training import best_state, precision
from adarank.training.batches import TrainBatches
from adarank.training.checkpoint import Checkpointer, LoopState
from adarank.training.context import StepContext
from adarank.training.events import LiveEvents
from adarank.training.optim import GrowingLinearSchedule, build_optimizer
from adarank.training.step_watch import Diverged, LossWatch, StepTimer, peak_memory_mb, reset_peak_memory

__all__ = ["Diverged", "TrainResult", "pick_device", "plan_total_steps", "train", "peak_memory_mb"]
#: read the pending losses at least this often, whatever train.log_interval says
MAX_PENDING_LOSSES = 500

log = logging.getLogger("adarank")


def plan_total_steps(num_examples: int, batch_size: int, epochs: int, max_steps=None) -> int:
    """Optimizer steps of a run: ceil(examples / batch) x epochs, capped by ``max_steps``."""
    total = math.ceil(num_examples / batch_size) * int(epochs)
    if max_steps:
        total = min(total, int(max_steps))
    return total


def cuda_status() -> tuple[bool, str]:
    """(whether CUDA is usable, why not): torch's own warning when it has one (a driver too old
    for this build, no driver), else the CUDA_VISIBLE_DEVICES setting or "no GPU found"."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        return True, ""
    messages = [" ".join(str(w.message).split()) for w in caught]
    reason = next((m for m in messages if "cuda" in m.lower() or "driver" in m.lower()), None)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if reason is None and visible is not None and visible.strip() in ("", "-1"):
        reason = f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    return False, reason or "no CUDA device found (torch.cuda.is_available() is False)"


def pick_device(name: str) -> torch.device:
    """``train.device``: auto = CUDA when usable, else the CPU, with one warning line naming the
    reason when this torch was built for CUDA (a CUDA build on the CPU is never silent)."""
    if name == "cpu":
        return torch.device("cpu")
    available, reason = cuda_status()
    if name == "auto":
        if available:
            return torch.device("cuda")
        if torch.version.cuda is not None:
            log.warning("train.device=auto: training on the CPU although torch was built for CUDA %s: %s",
                        torch.version.cuda, reason)
        return torch.device("cpu")
    if name.startswith("cuda") and not available:
        raise RuntimeError(f"train.device={name} but no CUDA device is available: {reason}")
    return torch.device(name)


@dataclass
class TrainResult:
    best: dict = field(default_factory=dict)
    final: dict = field(default_factory=dict)
    evaluations: int = 0
    costs: dict = field(default_factory=dict)
    best_state: dict | None = None  # keep_best: the trainable state at the best evaluation (best_state.py)


class Progress:
    """A tqdm bar on a terminal; periodic log lines otherwise (SLURM logs, CI)."""

    def __init__(self, mode: str, total: int, log_interval: int):
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.quiet = mode == "off"
        self.log_interval = max(1, log_interval)
        self.total = total
        self.bar = None
        if use_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="train", unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float | None, lr: float) -> None:
        """One step done; ``loss`` is known at check steps only (None otherwise)."""
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        elif not self.quiet and loss is not None and (step % self.log_interval == 0 or step == self.total):
            log.info("step %d/%d loss %.4f lr %.3e", step, self.total, loss, lr)

    def note(self, message: str) -> None:
        """An event line (evaluation, growth) through ``logging``, so Hydra's train.log keeps it;
        with a bar on the terminal, console handlers print above the bar."""
        if self.bar is not None:
            from tqdm.contrib.logging import logging_redirect_tqdm

            with logging_redirect_tqdm():
                log.info(message)
        elif not self.quiet:
            log.info(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def optimization_step(method, model, optimizer, scheduler, loss, step: int, total_steps: int, max_grad_norm: float) -> None:
    """Everything after the forward pass of optimizer step ``step``, in the order of the reference
    codes (methods/base.py): backward, clipping, growth hook, AdamW and LR steps, masking hook."""
    loss.backward()
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    ctx = StepContext(step, total_steps, model, optimizer, scheduler)
    method.before_optimizer_step(ctx)
    optimizer.step()
    scheduler.step()
    method.after_optimizer_step(ctx)
    optimizer.zero_grad(set_to_none=True)


def train(model, method, task_data, cfg, total_steps: int, train_log, tracker, device, checkpointer=None,
          budget=None, keep_best: bool = False) -> TrainResult:
    """Train ``model`` for ``total_steps`` optimizer steps; return best/final metrics and costs.

    ``task_data.evaluate`` gives the periodic and final evaluations (the dev set under the paper
    protocol, the validation split under the fair one, see run.py). ``train_log`` is an open text
    file receiving one JSON line per log or evaluation event. ``checkpointer``
    (training/checkpoint.py): writes checkpoints, resumes from one, and turns SIGINT into
    :class:`Interrupted` after a checkpoint of the last finished step. ``budget`` counts trainable
    parameters (budget.py); ``keep_best`` keeps the trainable state of the best evaluation
    (``TrainResult.best_state``, in checkpoints too). The run's numeric flags (TF32, deterministic
    kernels; training/precision.py) hold while it trains.
    """
    tcfg = cfg.train
    with precision.numeric_flags(device, bool(tcfg.get("tf32", True)), bool(tcfg.get("deterministic", False))):
        return _train(model, method, task_data, cfg, total_steps, train_log, tracker, device, checkpointer,
                      budget, keep_best)


def _train(model, method, task_data, cfg, total_steps: int, train_log, tracker, device, checkpointer=None,
           budget=None, keep_best: bool = False) -> TrainResult:
    checkpointer = checkpointer or Checkpointer(".", 0)
    budget = budget or TrainableBudget()
    task, tcfg = cfg.task, cfg.train
    primary = task.primary_metric
    eval_interval = int(tcfg.eval_interval or task.eval_interval)
    log_interval = int(tcfg.log_interval)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # the run's own device: its RNG is the one a checkpoint saves
    reset_peak_memory(device)  # this run's peak, not a reused worker's earlier job's
    generator = torch.Generator().manual_seed(int(cfg.seed))
    batches = TrainBatches(
        method.training_data(task_data.train_dataset, task_data.collate, int(cfg.seed)),
        int(task.batch_size), generator, task_data.collate, device, tcfg.get("num_workers", "auto"),
    )
    method.set_total_steps(total_steps)
    optimizer = build_optimizer(
        method.optimizer_groups(model, float(task.weight_decay)), method.learning_rate(), str(tcfg.optimizer)
    )
    warmup = method.lr_warmup_steps(total_steps)
    scheduler = GrowingLinearSchedule(optimizer, task.warmup_steps if warmup is None else warmup, total_steps)
    autocast = precision.autocast(device, str(tcfg.precision))
    result = TrainResult()
    trainable_start = count_trainable(model)
    budget.observe(model)  # before a resume's regrowth: the structure at step 0
    step_seconds: list[float] = []
    resumed = checkpointer.restore(model, method, optimizer, scheduler)
    step, skip, seconds_before, tokens = 0, 0, 0.0, 0
    if resumed is not None:
        step, skip, seconds_before = resumed.step, resumed.batches_in_epoch, resumed.train_seconds
        generator.set_state(resumed.epoch_generator_state)
        result.best, result.evaluations = resumed.best, resumed.evaluations
        result.best_state, tokens = resumed.best_state, resumed.tokens
        budget.keep_peak(resumed.trainable_peak)
        step_seconds, trainable_start = list(resumed.step_seconds), resumed.trainable_start
        train_log.truncate(resumed.train_log_offset)
        train_log.seek(resumed.train_log_offset)
        log.info("resuming from step %d of %d", step, total_steps)
    progress = Progress(tcfg.progress, total_steps, log_interval)
    if progress.bar is not None and step:
        progress.bar.update(step)  # a resumed run's bar starts where the checkpoint was

    def write(record: dict) -> None:
        train_log.write(json.dumps(record) + "\n")
        train_log.flush()

    def run_evaluation(step: int, final: bool) -> dict:
        metrics = task_data.evaluate(model, device, final=final)
        result.evaluations += 1
        write({"step": step, "eval": metrics, "final": final})
        tracker.log({f"eval/{k}": v for k, v in metrics.items()}, step)
        # a periodic evaluation on a capped dev sample (SQuAD's periodic_eval_max_examples) only
        # shows progress: "best" is chosen among evaluations over the whole dev set
        whole_dev = metrics.get("eval_examples", 0) >= metrics.get("dev_examples", 0)
        if whole_dev and (not result.best or metrics[primary] > result.best[primary]):
            result.best = {**metrics, "step": step}
            if keep_best:
                result.best_state = best_state.snapshot(model, method)
        budget.observe(model)
        best = f" (best {result.best[primary]:.2f})" if result.best else ""
        progress.note(f"eval at step {step}: {primary} {metrics[primary]:.2f}{best}")
        return metrics

    events = LiveEvents(method, tracker, progress.note, write)

    timer, losses = StepTimer(device), LossWatch()

    def settle() -> dict[int, float]:
        """Read the pending losses (raising Diverged at a non-finite one) and step times."""
        values = losses.check()
        step_seconds.extend(timer.read())
        return values

    start = time.perf_counter()
    model.train()
    with checkpointer:
        while step < total_steps:
            epoch_state = generator.get_state()
            drawn = 0
            for batch in batches.epoch():
                if step >= total_steps:
                    break
                drawn += 1
                if drawn <= skip:  # drawn before the checkpoint this run resumed from
                    continue
                # tokens of the batch, counted on the host copy (no device read-back)
                tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
                timer.start()
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                with autocast:
                    loss = model(**batch).loss
                    extra = method.extra_loss(model)
                    total_loss = loss if extra is None else loss + extra
                lr = optimizer.param_groups[0]["lr"]  # the LR this step uses (scheduler.step() moves it on)
                optimization_step(method, model, optimizer, scheduler, total_loss, step, total_steps, float(tcfg.max_grad_norm))
                step += 1
                timer.stop()
                losses.add(step, loss)
                events.poll()

                log_step = step % log_interval == 0 or step == 1
                eval_step = step % eval_interval == 0 and step < total_steps
                check = log_step or eval_step or step == total_steps or len(losses) >= MAX_PENDING_LOSSES
                known = settle() if check else {}
                progress.update(step, known.get(step), lr)
                if log_step:
                    record = {"step": step, "loss": known[step], "lr": lr}
                    if extra is not None:
                        record["extra_loss"] = float(extra.detach())
                    write(record)
                    tracker.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step)
                if eval_step:
                    run_evaluation(step, final=False)
                checkpointer.end_of_step(step)
                if checkpointer.due(step, total_steps) or checkpointer.stopping:
                    settle()  # no checkpoint of a diverged state; the step times it stores
                    checkpointer.save(model, method, optimizer, scheduler, LoopState(
                        step, epoch_state, drawn, result.best, result.evaluations, train_log.tell(),
                        step_seconds, seconds_before + time.perf_counter() - start, trainable_start,
                        best_state=result.best_state, tokens=tokens, trainable_peak=budget.peak,
                    ))
                if checkpointer.stopping:  # SIGINT or a SLURM timeout/preemption signal
                    progress.close()
                    checkpointer.stop(step)
            skip = 0
    settle()
    train_seconds = seconds_before + time.perf_counter() - start
    progress.close()
    result.final = {**run_evaluation(step, final=True), "step": step}
    result.costs = {
        "train_seconds": train_seconds,
        "optimizer_steps": step,
        "median_step_seconds": statistics.median(step_seconds) if step_seconds else 0.0,
        "allocation_seconds": float(method.allocation_seconds),
        "peak_memory_mb": peak_memory_mb(device),
        "trainable_params_start": trainable_start,
        "trainable_params_end": count_trainable(model),
        "trainable": budget.summary(model),
        "tokens_processed": tokens,  # non-padding tokens of the training batches
    }
    return result
