"""All TriAdapt layers' factors of one forward pass, assembled with a few grouped operators.

The block store (:mod:`.store`) keeps every growth event's blocks in a few flat tensors. Taking
each layer's blocks apart and putting them back together (one concatenation of A, of B and of
the packed L/U values, one r × r assembly per module) costs a handful of small operators per
module and step, forward and backward, and the Eq. 10 regulariser as many again; on a GPU each
is a kernel launch. This module does the same arithmetic for *all* layers at once, once per
forward pass:

* ``A`` rows: the A<n> tensors of all events are concatenated and one ``index_select`` puts the
  rows of every module with ``n`` input features in a fixed order (by group, see below, then by
  module, then in block order), so a module's A is a row range;
* ``Bᵀ``: the same with the columns of the B<d> tensors (gathered as the rows of Bᵀ);
* ``s·D`` (Eq. 4-5): the packed L and U values of all events are scaled by their module's
  α/(r+ε) and added with one ``index_add`` into one flat buffer that holds every module's r × r
  core (the diagonal receives L_jj then U_jj, in the order of the per-module assembly);
* groups: modules with the same (input features, output features, rank) are adjacent in all
  three, so a group's A, Bᵀ and D are (modules × r × n), (modules × r × d) and (modules × r × r)
  views, and ``s·D·A`` (the r × n product each module applies, Eq. 5 regrouped as
  x ↦ x (sDA)ᵀ Bᵀ) is one ``bmm`` per group; the regulariser's Gram matrices
  A Aᵀ and Bᵀ B are one ``bmm`` each per group, their Frobenius norms one reduction.

The layout (indices, groups) depends only on the events, so it is rebuilt only after a growth
event (or a move to another device). The values equal the per-module path's up to rounding:
the products are grouped differently (x (sDA)ᵀ instead of (x Aᵀ)(sD)ᵀ), which
tests/test_triadapt_fast.py bounds against the straightforward implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adarank.methods.triadapt.blocks import EPS


@dataclass
class Group:
    """Modules with equal (in_features, out_features, rank): rows ``start:stop`` of their
    A<n> gather, of their Bᵀ<d> gather, and ``d_start:d_stop`` of the flat core buffer."""

    layers: list
    in_features: int
    out_features: int
    rank: int
    start_a: int
    start_b: int
    start_d: int

    @property
    def size(self) -> int:
        return len(self.layers)


class Layout:
    """Index tensors mapping the store's event tensors to grouped per-module factors."""

    def __init__(self, store, layers: list, device: torch.device):
        self.device = device
        by_key: dict[tuple, list] = {}
        for layer in layers:
            by_key.setdefault((layer.in_features, layer.out_features, layer.rank), []).append(layer)
        # where every event tensor starts in its concatenation over events
        offsets: dict[str, list[int | None]] = {}
        totals: dict[str, int] = {}
        for index, sizes in enumerate(store.split_sizes):
            for name in sizes:
                offsets.setdefault(name, [None] * len(store.split_sizes))
            for name, pieces in sizes.items():
                offsets[name][index] = totals.get(name, 0)
                totals[name] = totals.get(name, 0) + sum(pieces)
        self.names = {name: [i for i, o in enumerate(offs) if o is not None] for name, offs in offsets.items()}

        def piece_start(event: int, name: str, piece: int) -> int:
            return offsets[name][event] + sum(store.split_sizes[event][name][:piece])

        rows_a: dict[int, list[int]] = {}
        rows_b: dict[int, list[int]] = {}
        lu_dst = [0] * totals.get("LU", 0)
        lu_scale = [0.0] * totals.get("LU", 0)
        self.groups: list[Group] = []
        self.slot: dict[int, tuple[Group, int]] = {}  # id(layer) -> (group, index in group)
        d_total = 0
        for (n, d, r), members in by_key.items():
            group = Group(members, n, d, r, len(rows_a.get(n, [])), len(rows_b.get(d, [])), d_total)
            self.groups.append(group)
            for i, layer in enumerate(members):
                self.slot[id(layer)] = (group, i)
                scale = layer.lora_alpha / (layer.rank + EPS)
                lower, upper = [], []  # positions of the layer's packed L, then U, values in the LU gather
                for event, a_key, a_i, b_key, b_i, l_key, l_i, u_key, u_i in layer.store_slots:
                    a0, b0 = piece_start(event, a_key, a_i), piece_start(event, b_key, b_i)
                    size = store.split_sizes[event][a_key][a_i]
                    rows_a.setdefault(n, []).extend(range(a0, a0 + size))
                    rows_b.setdefault(d, []).extend(range(b0, b0 + size))
                    l0, u0 = piece_start(event, l_key, l_i), piece_start(event, u_key, u_i)
                    lower.extend(range(l0, l0 + store.split_sizes[event][l_key][l_i]))
                    upper.extend(range(u0, u0 + store.split_sizes[event][u_key][u_i]))
                for source, target in zip(lower + upper, layer.d_positions):
                    lu_dst[source] = d_total + target
                    lu_scale[source] = scale
                d_total += r * r
        self.d_total = d_total
        self.rows_a = {n: torch.tensor(rows, dtype=torch.long, device=device) for n, rows in rows_a.items()}
        self.rows_b = {d: torch.tensor(rows, dtype=torch.long, device=device) for d, rows in rows_b.items()}
        self.lu_dst = torch.tensor(lu_dst, dtype=torch.long, device=device)
        self.lu_scale = torch.tensor(lu_scale, dtype=torch.float32, device=device)
        self.eyes = {r: torch.eye(r, device=device) for r in {g.rank for g in self.groups}}


