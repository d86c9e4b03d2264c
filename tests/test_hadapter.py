"""HAdapter: placement, near-identity start, trainable set, parameter count vs the AdaLoRA-paper
budget, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from adarank.methods.hadapter import DropoutThenAdapter, HAdapter, houlsby_param_count
from adarank.models import load_model
from tests.conftest import CONF_DIR

METHOD_CFG = OmegaConf.load(CONF_DIR / "method" / "hadapter.yaml")
TINY = OmegaConf.load(CONF_DIR / "model" / "tiny.yaml")
ADALORA_PAPER_HADAPTER_PARAMS = 1.22e6  # AdaLoRA (ICLR 2023) Table 1, DeBERTaV3-base, HAdapter row




def prepared(model_cfg=TINY, method_cfg=METHOD_CFG):
    torch.manual_seed(0)
    model = load_model(model_cfg, "sequence_classification", 2, 0.0)
    method = HAdapter(method_cfg, None, None, model_cfg)
    return method, model, method.prepare(model)


def test_two_adapters_per_layer_after_the_sublayer_dropout():
    method, _, model = prepared()
    assert method.adapted == [
        "deberta.encoder.layer.0.attention.output",
        "deberta.encoder.layer.0.output",
        "deberta.encoder.layer.1.attention.output",
        "deberta.encoder.layer.1.output",
    ]
    for name in method.adapted:
        wrapper = model.get_submodule(name).dropout
        assert isinstance(wrapper, DropoutThenAdapter)
        assert wrapper.adapter.down.weight.shape == (32, 32) and wrapper.adapter.up.weight.shape == (32, 32)


def test_trainable_set_is_adapters_layer_norms_and_heads():
    method, _, model = prepared()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(".adapter." in n or ".LayerNorm." in n or n.startswith(("classifier", "pooler")) for n in trainable)
    layer_norms = [n for n in trainable if ".LayerNorm." in n]
    assert len(layer_norms) == 2 * 2 * 2  # 2 layers x (attention output, output) x (weight, bias)
    assert not any("embeddings" in n or "query_proj" in n for n in trainable)
    assert method.adapter_parameter_count(model) == houlsby_param_count(32, 2, 32)


def test_adapters_start_near_the_identity():
    torch.manual_seed(0)
    reference = load_model(TINY, "sequence_classification", 2, 0.0).eval()
    _, _, model = prepared()
    model.eval()
    ids = torch.randint(1000, 2000, (2, 9))
    with torch.no_grad():
        base = reference(input_ids=ids).logits
        adapted = model(input_ids=ids).logits
    assert not torch.equal(base, adapted)
    torch.testing.assert_close(adapted, base, atol=1e-3, rtol=0)


def test_parameter_count_on_deberta_v3_base_is_close_to_the_adalora_paper_budget():
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    config = DebertaV2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, vocab_size=128100, relative_attention=True,
                             pos_att_type=["p2c", "c2p"], position_biased_input=False, num_labels=2)
    with torch.device("meta"):
        model = DebertaV2ForSequenceClassification(config)
    method = HAdapter(METHOD_CFG, None, None, TINY)
    model = method.prepare(model)
    count = method.adapter_parameter_count(model)
    assert count == houlsby_param_count(768, 12, 32) == 1_235_712
    assert abs(count - ADALORA_PAPER_HADAPTER_PARAMS) / ADALORA_PAPER_HADAPTER_PARAMS < 0.02
    # m = 32 is the bottleneck closest to that budget
    best = min(range(1, 129), key=lambda m: abs(houlsby_param_count(768, 12, m) - ADALORA_PAPER_HADAPTER_PARAMS))
    assert best == METHOD_CFG.bottleneck == 32


def test_check_config_rejects_bad_options():
    HAdapter.check_config(METHOD_CFG, None, "none", TINY, 10)
    with pytest.raises(ValueError, match="bottleneck"):
        HAdapter.check_config(OmegaConf.merge(METHOD_CFG, {"bottleneck": 0}), None, "none", TINY, 10)
    with pytest.raises(ValueError, match="unknown option"):
        HAdapter.check_config(OmegaConf.merge(METHOD_CFG, {"rank": 8}), None, "none", TINY, 10)
    with pytest.raises(ValueError, match="does not grow ranks"):
        HAdapter.resolve_threshold("linear")


def test_end_to_end_run_writes_a_complete_results_folder(make_cfg):
    from adarank.run import run

    cfg, overrides = make_cfg(["method=hadapter", "task=sst2"])
    metrics = run(cfg, overrides)
    folder = next(Path(cfg.results.root).rglob("metrics.json")).parent
    for name in ("metrics.json", "config.yaml", "train_log.jsonl", "rank_pattern.json", "growth_log.jsonl"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "rank_pattern.json").read_text()) == {}
    assert metrics["rank"]["adapter_params"] == houlsby_param_count(32, 2, 32)
    assert metrics["threshold"] is None and metrics["method"] == "hadapter"
    assert metrics["costs"]["trainable_params_start"] == metrics["costs"]["trainable_params_end"]
