"""Shared storage of TriAdapt blocks: one growth event = a few flat parameters.

Stored one block per parameter, a TriAdaptLoRA model at the end of a GLUE run has four
parameters per block per module (about 2,300 for DeBERTaV3-base), and AdamW, gradient clipping
and ``zero_grad`` pay a fixed cost per tensor at every step (docs/performance.md). The store
keeps the blocks of one growth event, for every module grown in it, in at most five tensors:

* ``A<n>``: the new A rows (Eq. 6) of every grown module with ``n`` input features, stacked
  (rows); a module's block is a row range;
* ``B<d>``: the new B columns (Eq. 7) of every grown module with ``d`` output features, side by
  side; a module's block is a column range;
* ``LU``: the packed new L and U values (Eq. 8-9) of every grown module, one after the other.

:meth:`BlockStore.blocks_of` splits every event tensor (``torch.split``: views) and hands a
layer its pieces, with the values and shapes of the standalone layout's parameters (saving,
scoring, merging, a layer with ``fast = False``). The training forward pass and the regulariser
instead take every layer's factors at once from :meth:`BlockStore.fused_factors` (fused.py),
which equal the per-module arithmetic to rounding (the bound: tests/test_triadapt_fast.py).
"""

from __future__ import annotations

import torch
from torch import nn

from adarank.methods.triadapt.blocks import Blocks
from adarank.methods.triadapt.fused import Factors, Layout

#: the attribute under which the model owns its store (so that ``named_parameters`` has it)
ATTRIBUTE = "triadapt_blocks"


def split_dim(name: str) -> int:
    """B tensors hold their modules' blocks side by side (columns), the others one after the other."""
    return 1 if name.startswith("B") else 0


class BlockStore(nn.Module):
    """Every growth event's blocks of every attached TriAdaptLinear, as flat parameters."""

    def __init__(self):
        super().__init__()
        self.events = nn.ModuleList()  # one nn.Module per event; parameters named A<n>, B<d>, LU
        self.split_sizes: list[dict[str, list[int]]] = []  # per event: tensor name -> piece sizes
        self._generation = 0  # bumped before every forward pass of the model (see attach_to)
        self._splits: list[dict[str, tuple[torch.Tensor, ...]]] | None = None
        self._splits_key: tuple | None = None
        # every attached layer in the order first grown (references, not submodules: the model owns
        # them), and the fused factors of the last forward pass with their layout (fused.py)
        self.__dict__["_layers"] = []
        self._layout = None
        self._fused = None
        self._fused_key: tuple | None = None

    # -- growth ----------------------------------------------------------------------------
    def grow(self, layers: list, size: int, zero_b: bool = False) -> list[nn.Parameter]:
        """One growth event: ``size`` new ranks for each of ``layers`` (Eq. 6-9), drawn module by
        module in the standalone layout's order; returns the event's new parameters."""
        pieces: dict[str, list[torch.Tensor]] = {}
        slots = []
        for layer in layers:
            if layer.store is not self:
                raise ValueError("the layer belongs to another store")
            if not layer.store_slots:
                self.__dict__["_layers"].append(layer)
            a, b, lower, upper = layer.new_block(size, zero_b)
            a_key, b_key = f"A{layer.in_features}", f"B{layer.out_features}"
            slot = [len(self.events)]
            for key, tensor in ((a_key, a), (b_key, b), ("LU", lower), ("LU", upper)):
                slot += [key, len(pieces.setdefault(key, []))]
                pieces[key].append(tensor)
            slots.append(tuple(slot))
        event = nn.Module()
        sizes = {}
        for key, tensors in pieces.items():
            dim = split_dim(key)
            event.register_parameter(key, nn.Parameter(torch.cat(tensors, dim=dim)))
            sizes[key] = [t.shape[dim] for t in tensors]
        self.events.append(event)
        self.split_sizes.append(sizes)
        for layer, slot in zip(layers, slots):
            layer.store_slots.append(slot)
            layer.add_block(size)
        self._splits = None
        self._fused = None
        # the new layout now, with the growth (its index tensors are host-to-device copies), not in
        # the next step's forward pass
        self._layout = Layout(self, self.__dict__["_layers"], self.events[0]._parameters["LU"].device)
        return list(event.parameters())

    # -- views -----------------------------------------------------------------------------
    def version_key(self) -> tuple:
        """Changes when an event is added, a stored tensor is modified in place (every optimizer
        step), the grad mode switches or a new forward pass of the model begins. Checked by
        every layer in the forward pass and the regulariser, hence the direct ``_parameters``
        walk (``parameters()`` costs about three times as much)."""
        versions = [p._version for event in self.events for p in event._parameters.values()]
        return (torch.is_grad_enabled(), self._generation, *versions)

    @property
    def splits_key(self) -> tuple | None:
        """The :meth:`version_key` of the views last handed out by :meth:`blocks_of`."""
        return self._splits_key

    def _split_all(self) -> list[dict[str, tuple[torch.Tensor, ...]]]:
        key = self.version_key()
        if self._splits is None or key != self._splits_key:
            self._splits = [
                {name: self.pieces(index, name, param) for name, param in event.named_parameters(recurse=False)}
                for index, event in enumerate(self.events)
            ]
            self._splits_key = key
        return self._splits

    def pieces(self, event: int, name: str, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``tensor`` (event ``event``'s tensor ``name``, or anything of its shape: a gradient,
        an AdamW moment) cut into the per-module pieces, in the order they were stored."""
        return torch.split(tensor, self.split_sizes[event][name], dim=split_dim(name))

    def fused_factors(self) -> Factors:
        """Every layer's factors of the current forward pass (fused.py), assembled at the first
        request of a pass and reused until the next pass, event, optimizer step or grad-mode switch."""
        key = self.version_key()
        if self._fused is None or key != self._fused_key:
            device = self.events[0]._parameters["LU"].device
            if self._layout is None or self._layout.device != device:
                self._layout = Layout(self, self.__dict__["_layers"], device)
            self._fused = Factors(self._layout, self)
            self._fused_key = key
        return self._fused

    def blocks_of(self, layer) -> Blocks:
        """The layer's blocks, in its block order, as views of the event tensors."""
        splits = self._split_all()
        blocks = Blocks([], [], [], [])
        for event, a_key, a_i, b_key, b_i, l_key, l_i, u_key, u_i in layer.store_slots:
            pieces = splits[event]
            blocks.a.append(pieces[a_key][a_i])
            blocks.b.append(pieces[b_key][b_i])
            blocks.lower.append(pieces[l_key][l_i])
            blocks.upper.append(pieces[u_key][u_i])
        return blocks

    # -- ownership -------------------------------------------------------------------------
    def attach_to(self, model: nn.Module) -> None:
        """Register the store on ``model`` and start a new split at each of its forward passes,
        so that two forward passes never share autograd nodes."""
        model.add_module(ATTRIBUTE, self)
        self._hook = model.register_forward_pre_hook(self._new_forward)

    def detach_from(self, model: nn.Module) -> None:
        self._hook.remove()
        delattr(model, ATTRIBUTE)

    def _new_forward(self, module, args) -> None:
        self._generation += 1

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .double(): the views are stale
        self._splits = None
        self._layout = self._fused = None
        return super()._apply(fn, *args, **kwargs)
