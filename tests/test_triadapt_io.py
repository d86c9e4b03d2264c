"""Save -> load gives identical predictions; merge gives the same outputs (tiny random DeBERTaV2)."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from adarank.methods.triadapt import TriAdaptLinear, TriAdaptLoRA
from adarank.models import load_model

CONF = Path(__file__).resolve().parents[1] / "conf"
TASK = OmegaConf.load(CONF / "task" / "mrpc.yaml")  # lora_dropout 0.3: eval mode must switch it off


def tiny_model(seed):
    torch.manual_seed(seed)
    model_cfg = OmegaConf.load(CONF / "model" / "tiny.yaml")
    return load_model(model_cfg, "sequence_classification", 2, 0.0), model_cfg


def adapted(seed=0):
    model, model_cfg = tiny_model(seed)
    method = TriAdaptLoRA(OmegaConf.load(CONF / "method" / "triadapt.yaml"), TASK,
                          OmegaConf.create({"name": "linear"}), model_cfg)
    method.prepare(model)
    return method, model


def inputs():
    g = torch.Generator().manual_seed(7)
    return {"input_ids": torch.randint(5, 1000, (3, 11), generator=g),
            "attention_mask": torch.ones(3, 11, dtype=torch.long)}


def train_like(method, model):
    """Give every factor and the heads non-trivial values, with uneven growth across modules."""
    torch.manual_seed(3)
    for i, layer in enumerate(method.layers.values()):
        for _ in range(i % 3):
            layer.grow(4 if i % 2 else 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)


def test_prepare_on_tiny_deberta():
    method, model = adapted()
    assert len(method.layers) == 12  # 2 layers x 6 linears
    assert not any(".pooler." in n or "classifier" in n for n in method.layers)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"triadapt_blocks", "pooler", "classifier"}  # the backbone is frozen
    # one event so far: the rank-1 initial block of all 12 modules, A rows, B columns, L and U values
    (event,) = model.triadapt_blocks.events
    shapes = {name: tuple(p.shape) for name, p in event.named_parameters()}
    assert shapes == {"A32": (10, 32), "B32": (32, 10), "A64": (2, 64), "B64": (64, 2), "LU": (24,)}
    assert sum(p.numel() for p in event.parameters()) == sum(
        layer.in_features + layer.out_features + 2 for layer in method.layers.values())


def test_save_load_gives_identical_predictions(tmp_path):
    method, model = adapted(seed=0)
    train_like(method, model)
    model.eval()
    with torch.no_grad():
        expected = model(**inputs()).logits
    method.save_adapter(model, tmp_path / "adapter")
    pattern = method.rank_pattern(model)
    saved = torch.load(tmp_path / "adapter" / "adapter.pt")
    # the trained model kept its blocks in a shared store; the file uses the standalone names
    assert hasattr(model, "triadapt_blocks") and not any(k.startswith("triadapt_blocks") for k in saved)
    assert sum(".tri_A." in k for k in saved) == sum(len(layer.blocks) for layer in method.layers.values())
    assert len(set(pattern.values())) > 1  # uneven ranks make the test meaningful

    fresh, _ = tiny_model(seed=0)  # same backbone, fresh (random) heads, no adapters
    with torch.no_grad():
        assert not torch.equal(fresh.eval()(**inputs()).logits, expected)
    TriAdaptLoRA.load_adapter(fresh, tmp_path / "adapter")
    fresh.eval()
    with torch.no_grad():
        got = fresh(**inputs()).logits
    # the loaded adapter runs the per-module path, the trained model the fused one (fused.py):
    # the same values up to the rounding of x (sDA)ᵀ against (x Aᵀ)(sD)ᵀ
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    loaded = {n: m.rank for n, m in fresh.named_modules() if isinstance(m, TriAdaptLinear)}
    assert loaded == pattern


def test_load_refuses_a_mismatched_backbone(tmp_path):
    method, model = adapted()
    method.save_adapter(model, tmp_path / "a")
    other, _ = tiny_model(0)
    other.deberta.encoder.layer[0].attention.self.query_proj = torch.nn.Identity()
    with pytest.raises(TypeError):
        TriAdaptLoRA.load_adapter(other, tmp_path / "a")


def test_merge_gives_the_same_outputs():
    method, model = adapted()
    train_like(method, model)
    model.eval()
    with torch.no_grad():
        expected = model(**inputs()).logits
        merged = TriAdaptLoRA.merge(model)
        assert not any(isinstance(m, TriAdaptLinear) for m in merged.modules())
        assert not hasattr(merged, "triadapt_blocks")  # the block store goes with the layers
        got = merged(**inputs()).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
