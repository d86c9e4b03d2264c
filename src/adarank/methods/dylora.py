"""DyLoRA (Valipour et al., EACL 2023): one adapter trained for every rank 1..r_max at once.

Each adapted linear keeps LoRA factors A (r_max x in, Kaiming-uniform) and B (out x r_max, zero).
At every optimizer step one rank b ~ U{1..r_max} is drawn for the whole network and the step
trains the truncated adapter (docs/dylora.md, readings D1-D8):

    h = W0 x + bias + α/b · B[:, :b] A[:b] dropout(x)

By default (``update: last``, the official ``frozen=True``) the first b-1 rows of A and columns of
B enter the forward pass detached, so the gradient reaches only row b of A and column b of B;
``update: all`` lets it reach all b. At evaluation the adapter runs at ``eval_rank`` (r_max unless
set): periodic evaluations, best and final are at r_max, and after training one whole-dev pass
per rank 1..r_max is written to metrics.json as ``by_rank``.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from adarank.methods import lowrank
from adarank.methods.base import Method, StepContext
from adarank.models import adapted_module_names, freeze_all_but_heads
from adarank.training.distributed import refuse_multiprocess

log = logging.getLogger(__name__)

UPDATES = ("last", "all")
DEFAULTS = {"max_rank": None, "update": "last", "evaluate_every_rank": True}


class DyLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a nested (truncatable) low-rank update; see the module docstring."""

    def __init__(self, base: nn.Linear, max_rank: int, alpha: float, dropout: float = 0.0, update: str = "last"):
        super().__init__()
        if max_rank < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, not {update!r}")
        self.base = lowrank.freeze_base(base)
        self.max_rank = int(max_rank)
        self.lora_alpha = float(alpha)
        self.update = update
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        weight = base.weight
        self.lora_A = nn.Parameter(lowrank.lora_init_a(weight.new_empty(max_rank, base.in_features)))
        self.lora_B = nn.Parameter(weight.new_zeros(base.out_features, max_rank))
        #: b of the current training step (set by the method before each step's forward pass)
        self.train_rank = self.max_rank
        #: the rank evaluation runs at
        self.eval_rank = self.max_rank

    @property
    def rank(self) -> int:
        """The adapter's rank r_max (every b <= r_max is a prefix of it)."""
        return self.max_rank

    @property
    def active_rank(self) -> int:
        """The rank b the next forward pass uses (training or evaluation)."""
        return self.train_rank if self.training else self.eval_rank

    def factors(self, b: int, last_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(A[:b], B[:, :b]); with ``last_only`` ranks 1..b-1 are detached (official frozen=True)."""
        a, bm = self.lora_A[:b], self.lora_B[:, :b]
        if last_only and b > 1:
            a = torch.cat([a[: b - 1].detach(), a[b - 1 :]], 0)
            bm = torch.cat([bm[:, : b - 1].detach(), bm[:, b - 1 :]], 1)
        return a, bm

    def delta_weight(self, b: int | None = None) -> torch.Tensor:
        """ΔW at rank b (default: the evaluation rank) = α/b · B[:, :b] A[:b]."""
        b = self.eval_rank if b is None else b
        return self.lora_B[:, :b] @ self.lora_A[:b] * (self.lora_alpha / b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        b = self.active_rank
        a, bm = self.factors(b, last_only=self.training and self.update == "last")
        xd = self.lora_dropout(x).to(a.dtype)
        update = (xd @ a.t()) @ bm.t() * (self.lora_alpha / b)
        return result + update.to(result.dtype)


def dylora_layers(model: nn.Module) -> dict[str, DyLoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, DyLoRALinear)}


def inject(model: nn.Module, names: list[str], max_rank: int, alpha: float, dropout: float, update: str) -> dict[str, DyLoRALinear]:
    layers = {}
    for name in names:
        layer = DyLoRALinear(model.get_submodule(name), max_rank, alpha, dropout, update)
        lowrank.replace_module(model, name, layer)
        layers[name] = layer
    return layers


def set_rank(layers, train_rank: int | None = None, eval_rank: int | None = None) -> None:
    for layer in layers:
        if train_rank is not None:
            layer.train_rank = int(train_rank)
        if eval_rank is not None:
            layer.eval_rank = int(eval_rank)


def _opt(cfg, key):
    return lowrank.option(cfg, DEFAULTS, key)


class DyLoRA(Method):
    name = "dylora"

    @classmethod
    def check_config(cls, method_cfg, task_cfg, threshold, model_cfg, total_steps) -> None:
        lowrank.check_common("dylora", method_cfg, DEFAULTS, task_cfg)
        lowrank.max_rank(method_cfg, DEFAULTS, task_cfg)
        if _opt(method_cfg, "update") not in UPDATES:
            raise ValueError(f"method.update must be one of {UPDATES}, not {_opt(method_cfg, 'update')!r}")
        if not isinstance(_opt(method_cfg, "evaluate_every_rank"), bool):
            raise ValueError("method.evaluate_every_rank must be true or false")

    def __init__(self, cfg, task_cfg, threshold_cfg, model_cfg):
        super().__init__(cfg, task_cfg, threshold_cfg, model_cfg)
        max_rank = _opt(cfg, "max_rank")
        self.max_rank = int(task_cfg.reference_rank) if max_rank is None else int(max_rank)
        self.update = str(_opt(cfg, "update"))
        self.evaluate_every_rank = bool(_opt(cfg, "evaluate_every_rank"))
        self.layers: dict[str, DyLoRALinear] = {}
        self.current_rank = self.max_rank
        #: how many optimizer steps trained at each rank b (index b-1)
        self.rank_counts = [0] * self.max_rank

    # -- lifecycle -------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        # every process would have to draw the same b at every step; not implemented
        refuse_multiprocess(self.name)
        freeze_all_but_heads(model, self.model_cfg.head_modules)
        names = adapted_module_names(model, self.model_cfg.target_regex)
        self.layers = inject(
            model, names, self.max_rank, float(self.task.alpha), float(self.task.lora_dropout or 0.0), self.update
        )
        return model

    def set_total_steps(self, total_steps: int) -> None:
        self._draw_rank()  # b of the first step

    def _draw_rank(self) -> None:
        """b ~ U{1..r_max} from torch's global generator (the official per-step callback draws
        ``torch.randint(0, r_max)`` = b - 1)."""
        self.current_rank = int(torch.randint(0, self.max_rank, (1,)).item()) + 1
        set_rank(self.layers.values(), train_rank=self.current_rank)

    def before_optimizer_step(self, ctx: StepContext) -> None:
        self.rank_counts[self.current_rank - 1] += 1

    def after_optimizer_step(self, ctx: StepContext) -> None:
        self._draw_rank()  # b of the next step

    def final_evaluations(self, model: nn.Module, evaluate) -> dict:
        """One whole-dev evaluation at every rank 1..r_max: ``{"by_rank": {"1": metrics, ...}}``."""
        if not self.evaluate_every_rank:
            return {}
        layers = list(self.layers.values())
        by_rank = {}
        primary = self.task.get("primary_metric")
        log.info("DyLoRA: evaluating the adapter at every rank 1..%d on the whole dev set", self.max_rank)
        try:
            for b in range(1, self.max_rank + 1):
                set_rank(layers, eval_rank=b)
                start = time.perf_counter()
                by_rank[str(b)] = evaluate()
                score = by_rank[str(b)].get(primary)
                log.info("DyLoRA rank %d/%d: %s %s (%.1f s)", b, self.max_rank, primary,
                         "-" if score is None else f"{score:.2f}", time.perf_counter() - start)
        finally:
            set_rank(layers, eval_rank=self.max_rank)
        return {"by_rank": by_rank}

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "current_rank": self.current_rank, "rank_counts": list(self.rank_counts)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.rank_counts = [int(c) for c in state["rank_counts"]]
        self.current_rank = int(state["current_rank"])
        set_rank(self.layers.values(), train_rank=self.current_rank)

    # -- reporting -------------------------------------------------------------------------
    def rank_pattern(self, model: nn.Module) -> dict[str, int]:
        return {name: layer.rank for name, layer in (self.layers or dylora_layers(model)).items()}

    def summary(self, model: nn.Module) -> dict:
        return {**super().summary(model), "max_rank": self.max_rank, "update": self.update,
                "sampled_rank_counts": list(self.rank_counts)}

    # -- adapters --------------------------------------------------------------------------
    def save_adapter(self, model: nn.Module, folder: str) -> None:
        lowrank.save_layers(folder, self.name, self.layers or dylora_layers(model), model,
                            max_rank=self.max_rank, update=self.update)

    @staticmethod
    def load_adapter(model: nn.Module, folder: str, rank: int | None = None) -> nn.Module:
        """Inject the saved DyLoRA layers into a fresh ``model``, load the trained tensors and set
        the evaluation rank (default r_max): one saved adapter serves every rank."""
        config = lowrank.read_config(folder)
        layers = inject(model, config["modules"], config["max_rank"], config["alpha"], config["dropout"], config["update"])
        lowrank.load_tensors_into(model, folder)
        set_rank(layers.values(), eval_rank=rank or config["max_rank"])
        return model
