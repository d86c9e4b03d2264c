"""The TriAdapt layer (Eq. 4-9): forward against a dense oracle, triangular structure, growth."""

import pytest
import torch
from torch import nn

from adarank.methods.triadapt.layer import EPS, TriAdaptLinear


def oracle_l_u(layer: TriAdaptLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """L and U rebuilt element by element from the packed parameters (independent of the layer's
    index arithmetic): block b's L values fill rows o..o+s-1 left to right up to the diagonal,
    its U values fill columns o..o+s-1 top to bottom down to the diagonal (Eq. 8, 9, reading A12)."""
    r = layer.rank
    lower = torch.zeros(r, r, dtype=torch.float64)
    upper = torch.zeros(r, r, dtype=torch.float64)
    offset = 0
    for b, size in enumerate(layer.blocks):
        lv, uv = layer.tri_L[b].detach().double().tolist(), layer.tri_U[b].detach().double().tolist()
        for row in range(offset, offset + size):
            for col in range(row + 1):
                lower[row, col] = lv.pop(0)
        for col in range(offset, offset + size):
            for row in range(col + 1):
                upper[row, col] = uv.pop(0)
        assert lv == [] and uv == []
        offset += size
    return lower, upper


def oracle_forward(layer: TriAdaptLinear, x: torch.Tensor) -> torch.Tensor:
    """W0 x + b + α/(r+ε) · B (L+U) A x, with the dense ΔW, in float64 (Eq. 5)."""
    lower, upper = oracle_l_u(layer)
    a = torch.cat([p.detach().double() for p in layer.tri_A], 0)
    b = torch.cat([p.detach().double() for p in layer.tri_B], 1)
    delta = layer.lora_alpha / (layer.rank + 1e-5) * b @ (lower + upper) @ a
    w0 = layer.base.weight.detach().double()
    bias = layer.base.bias.detach().double()
    return x.double() @ (w0 + delta).T + bias


def make_layer(d_in=7, d_out=5, alpha=16.0, growths=(4, 1, 4), seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    layer = TriAdaptLinear(nn.Linear(d_in, d_out, dtype=dtype), alpha=alpha)
    for size in growths:
        layer.grow(size)
    with torch.no_grad():  # make B non-zero so that the update matters
        layer.tri_B[0].normal_(0, 0.5)
    return layer


def test_initial_state_is_the_backbone():
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    layer = TriAdaptLinear(base, alpha=32)
    x = torch.randn(3, 6)
    assert layer.rank == 1 and layer.blocks == [1]
    assert torch.equal(layer.tri_B[0], torch.zeros(4, 1))  # B starts at 0 (§III-B)
    assert layer.tri_A[0].std() > 0 and layer.tri_L[0].abs().sum() > 0 and layer.tri_U[0].abs().sum() > 0
    assert torch.equal(layer(x), base(x))
    assert layer.scaling == pytest.approx(32 / (1 + EPS))


@pytest.mark.parametrize("growths", [(), (1, 1, 1), (4, 4), (4, 1, 4)])
def test_forward_equals_dense_computation(growths):
    layer = make_layer(growths=growths, dtype=torch.float64)
    x = torch.randn(2, 3, 7, dtype=torch.float64)
    assert torch.allclose(layer(x), oracle_forward(layer, x), rtol=0, atol=1e-12)
    assert layer.scaling == pytest.approx(16 / (1 + sum(growths) + 1e-5))
    # float32 as trained
    layer32 = make_layer(growths=growths)
    x32 = x.float()
    assert torch.allclose(layer32(x32).double(), oracle_forward(layer32, x32), atol=1e-5)


def test_layer_never_forms_the_dense_update():
    layer = make_layer(d_in=64, d_out=48)
    seen = []  # shapes of every tensor autograd saves: a formed ΔW (48 x 64) would be one
    x = torch.randn(4, 64)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(tuple(t.shape)) or t, lambda t: t):
        layer(x).sum().backward()
    assert (48, 64) not in seen and (64, 48) not in seen


@pytest.mark.parametrize("delta_r", [1, 4])
def test_triangular_structure_survives_growth_and_training(delta_r):
    torch.manual_seed(1)
    layer = TriAdaptLinear(nn.Linear(9, 6), alpha=8)
    layer.base.requires_grad_(False)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.05, weight_decay=0.1)
    for _ in range(4):
        new = layer.grow(delta_r)
        optimizer.add_param_group({"params": new})
        for _ in range(3):
            layer(torch.randn(5, 9)).pow(2).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    r = 1 + 4 * delta_r
    assert layer.rank == r and layer.blocks == [1] + [delta_r] * 4
    lower, upper = layer.lower().detach(), layer.upper().detach()
    assert torch.equal(lower, torch.tril(lower)) and torch.equal(upper, torch.triu(upper))
    # the strictly-upper part of L / strictly-lower part of U is not a parameter: the number of
    # trainable values equals the lower (upper) triangle including the diagonal
    assert sum(p.numel() for p in layer.tri_L) == r * (r + 1) // 2
    assert sum(p.numel() for p in layer.tri_U) == r * (r + 1) // 2
    # every stored value is where the oracle puts it, D = L + U
    o_lower, o_upper = oracle_l_u(layer)
    assert torch.equal(lower.double(), o_lower) and torch.equal(upper.double(), o_upper)
    assert torch.allclose(layer.factor_d().detach().double(), o_lower + o_upper, atol=0)
    # L_down / U_up blocks are dense (Eq. 8, 9): all values non-zero after init and training
    assert (lower[torch.tril(torch.ones(r, r, dtype=torch.bool))] != 0).all()
    assert (upper[torch.triu(torch.ones(r, r, dtype=torch.bool))] != 0).all()


