"""Registry of fine-tuning methods: config name -> class (imported lazily, so that a method's
optional dependencies are only needed when it is chosen)."""

from __future__ import annotations

import importlib

from adarank.methods.base import Method, StepContext

REGISTRY: dict[str, str] = {
    "full": "adarank.methods.simple:FullFineTuning",
    "bitfit": "adarank.methods.simple:BitFit",
    "lora": "adarank.methods.lora:LoRA",
    "adalora": "adarank.methods.adalora:AdaLoRA",
    "increlora": "adarank.methods.increlora:IncreLoRA",
    "triadapt": "adarank.methods.triadapt:TriAdaptLoRA",
    "hadapter": "adarank.methods.hadapter:HAdapter",
    "dylora": "adarank.methods.dylora:DyLoRA",
    "alora": "adarank.methods.alora:ALoRA",
    "dora": "adarank.methods.dora:DoRA",
    "rslora": "adarank.methods.rslora:RsLoRA",
    "pissa": "adarank.methods.pissa:PiSSA",
    "loraplus": "adarank.methods.loraplus:LoRAPlus",
    "eva": "adarank.methods.eva:EVA",
    "sora": "adarank.methods.sora:SoRA",
}


def method_class(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    module_name, class_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


__all__ = ["REGISTRY", "Method", "StepContext", "method_class"]
