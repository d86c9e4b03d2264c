"""Inject, save, load and merge TriAdapt layers.

A saved adapter is a folder with ``adapter_config.json`` (per-module block sizes, hence the rank
pattern, plus α, dropout and init std) and ``adapter.pt`` (every trainable tensor: the TriAdapt
blocks under the standalone names ``<module>.tri_A.<b>`` ... whatever the storage used in
training, and the fully trained heads). Loading rebuilds the same blocks, standalone, in a fresh
backbone and restores the tensors, so predictions are identical.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from adarank.methods.lowrank import replace_module
from adarank.methods.triadapt.layer import TriAdaptLinear
from adarank.methods.triadapt.store import ATTRIBUTE as STORE_ATTRIBUTE
from adarank.methods.triadapt.store import BlockStore

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.pt"


def inject(
    model: nn.Module, names: list[str], alpha: float, init_rank: int, dropout: float, init_std: float,
    shared: bool = False,
) -> dict[str, TriAdaptLinear]:
    """Replace each named nn.Linear by a TriAdaptLinear wrapping it; return name -> layer.

    ``shared``: the blocks live in a :class:`BlockStore` owned by the model (the initial blocks
    of all modules are its first event); otherwise every layer owns its blocks."""
    store = BlockStore() if shared else None
    layers = {}
    for name in names:
        base = model.get_submodule(name)
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{name} is a {type(base).__name__}, not an nn.Linear")
        layer = TriAdaptLinear(base, alpha, init_rank=init_rank, dropout=dropout, init_std=init_std, store=store)
        replace_module(model, name, layer)
        layers[name] = layer
    if store is not None and layers:
        # B starts at zero so that the adapted model equals the backbone at step 0 (§III-B, A13)
        store.grow(list(layers.values()), init_rank, zero_b=True)
        store.attach_to(model)
    return layers


def triadapt_layers(model: nn.Module) -> dict[str, TriAdaptLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, TriAdaptLinear)}


def save_adapter(model: nn.Module, folder: str) -> None:
    """Write the block structure and every trainable tensor of ``model`` to ``folder``."""
    layers = triadapt_layers(model)
    if not layers:
        raise ValueError("the model has no TriAdapt layer to save")
    first = next(iter(layers.values()))
    dropout = first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0
    config = {
        "method": "triadapt",
        "alpha": first.lora_alpha,
        "dropout": dropout,
        "init_std": first.init_std,
        "blocks": {name: list(layer.blocks) for name, layer in layers.items()},
        "rank_pattern": {name: layer.rank for name, layer in layers.items()},
    }
    state = {
        n: p.detach().cpu().clone()
        for n, p in model.named_parameters()
        if p.requires_grad and ".tri_" not in n and not n.startswith(STORE_ATTRIBUTE + ".")
    }
    for name, layer in layers.items():
        state.update({f"{name}.{key}": t.detach().cpu().clone() for key, t in layer.block_state().items()})
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=1)
    torch.save(state, os.path.join(folder, WEIGHTS_FILE))


def load_adapter(model: nn.Module, folder: str) -> dict[str, TriAdaptLinear]:
    """Rebuild the saved TriAdapt blocks inside a fresh ``model`` and load the saved tensors.

    Every saved tensor must land in the model (a mismatch raises)."""
    with open(os.path.join(folder, CONFIG_FILE)) as f:
        config = json.load(f)
    blocks = config["blocks"]
    layers = inject(
        model, list(blocks), config["alpha"], blocks[next(iter(blocks))][0], config["dropout"],
        config["init_std"],
    )
    for name, sizes in blocks.items():
        layer = layers[name]
        if layer.blocks[0] != sizes[0]:  # initial block sizes may differ per module in principle
            raise ValueError(f"{name}: saved initial block {sizes[0]} != {layer.blocks[0]}")
        for size in sizes[1:]:
            layer.grow(size)
    state = torch.load(os.path.join(folder, WEIGHTS_FILE), map_location="cpu")
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"saved tensors not found in the model: {result.unexpected_keys[:5]}")
    missing = [key for key in result.missing_keys if ".tri_" in key]
    if missing:
        raise ValueError(f"adapter tensors missing from the saved file: {missing[:5]}")
    for name, layer in layers.items():
        if layer.rank != config["rank_pattern"][name]:
            raise ValueError(f"{name}: rank {layer.rank} != saved {config['rank_pattern'][name]}")
    return layers


def merge(model: nn.Module) -> nn.Module:
    """Fold every TriAdapt update into its base weight (W0 + α/(r+ε)·B(L+U)A), in place."""
    for name, layer in triadapt_layers(model).items():
        replace_module(model, name, layer.merged_linear())
    store = getattr(model, STORE_ATTRIBUTE, None)
    if store is not None:
        store.detach_from(model)
    return model
