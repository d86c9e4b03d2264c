"""What the loop reads back from the device, and when: step times, the loss and its finiteness,
the peak memory. An ordinary optimizer step reads nothing (docs/performance.md "Host-device
syncs per step"): a GPU then never waits for the host between steps.

* :class:`StepTimer`: on CUDA a pair of events per step, read at the next check (one wait for
  all of them); on a CPU ``time.perf_counter`` (no device to wait for).
* :class:`LossWatch`: the loss of every step stays on the device until the next check (log,
  evaluation or checkpoint step, a stop, the end), where all of them come back in one copy and
  are checked for NaN / inf. A divergence is thus seen at most ``train.log_interval`` steps late,
  and :class:`Diverged` records both the first non-finite step and the step it was seen at.
* :func:`reset_peak_memory` / :func:`peak_memory_mb`: the peak of *this run*, whatever the
  process ran before (a reused joblib worker, ``make mini``).
"""

from __future__ import annotations

import logging
import math
import time

import torch

log = logging.getLogger("adarank")


class Diverged(FloatingPointError):
    """The training loss became NaN or infinite: the run ends as ``status: diverged``.

    ``step``: the first optimizer step (1-based) whose loss was not finite; ``detected_at``: the
    step at which the loop read it (the losses are read at check steps only, see LossWatch);
    None when unknown."""

    def __init__(self, step: int, loss: float, last_finite_loss: float | None, detected_at: int | None = None):
        seen = "" if detected_at in (None, step) else f", seen at step {detected_at}"
        super().__init__(f"loss became {loss} at step {step}{seen} (last finite loss {last_finite_loss})")
        self.step, self.loss, self.last_finite_loss, self.detected_at = step, loss, last_finite_loss, detected_at


class StepTimer:
    """Seconds per optimizer step, without waiting for the device at every step."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._start = None
        self._pending: list[tuple] = []  # CUDA: (start event, end event) of steps not read yet
        self._done: list[float] = []  # CPU: seconds not read yet

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((self._start, end))
        else:
            self._done.append(time.perf_counter() - self._start)

    def read(self) -> list[float]:
        """Seconds of the steps stopped since the last read, in order (CUDA: one wait)."""
        if self._pending:
            self._pending[-1][1].synchronize()
            self._done += [start.elapsed_time(end) / 1000.0 for start, end in self._pending]
            self._pending.clear()
        done, self._done = self._done, []
        return done


class LossWatch:
    """The losses of the steps since the last check, on the device (see the module docstring)."""

    def __init__(self):
        self._pending: list[tuple[int, torch.Tensor]] = []
        self.last_finite: float | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, step: int, loss: torch.Tensor) -> None:
        self._pending.append((step, loss.detach().float()))

    def check(self) -> dict[int, float]:
        """{step: loss} of the pending steps, read in one device-to-host copy; raises
        :class:`Diverged` at the first non-finite one."""
        if not self._pending:
            return {}
        steps = [step for step, _ in self._pending]
        values = torch.stack([loss for _, loss in self._pending]).tolist()
        self._pending.clear()
        out = {}
        for step, value in zip(steps, values):
            if not math.isfinite(value):
                raise Diverged(step, value, self.last_finite, detected_at=steps[-1])
            self.last_finite = out[step] = value
        return out


def reset_peak_memory(device: torch.device) -> bool:
    """Start this run's peak memory from now: CUDA's allocator statistics, or on Linux the
    process's resident high-water mark (VmHWM, reset by writing 5 to /proc/self/clear_refs).
    Returns False when the CPU peak could not be reset (it is then the process's peak so far)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError as err:
        log.warning("could not reset the peak memory (%s): peak_memory_mb is the process's peak so far", err)
        return False


def peak_memory_mb(device: torch.device) -> float:
    """This run's peak: ``max_memory_allocated`` on CUDA; VmHWM on CPU, the process's own resident
    high-water mark since :func:`reset_peak_memory` (``ru_maxrss`` would include a forking parent's)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
