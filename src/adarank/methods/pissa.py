"""PiSSA (Meng et al., NeurIPS 2024) through peft: ``LoraConfig(init_lora_weights="pissa")``.

With W = U S Vᵀ (the frozen weight, out × in) and s = alpha / r, peft's ``pissa_init`` starts the
adapter at the r principal singular triplets and freezes the rest:

    A0 = diag(√(S_r / s)) V_rᵀ,   B0 = U_r diag(√(S_r / s)),   so  s·B0 A0 = U_r S_r V_rᵀ,
    W_res = W − s·B0 A0   (the new frozen base weight),

so the model starts exactly at the pretrained function. ``method.svd_niter``: null = the exact
SVD (``torch.linalg.svd``), N = peft's fast ``pissa_niter_N`` (``torch.svd_lowrank`` with N
subspace iterations; draws from torch's global generator, so it is seeded like the rest of the run).
The wall time of this initialisation is reported as ``allocation_seconds``.

What depends on the changed base weight (docs/baselines.md, PiSSA):

* checkpoints: W_res is re-derived, not saved: a resumed run rebuilds the backbone from its
  config and seed and runs the same initialisation (bit-identical on the same machine); a
  float64 checksum of W_res in the method state shows in the log when it is not;
* DeBERTa's positional query with ``model.positional_query_adapter=false``: "the frozen weight"
  is the pretrained W (= W_res + s·B0 A0), kept beside each adapted ``query_proj`` as
  ``pretrained_linear`` (models.frozen_linear), not the residual;
* export: ``adarank.export`` writes the update relative to the pretrained W as a plain LoRA of
  rank 2r, ΔW = s·B A − s·B0 A0 = [s·B | −s·B0] [A ; A0] (peft's ``subtract_mutated_init``;
  peft's own conversion in ``save_pretrained`` drops the trained heads, so we build it from the
  factors); the run's ``adapter/`` folder is peft's PiSSA adapter, which peft loads onto the
  pretrained model by re-running the same initialisation.
"""

from __future__ import annotations

import copy
import logging
import time

import torch
from torch import nn

from adarank.methods.peft_support import ADAPTER, PeftLoRA, lora_layers
from adarank.models import positional_query_adapter

log = logging.getLogger("adarank")

POSITIONAL_QUERY_MODULE = "attention.self.query_proj"


def residual_checksum(model: nn.Module) -> float:
    """Float64 sum of every adapted layer's frozen base weight (W_res)."""
    return float(sum(layer.get_base_layer().weight.double().sum() for layer in lora_layers(model).values()))


class PiSSA(PeftLoRA):
    name = "pissa"
    defaults = {"svd_niter": None}

    @classmethod
    def check_options(cls, method_cfg, task_cfg) -> None:
        niter = cls.option_of(method_cfg, "svd_niter")
        if niter is not None and (not isinstance(niter, int) or isinstance(niter, bool) or niter < 1):
            raise ValueError(f"method.svd_niter must be null (exact SVD) or an integer >= 1, not {niter!r}")

    def __init__(self, cfg, task_cfg, threshold_cfg, model_cfg):
        super().__init__(cfg, task_cfg, threshold_cfg, model_cfg)
        self.checksum: float | None = None

    def lora_options(self) -> dict:
        niter = self.option("svd_niter")
        return {"init_lora_weights": "pissa" if niter is None else f"pissa_niter_{int(niter)}"}

    def prepare(self, model: nn.Module) -> nn.Module:
        frozen_query = self.model_cfg.get("family") == "deberta" and not positional_query_adapter(self.model_cfg, self.task.kind)
        pretrained = {}
        if frozen_query:  # the positional query's "frozen weight" is W, not W_res
            for name, module in model.named_modules():
                if name.endswith(POSITIONAL_QUERY_MODULE) and isinstance(module, nn.Linear):
                    pretrained[name] = copy.deepcopy(module).requires_grad_(False)
        start = time.perf_counter()
        model = super().prepare(model)  # the SVD of every adapted weight: PiSSA's one-off cost
        self.allocation_seconds += time.perf_counter() - start
        layers = lora_layers(model)
        for name, linear in pretrained.items():
            if name in layers:
                layers[name].pretrained_linear = linear
        self.checksum = residual_checksum(model)
        return model

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "residual_checksum": self.checksum}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("residual_checksum") != self.checksum:
            log.warning(
                "PiSSA: the residual weights re-derived on resume differ from the interrupted run's "
                "(checksum %r, then %r): another machine or library version; the run continues from them",
                self.checksum, state.get("residual_checksum"),
            )

    # -- export ----------------------------------------------------------------------------
    @staticmethod
    def load_adapter(model: nn.Module, folder: str) -> nn.Module:
        """A run's saved adapter on a fresh pretrained ``model``: peft's PiSSA initialisation
        (W_res, and the initial factors kept on each layer as ``pissa_initial = (A0, B0)``), then
        the trained tensors."""
        import os

        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
        from safetensors.torch import load_file

        peft_model = get_peft_model(model, LoraConfig.from_pretrained(folder))
        for layer in lora_layers(peft_model).values():
            layer.pissa_initial = (layer.lora_A[ADAPTER].weight.detach().clone(),
                                   layer.lora_B[ADAPTER].weight.detach().clone())
        result = set_peft_model_state_dict(peft_model, load_file(os.path.join(folder, "adapter_model.safetensors")))
        if result.unexpected_keys:
            raise RuntimeError(f"PiSSA adapter tensors the model lacks: {result.unexpected_keys[:5]}")
        return peft_model


def conversion_factors(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """(A', B') with B'A' = s·B A − s·B0 A0: the PiSSA update relative to the pretrained weight
    as plain LoRA factors of rank 2r (scaling folded into B')."""
    a0, b0 = layer.pissa_initial
    s = layer.scaling[ADAPTER]
    a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
    return torch.cat([a, a0], 0).detach().clone(), torch.cat([b * s, -b0 * s], 1).detach().clone()
