"""EVA, Explained Variance Adaptation (Paischer et al. 2024, arXiv 2410.07170), through peft:
``LoraConfig(init_lora_weights="eva", eva_config=EvaConfig(...))`` and
``initialize_lora_eva_weights`` on training batches before the first optimizer step.

peft runs an incremental SVD (PCA) of every adapted layer's input activations, batch after batch,
until the top components of each layer are stable (cosine similarity of consecutive estimates ≥
τ, ``method.tau``), computing ρ·r components per layer (``method.rho``). It then redistributes
the rank budget r × M: the r·M components with the largest explained-variance ratios over all
layers win, so a layer gets between 0 and ρ·r ranks; A starts at that layer's
right-singular vectors, B at 0, and alpha is scaled with the rank (``adjust_scaling_factors``,
peft's default) so that s = alpha / r stays the task's. A layer left with rank 0 has no adapter.

Readings (docs/baselines.md, EVA): the SVD reads ``method.batch_size`` training examples per
batch (the official EVA scripts' SVD batch size 16), shuffled by a generator of its own (the
training order is unchanged), last partial batch dropped, at most ``method.max_batches`` batches
(an error says what to change when τ is not reached); the non-padding tokens of each batch are
the samples (peft's language-modelling rule without a label mask: GLUE labels are not tokens);
the calls of DeBERTa's query_proj / key_proj on the relative-position embeddings (the positional
key, and the positional query when it goes through the adapter) are not data and are left out.
The initialisation happens in ``training_data`` (the only hook that sees the training set before
the optimizer exists); its wall time is ``allocation_seconds``, its outcome one growth-log event
at step 0 and the final ``rank_pattern.json`` (zeros included). A resumed run repeats it (the
same batches, the same result) before loading the checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time

import torch
from torch import nn

from adarank.methods.peft_support import PeftLoRA

log = logging.getLogger("adarank")

LABEL_KEYS = ("labels", "start_positions", "end_positions")


class EvaNotConverged(RuntimeError):
    """The incremental SVD did not reach τ within ``method.max_batches`` batches."""


class EvaBatches:
    """The batches EVA's SVD reads (see the module docstring); raises EvaNotConverged after
    ``limit`` of them. ``len`` is the limit (peft only checks that it is not 0)."""

    def __init__(self, dataset, collate, batch_size: int, seed: int, limit: int):
        def without_labels(features):
            return {k: v for k, v in collate(features).items() if k not in LABEL_KEYS}

        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=without_labels,
            generator=torch.Generator().manual_seed(seed),
        )
        self.limit, self.drawn = limit, 0

    def __len__(self) -> int:
        return self.limit

    def __iter__(self):
        while True:
            for batch in self.loader:
                if self.drawn >= self.limit:
                    raise EvaNotConverged(
                        f"EVA's SVD did not converge (tau) within method.max_batches={self.limit} batches; "
                        "raise method.max_batches or lower method.tau"
                    )
                self.drawn += 1
                yield batch


def token_mask(model_input, peft_config) -> torch.Tensor:
    """The samples of a batch: its non-padding tokens (batch × length, bool)."""
    return model_input["attention_mask"].bool()


def content_tokens(layer_input, mask: torch.Tensor, layer_name: str) -> torch.Tensor:
    """A layer call's SVD samples: the activations at the batch's tokens; a call on anything else
    (DeBERTa's relative-position embeddings, leading dimension 1) gives none."""
    x = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
    if tuple(x.shape[:2]) != tuple(mask.shape):
        return x.new_zeros(0, x.shape[-1])
    return x[mask]


class EVA(PeftLoRA):
    name = "eva"
    defaults = {"rho": 2.0, "tau": 0.99, "batch_size": 16, "max_batches": 1000, "whiten": False,
                "adjust_scaling_factors": True}

    @classmethod
    def check_options(cls, method_cfg, task_cfg) -> None:
        def number(key):
            value = cls.option_of(method_cfg, key)
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        if number("rho") is None or not number("rho") >= 1:
            raise ValueError(f"method.rho must be a number >= 1 (1 = no redistribution), not {cls.option_of(method_cfg, 'rho')!r}")
        if number("tau") is None or not 0 <= number("tau") <= 1:
            raise ValueError(f"method.tau must be a number in [0, 1], not {cls.option_of(method_cfg, 'tau')!r}")
        for key, low in (("batch_size", 2), ("max_batches", 1)):
            value = cls.option_of(method_cfg, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"method.{key} must be an integer >= {low}, not {value!r}")
        for key in ("whiten", "adjust_scaling_factors"):
            if not isinstance(cls.option_of(method_cfg, key), bool):
                raise ValueError(f"method.{key} must be true or false")

    @classmethod
    def check_data(cls, method_cfg, task_cfg, total_steps: int, num_examples: int) -> None:
        batch = int(cls.option_of(method_cfg, "batch_size"))
        if num_examples < batch:
            raise ValueError(f"EVA's SVD batches need method.batch_size={batch} training examples, the run has {num_examples}")

    def __init__(self, cfg, task_cfg, threshold_cfg, model_cfg):
        super().__init__(cfg, task_cfg, threshold_cfg, model_cfg)
        self.model: nn.Module | None = None

    def lora_options(self) -> dict:
        from peft import EvaConfig

        eva = EvaConfig(rho=float(self.option("rho")), tau=float(self.option("tau")), use_label_mask=False,
                        whiten=bool(self.option("whiten")), adjust_scaling_factors=bool(self.option("adjust_scaling_factors")))
        return {"init_lora_weights": "eva", "eva_config": eva}

    def prepare(self, model: nn.Module) -> nn.Module:
        self.model = super().prepare(model)
        return self.model

    def training_data(self, dataset, collate, seed: int):
        """EVA's initialisation on training batches (before the optimizer is built)."""
        from peft import initialize_lora_eva_weights

        start = time.perf_counter()
        batches = EvaBatches(dataset, collate, int(self.option("batch_size")), seed, int(self.option("max_batches")))
        with contextlib.redirect_stdout(io.StringIO()):  # peft prints a line per skipped (positional) call
            initialize_lora_eva_weights(self.model, batches, prepare_model_inputs_fn=token_mask,
                                        prepare_layer_inputs_fn=content_tokens, show_progress_bar=False)
        self.allocation_seconds += time.perf_counter() - start
        self._log_allocation(batches.drawn)
        return dataset

    def _log_allocation(self, batches: int) -> None:
        r = int(self.task.reference_rank)
        pattern = self.rank_pattern(self.model)
        self.growth_log.append({
            "step": 0,
            "k": sum(max(0, r - rank) for rank in pattern.values()),  # ranks moved to other layers
            "total_rank": int(sum(pattern.values())),
            "budget": r * len(pattern),
            "modules": sorted(name for name, rank in pattern.items() if rank != r),
            "batches": batches,
        })
        log.info("EVA: %d SVD batches, ranks %d..%d over %d modules (total %d)", batches, min(pattern.values()),
                 max(pattern.values()), len(pattern), sum(pattern.values()))

    def rank_pattern(self, model: nn.Module) -> dict[str, int]:
        """Every adapted module's rank, 0 for those EVA left without an adapter."""
        return {**dict.fromkeys(self.targets, 0), **super().rank_pattern(model)}