class Factors:
    """One forward pass's factors: per group A (m × r × n), Bᵀ (m × r × d), s·D·A (m × r × n)."""

    def __init__(self, layout: Layout, store):
        self.layout = layout
        events = [dict(event._parameters) for event in store.events]

        def gather(name: str) -> torch.Tensor:
            tensors = [events[i][name] for i in layout.names[name]]
            return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=1 if name.startswith("B") else 0)

        gathered_a = {n: gather(f"A{n}").index_select(0, rows) for n, rows in layout.rows_a.items()}
        gathered_b = {d: gather(f"B{d}").index_select(1, rows).T for d, rows in layout.rows_b.items()}
        lu = gather("LU")
        scaled = lu * layout.lu_scale.to(lu.dtype)
        cores = lu.new_zeros(layout.d_total).index_add(0, layout.lu_dst, scaled)
        self.a, self.bt = {}, {}
        self.per_layer: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for group in layout.groups:
            m, r = group.size, group.rank
            a = gathered_a[group.in_features][group.start_a : group.start_a + m * r].view(m, r, group.in_features)
            bt = gathered_b[group.out_features][group.start_b : group.start_b + m * r].view(m, r, group.out_features)
            d = cores[group.start_d : group.start_d + m * r * r].view(m, r, r)
            da = torch.bmm(d, a)
            self.a[id(group)], self.bt[id(group)] = a, bt
            # unbind: one autograd node per group (its backward is one stack), not one per module
            for layer, da_m, bt_m in zip(group.layers, da.unbind(0), bt.unbind(0)):
                self.per_layer[id(layer)] = (da_m, bt_m.T)

    def of(self, layer) -> tuple[torch.Tensor, torch.Tensor]:
        """(s·D·A (r × n), B (d × r)) of ``layer``."""
        return self.per_layer[id(layer)]

    def orthogonality_sum(self) -> torch.Tensor:
        """Σ over modules of ‖AAᵀ − I‖_F + ‖BᵀB − I‖_F (Eq. 10 in the form of reading A15)."""
        norms = []
        for group in self.layout.groups:
            eye = self.layout.eyes[group.rank]
            for factor in (self.a[id(group)], self.bt[id(group)]):
                gram = torch.bmm(factor, factor.transpose(1, 2)) - eye.to(factor.dtype)
                norms.append(torch.linalg.matrix_norm(gram))
        return torch.cat(norms).sum()
