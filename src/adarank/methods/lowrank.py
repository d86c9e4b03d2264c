"""Pieces shared by the hand-written low-rank adapters: swapping a module in a model (every one);
option defaults and common checks, LoRA's standard initialisation of A and the adapter folder
format (DyLoRA, ALoRA).

An adapter folder holds ``adapter_config.json`` (whatever the method needs to rebuild its layers:
module names, ranks, alpha, dropout, ...) and ``adapter.pt`` (the tensors by model name: the
adapter factors and the fully trained heads).
"""

from __future__ import annotations

import json
import math
import os

import torch
from torch import nn

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.pt"


def option(cfg, defaults: dict, key: str):
    """A method option: the config's value, or the default where it is missing or null."""
    value = cfg.get(key, None) if cfg is not None else None
    return defaults[key] if value is None else value


def check_common(method: str, method_cfg, defaults: dict, task_cfg) -> None:
    """Checks every hand-written LoRA-family method makes: no unknown option, alpha > 0,
    dropout in [0, 1) (ValueError with the fix)."""
    unknown = sorted(set(method_cfg or {}) - {"name", *defaults})
    if unknown:
        raise ValueError(f"method={method} has no option(s) {unknown}; known: {sorted({'name', *defaults})}")
    if not float(task_cfg.alpha) > 0:
        raise ValueError(f"task.alpha must be > 0, not {task_cfg.alpha}")
    if not 0 <= float(task_cfg.lora_dropout or 0) < 1:
        raise ValueError(f"task.lora_dropout must lie in [0, 1), not {task_cfg.lora_dropout}")


def max_rank(cfg, defaults: dict, task_cfg) -> int:
    """``method.max_rank``, null meaning the task's reference rank (ValueError unless a positive integer)."""
    value = option(cfg, defaults, "max_rank")
    value = task_cfg.reference_rank if value is None else value
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"method.max_rank must be a positive integer (or null = task.reference_rank), not {value!r}")
    return value


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def lora_init_a(a: torch.Tensor) -> torch.Tensor:
    """LoRA's (and peft's, and DyLoRA's) initialisation of A (rank x in): Kaiming-uniform with
    a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)); B starts at zero."""
    return nn.init.kaiming_uniform_(a, a=math.sqrt(5))


def freeze_base(base: nn.Linear) -> nn.Linear:
    for param in base.parameters():
        param.requires_grad = False
    return base


def save_folder(folder: str, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=1)
    torch.save({k: v.detach().cpu().clone() for k, v in tensors.items()}, os.path.join(folder, WEIGHTS_FILE))


def save_layers(folder: str, method: str, layers: dict, model: nn.Module, **config) -> None:
    """The adapter folder of a method whose ``layers`` ({module name: layer with ``lora_alpha`` and
    ``lora_dropout``}) all share alpha and dropout: those, the module names and ``config`` in the
    config file, the model's trainable tensors beside it."""
    first = next(iter(layers.values()))
    dropout = first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0
    full = {"method": method, **config, "alpha": first.lora_alpha, "dropout": dropout, "modules": list(layers)}
    save_folder(folder, full, {n: p for n, p in model.named_parameters() if p.requires_grad})


def read_config(folder: str) -> dict:
    with open(os.path.join(folder, CONFIG_FILE)) as f:
        return json.load(f)


def load_tensors_into(model: nn.Module, folder: str) -> None:
    """Copy every saved tensor into the model parameter or buffer of the same name (a saved
    tensor the model lacks, or a shape mismatch, raises)."""
    from adarank.training.checkpoint import load_tensors

    load_tensors(model, torch.load(os.path.join(folder, WEIGHTS_FILE), map_location="cpu", weights_only=True))
