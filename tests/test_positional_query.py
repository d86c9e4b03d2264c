"""model.positional_query_adapter: DeBERTa's positional query through the adapter or the frozen
weight only (the reference GLUE codes), for every adapter method, against a forward written from
the disentangled-attention definition."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from omegaconf import OmegaConf

from adarank.checks import ConfigError, check_static
from adarank.methods import method_class
from adarank.models import (
    apply_positional_query_option,
    load_model,
    positional_query_adapter,
    set_positional_query_adapter,
)
from tests.conftest import CONF_DIR, compose

LAYERS = 2
METHODS = [("lora", "none"), ("adalora", "none"), ("increlora", "fixed"), ("triadapt", "linear"), ("dylora", "none"), ("alora", "none"),
           ("dora", "none"), ("rslora", "none"), ("pissa", "none"), ("loraplus", "none"), ("eva", "none"), ("sora", "none")]


def attention_modules(model):
    from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention

    return [m for m in model.modules() if isinstance(m, DisentangledSelfAttention)]


def build(method: str, threshold: str):
    """The tiny DeBERTa (float64) with ``method``'s adapters, all of them far from zero; plus the
    frozen query weights (cloned before any adapter existed)."""
    cfg = compose([f"method={method}", f"threshold={threshold}", "model=tiny"])
    torch.manual_seed(0)
    model = load_model(cfg.model, "sequence_classification", 2, 0.0)
    frozen = [(a.query_proj.weight.detach().clone(), a.query_proj.bias.detach().clone()) for a in attention_modules(model)]
    threshold_cfg = OmegaConf.create({**OmegaConf.to_container(cfg.threshold), "name": threshold})
    model = method_class(method)(cfg.method, cfg.task, threshold_cfg, cfg.model).prepare(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    # float64, so that the comparisons below see the routing, not float32 rounding
    return model.double().eval(), [(w.double(), b.double()) for w, b in frozen]


def batch():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1000, 2000, (2, 12), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def reference_bias(attn, pos_query_weight=None):
    """Content-to-position plus position-to-content scores from their definition (He et al.,
    DeBERTa): c2p[i, j] = q_i · k^r[δ(i, j)], p2c[i, j] = k_j · q^r[δ(j, i)] with the bucketed
    relative distance δ shifted into [0, 2·span) and clamped, both / sqrt(d · scale_factor).
    The positional key k^r = key_proj(rel) (adapter included); the positional query
    q^r = rel · W0ᵀ + b0 with the given frozen weights, or query_proj(rel) when none are given."""

    def bias(self, query_layer, key_layer, relative_pos, rel_embeddings, scale_factor):
        heads, span = self.num_attention_heads, self.pos_ebd_size
        rel = rel_embeddings[: 2 * span]
        if pos_query_weight is None:
            pos_q = self.query_proj(rel)
        else:
            pos_q = torch.nn.functional.linear(rel, *pos_query_weight)
        pos_k = self.key_proj(rel)
        pos_q, pos_k = (x.view(2 * span, heads, -1).transpose(0, 1) for x in (pos_q, pos_k))  # (H, 2span, d)
        bh, n, d = query_layer.shape
        q, k = (x.view(bh // heads, heads, n, d) for x in (query_layer, key_layer))
        delta = relative_pos.reshape(n, n).long()
        c2p_index = torch.clamp(delta + span, 0, 2 * span - 1)
        p2c_index = torch.clamp(-delta.t() + span, 0, 2 * span - 1)
        c2p = torch.einsum("bhid,hijd->bhij", q, pos_k[:, c2p_index])
        p2c = torch.einsum("bhjd,hijd->bhij", k, pos_q[:, p2c_index])
        scale = torch.tensor(float(d * scale_factor), dtype=torch.float32).sqrt()  # float32, as transformers
        return (c2p / scale.to(c2p.dtype) + p2c / scale.to(p2c.dtype)).reshape(bh, n, n)

    return bias


def with_reference_attention(model, frozen=None):
    twin = copy.deepcopy(model)
    set_positional_query_adapter(twin, True)  # transformers' own class, then its bias replaced
    for i, attn in enumerate(attention_modules(twin)):
        attn.disentangled_attention_bias = types.MethodType(reference_bias(attn, frozen and frozen[i]), attn)
    return twin


def count_calls(model):
    counts = {"query_proj": 0, "key_proj": 0}
    for name, module in model.named_modules():
        kind = name.rsplit(".", 1)[-1]
        if kind in counts and not isinstance(module, torch.nn.Linear):  # the adapted wrapper
            module.register_forward_hook(lambda *_, kind=kind: counts.__setitem__(kind, counts[kind] + 1))
    return counts


@pytest.mark.parametrize("method,threshold", METHODS)
def test_adapter_applications_and_logits_match_the_reference_definition(method, threshold):
    model, frozen = build(method, threshold)
    inputs = batch()
    with torch.no_grad():
        assert set_positional_query_adapter(model, True) == LAYERS
        through = model(**inputs).logits
        # the test's definition reproduces transformers' attention when the adapter is used
        torch.testing.assert_close(with_reference_attention(model)(**inputs).logits, through, rtol=0, atol=1e-10)

        assert set_positional_query_adapter(model, False) == LAYERS
        reference = with_reference_attention(model, frozen)(**inputs).logits
        counts = count_calls(model)
        content_only = model(**inputs).logits
    # query adapter once per layer (content query), key adapter twice (content and positional key)
    assert counts == {"query_proj": LAYERS, "key_proj": 2 * LAYERS}
    torch.testing.assert_close(content_only, reference, rtol=0, atol=1e-10)
    assert (content_only - through).abs().max() > 1e-3  # the setting matters with these adapters

    set_positional_query_adapter(model, True)  # and it can be switched back
    counts = count_calls(model)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, through, rtol=0, atol=0)
    assert counts == {"query_proj": 2 * LAYERS, "key_proj": 2 * LAYERS}


def test_gradients_reach_the_query_adapter_through_the_content_query_only():
    model, _ = build("lora", "none")
    set_positional_query_adapter(model, False)
    model.train()
    model(**batch()).logits.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "query_proj.lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for n, p in model.named_parameters() if "query_proj.base_layer" in n)


def test_null_reads_as_the_reference_setting_per_task_kind():
    glue, squad = compose(["task=rte"]), compose(["task=squad_v2"])
    assert glue.model.positional_query_adapter is None
    assert positional_query_adapter(glue.model, glue.task.kind) is False
    assert positional_query_adapter(squad.model, squad.task.kind) is True
    forced = compose(["task=rte", "model.positional_query_adapter=true"])
    assert positional_query_adapter(forced.model, forced.task.kind) is True


def test_an_explicit_setting_needs_a_deberta_model():
    with pytest.raises(ConfigError, match="DeBERTa"):
        check_static(compose(["model=minilm", "model.positional_query_adapter=false"]))
    with pytest.raises(ConfigError, match="true or false"):
        check_static(compose(["model.positional_query_adapter=sometimes"]))
    bert_like = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert apply_positional_query_option(bert_like, OmegaConf.create({"positional_query_adapter": None}), "glue") is False
    with pytest.raises(ValueError, match="share_att_key"):
        apply_positional_query_option(bert_like, OmegaConf.create({"positional_query_adapter": False}), "glue")


def test_every_paper_sweep_states_the_reference_setting():
    from adarank.analysis.sweeps import SWEEPS
    from adarank.models import REFERENCE_POSITIONAL_QUERY_ADAPTER

    paper = [name for name in SWEEPS if name.startswith(("table", "fig"))]
    assert len(paper) == 9  # the eight of the paper and table1_extended
    for name in paper:
        raw = compose([f"+sweep={name}"])
        assert raw.train.optimizer == "adamw_legacy", name
        params = OmegaConf.load(CONF_DIR / "sweep" / f"{name}.yaml").hydra.sweeper.params
        kind = "squad_v2" if params.get("task") == "squad_v2" else "glue"
        assert raw.model.positional_query_adapter is REFERENCE_POSITIONAL_QUERY_ADAPTER[kind], name


@pytest.mark.parametrize("through_adapter", [False, True])
def test_increlora_scores_keep_the_content_calls_partial_gradient(through_adapter):
    # DeBERTa calls key_proj (and, with the adapter on the positional query, query_proj) twice per
    # layer; each call's backward hook overwrites the score, and the content call's runs last, as
    # in the official code's per-call hook on loraW (docs/baselines.md C3)
    model, _ = build("increlora", "fixed")
    model = model.float().train()
    set_positional_query_adapter(model, through_adapter)
    layers = {n: m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in ("query_proj", "key_proj")}
    per_call = {name: [] for name in layers}
    for name, layer in layers.items():
        make = layer._make_score_hook

        def recording(xd, layer=layer, make=make, calls=per_call[name]):
            index = len(calls)
            calls.append(None)
            hook = make(xd)

            def record(grad):
                hook(grad)
                calls[index] = layer.score.clone()

            return record

        layer._make_score_hook = recording
    model(**batch(), labels=torch.tensor([0, 1])).loss.backward()
    for name, layer in layers.items():
        twice = name.endswith("key_proj") or through_adapter
        assert len(per_call[name]) == (2 if twice else 1), name
        assert torch.equal(layer.score, per_call[name][0]), name  # call 0 = the content call
        if twice:
            assert not torch.equal(per_call[name][0], per_call[name][1]), name
