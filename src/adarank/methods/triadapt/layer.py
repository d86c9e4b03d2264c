"""The TriAdaptLoRA layer: h = W0 x + α/(r+ε) · B (L + U) A x  (paper Eq. 4-5), growable by
Eq. 6-9.

Storage. The rank grows in *blocks*: the initial block (r_init ranks) and one block of Δr ranks
per growth event of this module. Block b, covering ranks o..o+s-1, owns four parameters:

* ``tri_A[b]`` (s × n): the new rows of A (Eq. 6);
* ``tri_B[b]`` (d × s): the new columns of B (Eq. 7);
* ``tri_L[b]``: the new rows of L, packed row by row, row o+i holding columns 0..o+i only —
  [L_down | L_aug] of Eq. 8 with L_aug lower-triangular *including* the diagonal (reading A12);
* ``tri_U[b]``: the new columns of U, packed column by column, column o+j holding rows 0..o+j —
  [U_up ; U_aug] of Eq. 9 with U_aug upper-triangular including the diagonal.

The strictly-upper part of L and the strictly-lower part of U are not parameters at all, so they
stay zero whatever the optimizer does. D = L + U is assembled by one ``index_add`` of the packed
values into an r × r matrix (the diagonal receives L_jj + U_jj). A growth appends new parameters
and never touches existing ones, so the optimizer state of existing parameters is kept as is.

Two storages hold these blocks, with the same values and the same arithmetic:

* standalone (``store=None``): each block's four tensors are ``nn.Parameter`` s of the layer
  (``tri_A``, ``tri_B``, ``tri_L``, ``tri_U``), as described above. This is the straightforward
  layout and the test oracle.
* shared (``store=BlockStore``, what the method uses): one growth event's blocks of *all* grown
  modules live in a few flat parameters of the store (:mod:`.store`), which hands each layer
  views of its blocks. AdamW, clipping and ``zero_grad`` then see a handful of tensors per event
  instead of four per block and module. With ``fast`` (the default) the forward pass takes its
  factors from the store's :meth:`~.store.BlockStore.fused_factors` (all layers assembled at once,
  :mod:`.fused`) and applies x ↦ W0x + (x (sDA)ᵀ)Bᵀ.

Forward cost: one concatenation of A and of B per block count (not per rank), one r×r assembly,
and x → xAᵀ → (·)Dᵀ → (·)Bᵀ; the d × n ΔW is never formed (only :meth:`delta_weight`, used for
merging and as a test oracle, forms it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adarank.methods.triadapt.blocks import EPS, Blocks

__all__ = ["EPS", "Blocks", "TriAdaptLinear"]
#: default of ``TriAdaptLinear.fast``: the regulariser reuses the A and B the forward pass just
#: concatenated instead of concatenating them again (same values, same gradients; the plain
#: path, ``fast=False``, is the oracle of tests/test_triadapt_fast.py)
FAST = True


class TriAdaptLinear(nn.Module):
    """An ``nn.Linear`` (kept frozen as ``base``) plus the growable update B(L+U)A.

    With ``store=None`` the layer owns its blocks and starts with ``init_rank`` ranks; with a
    :class:`~adarank.methods.triadapt.store.BlockStore` it starts at rank 0 and the store grows
    it (the store draws the initial block of all its layers as one event).
    """

    def __init__(
        self,
        base: nn.Linear,
        alpha: float,
        init_rank: int = 1,
        dropout: float = 0.0,
        init_std: float = 0.02,
        store=None,
    ):
        super().__init__()
        if init_rank < 1:
            raise ValueError(f"init_rank must be >= 1, got {init_rank}")
        self.base = base
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.lora_alpha = float(alpha)
        self.init_std = float(init_std)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.blocks: list[int] = []  # ranks per block, in order
        self.rank = 0
        # (row, col) of every packed L value, then of every packed U value, in block order
        self._rows: list[int] = []
        self._cols: list[int] = []
        self._num_l = 0  # how many of them belong to L
        self.d_positions: list[int] = []
        self.register_buffer("_d_index", torch.zeros(0, dtype=torch.long), persistent=False)
        self.fast = FAST
        # (key, A, B) of the last training forward pass, reused by orthogonality() while valid
        self._factors: tuple | None = None
        self.__dict__["_store"] = store  # a reference, not a submodule: the model owns the store
        # store mode: where each block lives, (event, "A<n>", i, "B<d>", i, "LU", i_L, "LU", i_U),
        # i.e. the event and, per tensor, its name and piece index in that event (store.py)
        self.store_slots: list[tuple] = []
        if store is None:
            self.tri_A = nn.ParameterList()
            self.tri_B = nn.ParameterList()
            self.tri_L = nn.ParameterList()
            self.tri_U = nn.ParameterList()
            # B starts at zero so that the adapted model equals the backbone at step 0 (§III-B, A13)
            self.grow(init_rank, zero_b=True)

    # -- structure -------------------------------------------------------------------------
    @property
    def scaling(self) -> float:
        """α / (r + ε) of Eq. 5 with r the module's current rank (A14)."""
        return self.lora_alpha / (self.rank + EPS)

    @property
    def store(self):
        """The :class:`~adarank.methods.triadapt.store.BlockStore` holding the blocks, or None."""
        return self.__dict__["_store"]

    def grow(self, size: int, zero_b: bool = False) -> list[nn.Parameter]:
        """Append ``size`` ranks (Eq. 6-9); return the new parameters (to give to the optimizer).

        New entries of A, B, L, U are N(0, init_std²) (A12, A13); B of the initial block is 0.
        In store mode this is a growth event of this module alone.
        """
        if self.store is not None:
            return self.store.grow([self], size, zero_b)
        params = [nn.Parameter(t) for t in self.new_block(size, zero_b)]
        for plist, param in zip((self.tri_A, self.tri_B, self.tri_L, self.tri_U), params):
            plist.append(param)
        self.add_block(size)
        return params

    def new_block(self, size: int, zero_b: bool) -> tuple[torch.Tensor, ...]:
        """Fresh values of ``size`` new ranks on top of the current rank (Eq. 6-9): A rows,
        B columns, packed L and U values, each N(0, init_std²) (A12, A13), B = 0 if ``zero_b``.
        Both storages draw through here, so the random draws come in the same order."""
        if size < 1:
            raise ValueError(f"a growth adds at least one rank, got {size}")
        kind = {"device": self.base.weight.device, "dtype": self.base.weight.dtype}
        packed = size * self.rank + size * (size + 1) // 2  # L_down + lower-triangular L_aug
        a = torch.empty(size, self.in_features, **kind).normal_(0.0, self.init_std)
        b = torch.zeros(self.out_features, size, **kind)
        if not zero_b:
            b.normal_(0.0, self.init_std)
        lower = torch.empty(packed, **kind).normal_(0.0, self.init_std)
        upper = torch.empty(packed, **kind).normal_(0.0, self.init_std)
        return a, b, lower, upper

    def add_block(self, size: int) -> None:
        """Record a block of ``size`` new ranks (its tensors are already stored): rank, block
        sizes and the D positions of its packed L and U values."""
        old, new = self.rank, self.rank + size
        # positions: L values first (all blocks), then U values (all blocks), as factor_d packs them
        l_pos = [(row, col) for row in range(old, new) for col in range(row + 1)]
        u_pos = [(row, col) for col in range(old, new) for row in range(col + 1)]
        self._rows = self._rows[: self._num_l] + [p[0] for p in l_pos] + self._rows[self._num_l :]
        self._cols = self._cols[: self._num_l] + [p[1] for p in l_pos] + self._cols[self._num_l :]
        self._num_l += len(l_pos)
        self._rows += [p[0] for p in u_pos]
        self._cols += [p[1] for p in u_pos]
        self.blocks.append(size)
        self.rank = new
        self._factors = None
        # flat index into the r × r matrix D; the host copy lets the fused layout read it without
        # waiting for the device (fused.py)
        self.d_positions = [row * new + col for row, col in zip(self._rows, self._cols)]
        self._d_index = torch.tensor(self.d_positions, dtype=torch.long, device=self.base.weight.device)

    def block_tensors(self) -> Blocks:
        """This layer's block tensors: its own parameters, or views of the store's."""
        if self.store is not None:
            return self.store.blocks_of(self)
        return Blocks(list(self.tri_A), list(self.tri_B), list(self.tri_L), list(self.tri_U))

    def block_state(self) -> dict[str, torch.Tensor]:
        """Block tensors under the standalone parameter names (``tri_A.0`` ...), whatever the
        storage: the saved-adapter format."""
        with torch.no_grad():
            blocks = self.block_tensors()
        return {
            f"{prefix}.{i}": tensor
            for prefix, tensors in zip(("tri_A", "tri_B", "tri_L", "tri_U"), blocks)
            for i, tensor in enumerate(tensors)
        }

    # -- factors -----------------------------------------------------------------------------
    @staticmethod
    def _cat(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
        return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)

    def factor_a(self, blocks: Blocks | None = None) -> torch.Tensor:
        """A (r × n), Eq. 6."""
        return self._cat((blocks or self.block_tensors()).a, 0)

    def factor_b(self, blocks: Blocks | None = None) -> torch.Tensor:
        """B (d × r), Eq. 7. Contiguous, as the standalone parameter is: a store's one-block B is
        a column range of a wider tensor, and matmul kernels may round differently on a strided
        operand."""
        return self._cat((blocks or self.block_tensors()).b, 1).contiguous()

    def factor_d(self, scale: float = 1.0, blocks: Blocks | None = None) -> torch.Tensor:
        """scale · D with D = L + U (r × r, Eq. 4), assembled from the packed triangular values."""
        blocks = blocks or self.block_tensors()
        r = self.rank
        values = torch.cat(blocks.lower + blocks.upper)
        flat = values.new_zeros(r * r).index_add(0, self._d_index, values, alpha=scale)
        return flat.view(r, r)

    def lower(self) -> torch.Tensor:
        """L alone (r × r), lower-triangular (Eq. 8)."""
        r = self.rank
        values = torch.cat(self.block_tensors().lower)
        return values.new_zeros(r * r).index_add(0, self._d_index[: self._num_l], values).view(r, r)

    def upper(self) -> torch.Tensor:
        """U alone (r × r), upper-triangular (Eq. 9)."""
        r = self.rank
        values = torch.cat(self.block_tensors().upper)
        return values.new_zeros(r * r).index_add(0, self._d_index[self._num_l :], values).view(r, r)

    def delta_weight(self) -> torch.Tensor:
        """The scaled dense update α/(r+ε)·B(L+U)A (d × n): for merging and tests only."""
        blocks = self.block_tensors()
        return self.scaling * (self.factor_b(blocks) @ self.factor_d(blocks=blocks) @ self.factor_a(blocks))

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 5 as x ↦ W0x + ((x Aᵀ)(s·D)ᵀ)Bᵀ, s = α/(r+ε); ΔW is never formed."""
        out = self.base(x)
        if self.fast and self.store is not None:  # all layers' factors at once (fused.py)
            da, b = self.store.fused_factors().of(self)
            return out + F.linear(F.linear(self.dropout(x), da), b)
        blocks = self.block_tensors()
        a, b = self.factor_a(blocks), self.factor_b(blocks)
        if self.fast and torch.is_grad_enabled():
            # in store mode the key block_tensors() just checked, not a second check
            key = self.store.splits_key if self.store is not None else self._factor_key()
            self._factors = (key, a, b)
        hidden = F.linear(self.dropout(x), a)
        hidden = F.linear(hidden, self.factor_d(self.scaling, blocks))  # scale the r×r, not the output
        return out + F.linear(hidden, b)

    def _factor_key(self) -> tuple:
        """Changes whenever a block is added or any A / B block is modified in place (an
        optimizer step bumps the tensor version counter)."""
        if self.store is not None:  # a new block is a new event of the store
            return self.store.version_key()
        return (len(self.tri_A), *(p._version for p in self.tri_A), *(p._version for p in self.tri_B))

    def _factors_for_regulariser(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A and B: the forward pass's own concatenations when they are still current (the
        regulariser follows the forward pass of the same step), else fresh ones."""
        cached, self._factors = self._factors, None
        if self.fast and cached is not None and torch.is_grad_enabled() and cached[0] == self._factor_key():
            return cached[1], cached[2]
        blocks = self.block_tensors()
        return self.factor_a(blocks), self.factor_b(blocks)

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .double(): drop the cached factors
        self._factors = None
        return super()._apply(fn, *args, **kwargs)

    # -- regulariser -------------------------------------------------------------------------
    def orthogonality(self) -> tuple[torch.Tensor, torch.Tensor]:
        """‖AAᵀ − I‖_F and ‖BᵀB − I‖_F (Eq. 10 in the r × r Gram form of reading A15)."""
        a, b = self._factors_for_regulariser()
        eye = torch.eye(self.rank, device=a.device, dtype=a.dtype)
        return torch.linalg.matrix_norm(a @ a.T - eye), torch.linalg.matrix_norm(b.T @ b - eye)

    def merged_linear(self) -> nn.Linear:
        """A plain nn.Linear whose weight is W0 + ΔW (same bias)."""
        merged = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.base.bias is not None,
            device=self.base.weight.device,
            dtype=self.base.weight.dtype,
        )
        with torch.no_grad():
            merged.weight.copy_(self.base.weight + self.delta_weight())
            if self.base.bias is not None:
                merged.bias.copy_(self.base.bias)
        merged.weight.requires_grad_(self.base.weight.requires_grad)
        if merged.bias is not None:
            merged.bias.requires_grad_(self.base.bias.requires_grad)
        return merged

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"blocks={self.blocks}, alpha={self.lora_alpha}"
        )
