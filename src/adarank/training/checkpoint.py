"""Checkpoints inside a run folder: write one every ``train.checkpoint_interval`` optimizer steps,
resume from it bit-identically, stop cleanly on SIGINT.

A checkpoint (``checkpoint.pt``, one file, replaced atomically) holds everything the loop needs to
continue the same computation:

* ``model``: the method's checkpoint tensors (trainable parameters, buffers, and whatever else the
  method changes, e.g. IncreLoRA's frozen reserve E), by name;
* ``method``: ``Method.state_dict()`` (growth log, allocation seconds, allocator state such as
  score EMAs, Frobenius-norm references, budget left, AdaLoRA's masks). Growing methods rebuild
  their grown structures from it (``Method.restore_structure``) *before* the tensors and the
  optimizer state are loaded, adding the growth groups to the scheduler in the original order;
* ``optimizer`` / ``scheduler``: AdamW's state of every group (growth-added ones included) and the
  LR schedule (steps done, each group's peak LR, policy and start step);
* ``rng``: python, numpy, torch and (on CUDA) the run's own device's generator states at the
  checkpoint (restored onto the current device, whatever its index and however many are visible);
* ``loop``: the step, the data loader generator's state at the start of the current epoch and the
  number of batches already drawn in it, best evaluation, evaluation count, the train-log offset
  (the log is truncated to it on resume), step timings and train seconds so far, tokens and the
  trainable-parameter peak so far, and under the fair protocol the trainable state of the best
  evaluation (training/best_state.py);
* ``config_hash`` and ``data_fingerprint``: what the run is (run.py refuses to resume a checkpoint
  whose data or config differ from the rerun's);
* ``wall_seconds`` and ``resumes``: the run's wall time up to this checkpoint, summed over the
  processes that trained it, and how many times it was resumed, so that metrics.json's
  ``costs.wall_seconds`` is the whole run's and not only the last process's (the work a killed
  process did after its last checkpoint is redone and counted once).

Resumption replays in the same order as the uninterrupted run: model built and seeded, method
prepared, optimizer and scheduler built, structures regrown, state loaded, RNG restored last
(regrowth draws random numbers that the loaded values then overwrite).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("adarank")

FILE = "checkpoint.pt"
FORMAT_VERSION = 1
#: test-only: "STEP:SIGNAL[,STEP:SIGNAL]" makes the process send itself SIGNAL (KILL, INT, USR2,
#: ...) at the end of optimizer step STEP (after its logging and evaluation, before the loop
#: decides whether to write a checkpoint of it) (tests/test_checkpoint.py)
TEST_SIGNAL_ENV = "ADARANK_TEST_SIGNAL_AFTER_CHECKPOINT"
#: test-only: seconds to sleep at the end of every optimizer step, so that a tiny run lasts long
#: enough for a real scheduler's signal to reach it mid-training (tests/cluster/)
TEST_STEP_SECONDS_ENV = "ADARANK_TEST_STEP_SECONDS"
#: submitit's variable naming its timeout/preemption signal (USR2 when unset)
PREEMPT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"


class Interrupted(KeyboardInterrupt):
    """SIGINT stopped training between two optimizer steps (a checkpoint of that step exists)."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at step {step}; rerun the same command to resume")
        self.step = step


class Requeued(SystemExit):
    """SLURM's timeout/preemption signal stopped training after a checkpoint of ``step``, and
    submitit requeued the job (which resumes from it); exits with submitit's code."""

    def __init__(self, step: int, code):
        super().__init__(code)
        self.step = step


@dataclass
class LoopState:
    """The training loop's own position and bookkeeping (see the module docstring)."""

    step: int = 0
    epoch_generator_state: torch.Tensor | None = None
    batches_in_epoch: int = 0
    best: dict = field(default_factory=dict)
    evaluations: int = 0
    train_log_offset: int = 0
    step_seconds: list = field(default_factory=list)
    train_seconds: float = 0.0
    trainable_start: int = 0
    best_state: dict | None = None  # the fair protocol's best trainable state (training/best_state.py)
    tokens: int = 0  # training tokens processed so far
    trainable_peak: dict | None = None  # budget.py's peak count so far

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# -- RNG -----------------------------------------------------------------------------------
def capture_rng() -> dict:
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": [version, list(state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # the run's own device only (the loop makes it the current one): a checkpoint must resume
        # where another number of GPUs is visible, or on another index
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def restore_rng(state: dict) -> None:
    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        cuda = state["cuda"]
        if not torch.cuda.is_available():
            log.warning("the checkpoint holds a CUDA RNG state but this run has no CUDA device: dropout "
                        "continues from the CPU generator only")
            return
        if isinstance(cuda, (list, tuple)):  # older checkpoints: one state per visible device
            own = torch.cuda.current_device()
            if len(cuda) > 1:
                log.info("the checkpoint holds the CUDA RNG of %d devices; using device %d's", len(cuda),
                         own if own < len(cuda) else 0)
            cuda = cuda[own] if own < len(cuda) else cuda[0]
        torch.cuda.set_rng_state(cuda)  # the current device: this run's


