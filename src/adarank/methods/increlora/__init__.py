"""IncreLoRA: layer (``IncreLinear``, importance, orthogonal penalty), pure allocator functions,
and the method the registry names (``adarank.methods.increlora:IncreLoRA``)."""

from adarank.methods.increlora.method import IncreLoRA

__all__ = ["IncreLoRA"]
