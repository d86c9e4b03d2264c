"""The precision policy of a run (docs/performance.md "Precision policy"), set once where the loop
starts and applied alike to training and evaluation.

* ``train.precision``: ``fp32`` (the paper's and both official codes' setting) or ``bf16``
  (autocast: matmuls in bf16, weights, optimizer state and the reductions autocast keeps in fp32
  stay fp32). Evaluation runs under the same autocast as training (:class:`InPrecision`).
* ``train.tf32`` (CUDA only): let fp32 matmuls and convolutions use TF32 tensor cores (10-bit
  mantissa inputs, fp32 accumulation). On by default: the reference setting's speed trade-off on
  an A100/H100; ``train.tf32=false`` for an exact-fp32 reproduction. No effect on a CPU.
* ``train.deterministic``: deterministic kernels (``torch.use_deterministic_algorithms(True,
  warn_only=True)``, cuBLAS's fixed workspace ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, no cuDNN
  autotuning), so that a resumed CUDA run ends bit-identical to an uninterrupted one on the same
  GPU model and software; off by default (CUDA runs are then equal in distribution, not in bits).
  On a CPU, training with one thread is deterministic either way.

The flags are process-wide: a run sets all of them and puts the previous ones back when it ends
(:func:`numeric_flags`), so nothing leaks into the next job of a reused worker.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

log = logging.getLogger("adarank")

PRECISIONS = ("fp32", "bf16")
#: cuBLAS's documented deterministic workspace setting (CUDA docs, "Results reproducibility")
CUBLAS_DETERMINISTIC = ":4096:8"


def autocast(device: torch.device, precision: str):
    """The context every forward pass of the run runs in (training and evaluation)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def numeric_flags(device: torch.device, tf32: bool, deterministic: bool):
    """:func:`configure` for the duration of a run, then the process's previous flags again (so a
    deterministic run leaves nothing behind in a reused worker, a notebook or a test session)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    configure(device, tf32, deterministic)
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, enabled, warn_only,
         torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) = saved
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def configure(device: torch.device, tf32: bool, deterministic: bool) -> None:
    """Set the process-wide numeric flags of this run (see the module docstring)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
        torch.backends.cudnn.allow_tf32 = bool(tf32)
    if deterministic:
        if device.type == "cuda" and os.environ.get("CUBLAS_WORKSPACE_CONFIG") != CUBLAS_DETERMINISTIC:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC
            if torch.cuda.is_initialized():
                log.warning("train.deterministic: CUDA was initialised before CUBLAS_WORKSPACE_CONFIG was set; "
                            "cuBLAS may not be deterministic in this process (start a fresh one)")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


class InPrecision:
    """``evaluate(model, device, final)`` run under the training precision's autocast; other
    attributes are the wrapped evaluator's (SQuAD's ``last_predictions`` ...)."""

    def __init__(self, evaluate, precision: str):
        self.evaluate = evaluate
        self.precision = precision

    def __call__(self, model, device, *args, **kwargs):
        with autocast(torch.device(device), self.precision):
            return self.evaluate(model, device, *args, **kwargs)

    def __getattr__(self, name):
        evaluate = self.__dict__.get("evaluate")
        if evaluate is None:
            raise AttributeError(name)
        return getattr(evaluate, name)
