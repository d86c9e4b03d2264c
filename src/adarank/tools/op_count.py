"""Operators dispatched per training step: a CPU-measurable stand-in for GPU kernel launches.

A :class:`OpCounter` (a ``TorchDispatchMode``) sees every ATen operator that reaches a backend
kernel after autograd: the forward pass, the backward pass (autograd's nodes run their
operators through the same dispatcher), clipping, AdamW and ``zero_grad``. Composite operators
arrive decomposed (``F.linear`` as ``t`` + ``addmm`` ...), and a ``torch._foreach_*`` call counts
once, as it is one launch (or a few fused ones) on a GPU. Two numbers per phase:

* ``ops``: every dispatched operator;
* ``kernels``: the operators that are not views (``OpOverload.is_view``: ``view``, ``t``,
  ``split``, ``detach`` ... only make a new tensor header and launch nothing on a GPU).

Phases. The counter holds a stack of phase names; the innermost active one gets the count.
:func:`count_step` runs one optimizer step exactly as ``adarank.training.loop.train`` does
(forward + ``extra_loss`` under autocast's absence on CPU, then the loop's own
``optimization_step``) with ``forward``, ``regulariser`` and ``update`` (backward, clipping,
AdamW, LR step, ``zero_grad``) as phases, and :func:`instrument` wraps a method's cost centres
(the same ones its ``allocation_seconds`` times) so that their operators count apart:
``hooks`` (``before_optimizer_step`` / ``after_optimizer_step``: TriAdaptLoRA's and IncreLoRA's
growth, AdaLoRA's importance update and masking) and ``scoring`` (IncreLoRA's per-step
importance: its backward hooks and the EMA update).
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode

PHASES = ("forward", "regulariser", "update", "hooks", "scoring")


class OpCounter(TorchDispatchMode):
    """Counts dispatched ATen operators per phase (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = ["other"]
        self.ops: Counter[str] = Counter()
        self.kernels: Counter[str] = Counter()
        self.names: Counter[str] = Counter()  # "phase/op" -> count, for finding where ops come from

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        phase = self.stack[-1]
        self.ops[phase] += 1
        if not func.is_view:
            self.kernels[phase] += 1
            self.names[f"{phase}/{func.overloadpacket.__name__}"] += 1
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def phase(self, name: str):
        self.stack.append(name)
        try:
            yield
        finally:
            self.stack.pop()

    def reset(self) -> None:
        self.ops.clear()
        self.kernels.clear()
        self.names.clear()

    def snapshot(self) -> dict:
        """{phase: {"ops": n, "kernels": k}} plus the totals, for the phases seen."""
        out = {p: {"ops": self.ops[p], "kernels": self.kernels[p]} for p in self.ops}
        out["total"] = {"ops": sum(self.ops.values()), "kernels": sum(self.kernels.values())}
        return out


def _in_phase(counter: OpCounter, name: str, fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with counter.phase(name):
            return fn(*args, **kwargs)

    return wrapped


def instrument(method, counter: OpCounter) -> None:
    """Route the operators of ``method``'s hooks to the ``hooks`` phase and IncreLoRA's per-step
    scoring (its layers' backward score hooks and ``_update_scores``) to ``scoring``. Instance
    attributes only: the classes stay untouched."""
    for name in ("before_optimizer_step", "after_optimizer_step"):
        setattr(method, name, _in_phase(counter, "hooks", getattr(method, name)))
    if hasattr(method, "_update_scores"):
        method._update_scores = _in_phase(counter, "scoring", method._update_scores)
    for layer in (getattr(method, "layers", None) or {}).values():
        make = getattr(layer, "_make_score_hook", None)
        if make is not None:
            layer._make_score_hook = functools.wraps(make)(
                lambda *a, _make=make, **k: _in_phase(counter, "scoring", _make(*a, **k))
            )


def count_step(counter: OpCounter, method, model, optimizer, scheduler, batch: dict, step: int,
               total_steps: int, max_grad_norm: float) -> dict:
    """One optimizer step as the training loop runs it, counted; returns ``counter.snapshot()``."""
    from adarank.training.loop import optimization_step

    counter.reset()
    with counter:
        with counter.phase("forward"):
            loss = model(**batch).loss
        with counter.phase("regulariser"):
            extra = method.extra_loss(model)
            total = loss if extra is None else loss + extra
        with counter.phase("update"):
            optimization_step(method, model, optimizer, scheduler, total, step, total_steps, max_grad_norm)
    return counter.snapshot()
