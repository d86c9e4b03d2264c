"""ALoRA: gated LoRA layer (``layer``), ablation scoring and reallocation (``allocator``), and the
method the registry names (``adarank.methods.alora:ALoRA``)."""

from adarank.methods.alora.method import ALoRA

__all__ = ["ALoRA"]
