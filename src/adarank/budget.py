"""A run's trainable-parameter budget (metrics.json ``costs.trainable``): counts at the start, at the
peak and at the end of training, each split into

* ``head``: parameters of the task head modules (``model.head_modules``: classifier, pooler,
  qa_outputs), wherever a method puts them (peft's trainable copy included);
* ``adapter``: parameters the method added to the backbone (LoRA factors, adapters, grown ranks):
  every trainable parameter that did not exist before ``Method.prepare``;
* ``other``: trainable parameters of the backbone itself (full fine-tuning's weights, BitFit's
  biases).

The trainable set only changes at growth events (IncreLoRA, TriAdaptLoRA, ALoRA add parameters;
AdaLoRA's and ALoRA's masks keep parameters trainable), so the peak is taken over the start, every
evaluation and the end; for the methods here it is the end count.
"""

from __future__ import annotations

from torch import nn

from adarank.models import head_module_names

PARTS = ("adapter", "head", "other")


class TrainableBudget:
    """Counts trainable parameters of one run; ``base_ids``: ids of the backbone's parameters
    before the method prepared the model."""

    def __init__(self, base_ids=frozenset(), head_modules=()):
        self.base_ids = frozenset(base_ids)
        self.head_modules = tuple(head_modules)
        self.start: dict | None = None
        self.peak: dict | None = None

    def count(self, model: nn.Module) -> dict:
        modules = dict(model.named_modules())
        head = {id(p) for name in head_module_names(model, self.head_modules) for p in modules[name].parameters()}
        counts = dict.fromkeys(PARTS, 0)
        for param in model.parameters():
            if param.requires_grad:
                part = "head" if id(param) in head else "other" if id(param) in self.base_ids else "adapter"
                counts[part] += param.numel()
        return {**counts, "total": sum(counts.values())}

    def observe(self, model: nn.Module) -> dict:
        """Count now; the first count is the start, the largest total the peak."""
        counts = self.count(model)
        if self.start is None:
            self.start = counts
        self.keep_peak(counts)
        return counts

    def keep_peak(self, counts: dict | None) -> None:
        if counts is not None and (self.peak is None or counts["total"] > self.peak["total"]):
            self.peak = dict(counts)

    def summary(self, model: nn.Module) -> dict:
        """``{"start", "peak", "end"}``, the end counted now."""
        end = self.observe(model)
        return {"start": self.start, "peak": self.peak, "end": end}