def test_growth_keeps_existing_values_and_objects():
    layer = make_layer(growths=(4,))
    before = {n: (p, p.detach().clone()) for n, p in layer.named_parameters()}
    d_before = layer.factor_d().detach().clone()
    new = layer.grow(4)
    after = dict(layer.named_parameters())
    for name, (param, value) in before.items():
        assert after[name] is param and torch.equal(param, value)
    assert len(new) == 4 and all(not any(p is q for q, _ in before.values()) for p in new)
    # new entries are Gaussian (B_aug too, A12-A13) and D's old top-left block is unchanged
    assert all(p.abs().sum() > 0 for p in new)
    assert torch.equal(layer.factor_d().detach()[:5, :5], d_before)
    assert new[0].shape == (4, 7) and new[1].shape == (5, 4)
    assert new[2].numel() == 4 * 5 + 10 and new[3].numel() == 4 * 5 + 10  # L_down + tril(L_aug)


def test_merged_linear_matches():
    layer = make_layer()
    x = torch.randn(3, 7)
    merged = layer.merged_linear()
    assert isinstance(merged, nn.Linear)
    assert torch.allclose(merged(x), layer(x), atol=1e-6)


def test_orthogonality_terms_by_hand():
    layer = TriAdaptLinear(nn.Linear(2, 3), alpha=1)
    with torch.no_grad():
        layer.tri_A[0].copy_(torch.tensor([[0.6, 0.8]]))  # unit row: ‖AAᵀ − I‖ = 0
    a_term, b_term = layer.orthogonality()
    assert float(a_term.detach()) == pytest.approx(0.0, abs=1e-7)
    assert float(b_term.detach()) == pytest.approx(1.0)  # B = 0: ‖0 − I₁‖ = 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_growth_on_cuda_stays_on_the_device():
    layer = make_layer().cuda()
    new = layer.grow(4)
    assert all(p.is_cuda for p in new) and layer._d_index.is_cuda
    x = torch.randn(3, 7)
    expected = oracle_forward(layer.cpu(), x)
    layer.cuda()
    assert torch.allclose(layer(x.cuda()).double().cpu(), expected, atol=1e-5)
