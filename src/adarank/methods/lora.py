"""LoRA (Hu et al. 2022) through peft: r = the task's reference rank, alpha and dropout from the
task, on the same encoder linears as every LoRA-family method; heads fully trained."""

from __future__ import annotations

from adarank.methods.peft_support import PeftLoRA


class LoRA(PeftLoRA):
    name = "lora"
