"""DoRA (Liu et al., ICML 2024) through peft: ``LoraConfig(use_dora=True)``.

The adapted weight is split into a magnitude and a direction (DoRA Eq. 5):

    W' = m ⊙ (W0 + s·B A) / ‖W0 + s·B A‖_c,    s = alpha / r

‖·‖_c is the norm of each output row (peft's ``DoraLinearLayer.get_weight_norm``: the norm over
the input dimension of the (out × in) weight), m a trainable vector initialised to ‖W0‖_c (so W'
= W0 at the start) and the norm is treated as a constant in the backward pass (DoRA §4.3, "we
detach ‖V + ΔV‖_c"; peft does the same). r, alpha, dropout, targets and heads as LoRA
(docs/baselines.md, DoRA).
"""

from __future__ import annotations

from adarank.methods.peft_support import PeftLoRA


class DoRA(PeftLoRA):
    name = "dora"

    def lora_options(self) -> dict:
        return {"use_dora": True}
