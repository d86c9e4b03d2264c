"""rsLoRA (Kalajdzievski 2023) through peft: ``LoraConfig(use_rslora=True)``, i.e. LoRA with the
rank-stabilised scaling factor γ_r = alpha / sqrt(r) instead of alpha / r (the paper's γ_r ∝ 1/√r,
which keeps the adapter's learning stable as r grows); everything else as LoRA (docs/baselines.md,
rsLoRA)."""

from __future__ import annotations

from adarank.methods.peft_support import PeftLoRA


class RsLoRA(PeftLoRA):
    name = "rslora"

    def lora_options(self) -> dict:
        return {"use_rslora": True}
