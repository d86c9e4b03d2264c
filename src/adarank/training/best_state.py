"""The fair protocol's best trainable state: kept in memory when a validation evaluation is the best
so far, saved in the checkpoint with the rest of the loop's state, and loaded into a rebuilt model
at the end so that the dev set is evaluated once at the chosen checkpoint (docs/fair-protocol.md).

The state is what a checkpoint holds of the model and the method (``Method.checkpoint_tensors``,
``Method.state_dict``), copied: the tensors to the CPU (a full fine-tuning copy does not double the
accelerator's memory), the method state deep-copied. A growing method's structure at the best step
is smaller than at the end, so the state is not loaded into the trained model but into a model
built afresh: ``restore_structure`` replays the growth log *as it was at the best step*, then the
tensors and the method state are loaded, exactly as a resumed run does (training/checkpoint.py).
"""

from __future__ import annotations

import copy

import torch

from adarank.training.checkpoint import load_tensors


def snapshot(model: torch.nn.Module, method) -> dict:
    """A copy of the trainable state of ``model`` and ``method`` as they are now."""
    tensors = {name: value.detach().to("cpu", copy=True) for name, value in method.checkpoint_tensors(model).items()}
    return {"model": tensors, "method": copy.deepcopy(method.state_dict())}


class NoScheduler:
    """``restore_structure`` hands the regrown parameters to a scheduler; a model rebuilt only to be
    evaluated or exported has none."""

    def add_param_group(self, params, **options) -> None:
        pass


def restore(model: torch.nn.Module, method, state: dict) -> None:
    """Bring a freshly built (step-0) ``model`` and ``method`` to the snapshot ``state``."""
    method.restore_structure(model, NoScheduler(), state["method"])
    load_tensors(model, state["model"])
    method.load_state_dict(state["method"])