# -- files ---------------------------------------------------------------------------------
def path_in(folder: Path) -> Path:
    return Path(folder) / FILE


def write_atomic(path: Path, payload: dict) -> None:
    """torch.save to a unique temporary name in the same folder, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read(folder: Path) -> dict | None:
    """The checkpoint in ``folder`` (loaded on the CPU), or None when there is none."""
    path = path_in(folder)
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT_VERSION:
        raise RuntimeError(f"{path} has checkpoint format {payload.get('format')}, expected {FORMAT_VERSION}")
    return payload


def remove(folder: Path) -> None:
    path_in(folder).unlink(missing_ok=True)
    remove_partial(folder)


def remove_partial(folder: Path) -> None:
    """Delete temporary files of saves that a killed process left half-written."""
    for stale in Path(folder).glob(f".{FILE}.*.tmp"):
        stale.unlink(missing_ok=True)


def sleep_for_tests() -> None:
    """The test hook of :data:`TEST_STEP_SECONDS_ENV` (a no-op unless the variable is set)."""
    seconds = os.environ.get(TEST_STEP_SECONDS_ENV)
    if seconds:
        time.sleep(float(seconds))


def send_test_signal(step: int) -> None:
    """The test hook of :data:`TEST_SIGNAL_ENV` (a no-op unless the variable is set)."""
    spec = os.environ.get(TEST_SIGNAL_ENV)
    if not spec:
        return
    for item in spec.split(","):
        at, _, name = item.partition(":")
        if int(at) == step:
            os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


# -- model tensors -------------------------------------------------------------------------
def load_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved tensors into the model's parameters and buffers of the same names."""
    own = dict(model.named_parameters())
    own.update(model.named_buffers())
    missing = sorted(set(tensors) - set(own))
    if missing:
        raise RuntimeError(f"the checkpoint has tensors the rebuilt model lacks: {missing[:5]}")
    with torch.no_grad():
        for name, value in tensors.items():
            if own[name].shape != value.shape:
                raise RuntimeError(f"{name}: checkpoint shape {tuple(value.shape)} != model {tuple(own[name].shape)}")
            own[name].copy_(value)


#: ``train.checkpoint_interval=auto``: the first checkpoint after this many steps; then the
#: interval that keeps the measured save time under TARGET_SHARE of the measured step time
AUTO_FIRST = 100
TARGET_SHARE = 0.01


def auto_interval(save_seconds: float, step_seconds: list[float]) -> int:
    """Steps between checkpoints so that one save costs at most TARGET_SHARE of the training time
    in between (median of the last 100 step times), and never fewer than AUTO_FIRST."""
    import math
    import statistics

    recent = step_seconds[-100:]
    if not recent:
        return AUTO_FIRST
    step = max(statistics.median(recent), 1e-9)
    return max(AUTO_FIRST, math.ceil(save_seconds / (TARGET_SHARE * step)))


class Checkpointer:
    """The loop's handle on checkpoints of one run folder.

    ``interval``: optimizer steps between checkpoints, 0 = never, "auto" = :func:`auto_interval`
    after a first checkpoint at step AUTO_FIRST; ``resume``: the checkpoint read from the folder,
    or None for a fresh start; ``identity``: saved into every checkpoint (config hash, data
    fingerprint). Also turns the first SIGINT into a clean stop at the end of the
    current optimizer step (a second one interrupts at once), and defers submitit's
    timeout/preemption handler (requeue and exit) to the end of the step, after a checkpoint.
    """

    def __init__(self, folder: Path, interval: int, resume: dict | None = None, identity: dict | None = None,
                 wall_start: float | None = None):
        self.folder = Path(folder)
        # this process's start (time.perf_counter) and the wall time of the processes before it
        self.wall_start = time.perf_counter() if wall_start is None else wall_start
        # (a checkpoint older than this field: its train seconds, a lower bound of its wall time)
        self.wall_before = float(resume.get("wall_seconds", resume["loop"]["train_seconds"])) if resume else 0.0
        self.resumes = int(resume.get("resumes", 0)) + 1 if resume else 0
        self.identity = dict(identity or {})
        self.auto = str(interval).lower() == "auto"
        self.interval = AUTO_FIRST if self.auto else int(interval or 0)
        if self.interval < 0:
            raise ValueError(f"train.checkpoint_interval must be auto or >= 0, got {interval}")
        self.resume = resume
        if resume is not None:
            remove_partial(self.folder)
        self.next_at = self.interval + (resume["loop"]["step"] if resume else 0)
        self.interrupted = False
        self._previous_handler = None
        self._preempt_handler: tuple | None = None  # (signal, submitit's handler)
        self._preempted: tuple | None = None
        self.save_seconds: list[float] = []

    # -- what the loop calls -----------------------------------------------------------------
    def end_of_step(self, step: int) -> None:
        sleep_for_tests()
        send_test_signal(step)

    def due(self, step: int, total_steps: int) -> bool:
        return self.interval > 0 and step >= self.next_at and step < total_steps

    def save(self, model, method, optimizer, scheduler, loop: LoopState) -> None:
        start = time.perf_counter()
        payload = {
            "format": FORMAT_VERSION,
            "method_name": method.name,
            "total_steps": scheduler.total_steps,
            "model": {k: v.detach() for k, v in method.checkpoint_tensors(model).items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "method": method.state_dict(),
            "rng": capture_rng(),
            "loop": loop.to_dict(),
            **self.identity,
            "wall_seconds": self.wall_seconds(),
            "resumes": self.resumes,
        }
        write_atomic(path_in(self.folder), payload)
        self.save_seconds.append(time.perf_counter() - start)
        if self.auto:
            self.interval = auto_interval(self.save_seconds[-1], loop.step_seconds)
        self.next_at = loop.step + self.interval

    def wall_seconds(self) -> float:
        """The run's wall time so far: the processes before this one (up to their last checkpoint)
        plus this one."""
        return self.wall_before + time.perf_counter() - self.wall_start

    def restore(self, model, method, optimizer, scheduler) -> LoopState | None:
        """Bring a freshly built model/method/optimizer/scheduler to the checkpoint's state;
        return the loop state (None when starting fresh). RNG states are restored last."""
        payload = self.resume
        if payload is None:
            return None
        if payload["method_name"] != method.name or payload["total_steps"] != scheduler.total_steps:
            raise RuntimeError(
                f"the checkpoint in {self.folder} is of method {payload['method_name']} with "
                f"{payload['total_steps']} steps, this run is {method.name} with {scheduler.total_steps}"
            )
        method.restore_structure(model, scheduler, payload["method"])
        load_tensors(model, payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        method.load_state_dict(payload["method"])
        restore_rng(payload["rng"])
        return LoopState(**payload["loop"])

    # -- SIGINT and preemption ------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        """A signal asked the loop to stop after the current optimizer step."""
        return self.interrupted or self._preempted is not None

    def stop(self, step: int) -> None:
        """Called by the loop after writing the checkpoint of ``step`` when :attr:`stopping`."""
        if self._preempted is not None:  # submitit's handler: requeue this job, then exit
            signum, handler = self._preempted
            self._preempted = None
            log.info("preempted at step %d: checkpoint written, requeueing", step)
            try:
                handler(signum, None)
            except SystemExit as exit_:  # submitit requeued the job and exits: not a failure
                raise Requeued(step, exit_.code) from None
        raise Interrupted(step)

    def __enter__(self) -> Checkpointer:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        # under submitit (hydra/launcher=slurm) the timeout/preemption signal requeues the job
        # and exits at once; defer it to the end of the optimizer step and write a checkpoint first
        preempt = getattr(signal, "SIG" + os.environ.get(PREEMPT_SIGNAL_ENV, "USR2"), None)
        handler = signal.getsignal(preempt) if preempt is not None else None
        if callable(handler):
            self._preempt_handler = (preempt, handler)
            signal.signal(preempt, self._on_preempt)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None
        if self._preempt_handler is not None:
            signal.signal(*self._preempt_handler)
            self._preempt_handler = None

    def _on_sigint(self, signum, frame) -> None:
        self.interrupted = True
        # a second Ctrl-C stops at once
        signal.signal(signal.SIGINT, self._previous_handler or signal.default_int_handler)

    def _on_preempt(self, signum, frame) -> None:
        self._preempted = self._preempt_handler
        signal.signal(*self._preempt_handler)  # a second signal acts at once
