"""SoRA, sparse low-rank adaptation (Ding et al., EMNLP 2023). Our code, written from the paper
and the official code (TsinghuaC3I/SoRA: ``src/lora.py``, ``src/sparse_optimizer.py``,
``src/trainer.py``, ``run_glue.py``) and checked against the latter on a toy problem
(docs/baselines.md, SoRA: the same gate values and pruned ranks to 1e-6).

Every adapted linear gets LoRA factors of rank r_max with a gate g ∈ R^r_max between them (the
official ``LowRankLinear``):

    h = W0 x + b + s · B (g ⊙ (A dropout(x))),   s = alpha / r_max,
    g ~ N(0, 1), A Kaiming-uniform, B = 0 at the start (drawn in that order).

The gates are trained like the official code does (``train_sparse``):

* the loss gets the L1 term η · Σ|g| / |g| over all gates (``SparseTrainer.compute_loss``;
  η = ``method.l1_weight``, the README's ``sparse_lambda``);
* the gates are updated by an AdamW of their own (transformers' pre-5 AdamW: eps 1e-6, no weight
  decay, LR ``method.gate_lr`` = the run's LR when null, under the run's LR schedule): here one
  parameter group of the run's optimizer with those settings (``optimizer_groups``);
* after every optimizer step the proximal map P_ξ of the L1 penalty (``SparseAdamW.step``;
  ξ = ``method.xi``, the README's ``sparse_lambda_2``): :func:`proximal_step`.

A rank is pruned while its gate is exactly 0: a module's rank is its number of non-zero gates
(``rank_pattern.json``; ``adarank.export`` writes the kept ranks as a plain LoRA with a rank
pattern). The pattern is checked at 100 evenly spaced steps (every ceil(T/100)) and at the last
one; each change is a growth-log event. ``method.schedule`` runs the paper's sparsifying
scheduler after training (:meth:`SoRA.final_evaluations`).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from adarank.methods import lowrank
from adarank.methods.base import Method, StepContext
from adarank.models import adapted_module_names, freeze_all_but_heads
from adarank.validation import is_finite_number

PROXIMAL = ("official", "soft")
SCHEDULES = ("linear", "log_linear", "exp_linear")
#: transformers' pre-5 AdamW default eps, which the official gate optimizer (SparseAdamW) keeps
GATE_EPS = 1e-6
#: the rank pattern is checked this many times over a run (and at its last step)
RANK_CHECKS = 100
DEFAULTS = {
    "max_rank": None, "l1_weight": 10.0, "xi": 3.0e-4, "gate_lr": None, "proximal": "official",
    "schedule": None, "schedule_max_xi": None, "schedule_stages": None, "stage_epochs": 15,
}


def proximal_step(gate: torch.Tensor, xi: float, rule: str = "official") -> torch.Tensor:
    """The proximal map of ξ·|g| applied in place after the gates' AdamW step.

    ``soft``: the soft-thresholding T_ξ(g) = sign(g)·max(|g| − ξ, 0), the proximal operator of the
    paper's L1 penalty. ``official``: the three in-place steps of ``SparseAdamW.step`` in their
    order (g − ξ where g > ξ; g + ξ where g < −ξ; then 0 where |g| < ξ, measured after the first
    two), which equals T_ξ except for ξ < |g| < 2ξ, where it gives 0 instead of sign(g)(|g| − ξ),
    and at |g| = ξ exactly, which it keeps (reading S3)."""
    if xi <= 0:
        return gate
    if rule == "soft":
        return gate.copy_(torch.sign(gate) * torch.clamp(gate.abs() - xi, min=0))
    gate.sub_(xi * (gate > xi))
    gate.add_(xi * (gate < -xi))
    return gate.masked_fill_(gate.abs() < xi, 0.0)


def xi_schedule(xi: float, max_xi: float, stages: int, kind: str) -> list[float]:
    """The sparsifying scheduler's ξ values after the training one (official
    ``SparseAdamW._build_lambda_list``, without its first entry, which is ξ itself)."""
    if kind == "linear":
        values = np.linspace(xi, max_xi, stages)
    elif kind == "log_linear":
        values = np.log(np.linspace(np.exp(xi), np.exp(max_xi), stages))
    else:
        values = np.exp(np.linspace(np.log(xi), np.log(max_xi), stages))
    return [float(v) for v in values[1:]]


class SoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus the gated low-rank update of the module docstring."""

    def __init__(self, base: nn.Linear, max_rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = lowrank.freeze_base(base)
        self.max_rank = int(max_rank)
        self.lora_alpha = float(alpha)
        self.scaling = self.lora_alpha / self.max_rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        weight = base.weight
        self.lora_gate = nn.Parameter(torch.randn(max_rank, dtype=weight.dtype, device=weight.device))
        self.lora_A = nn.Parameter(lowrank.lora_init_a(weight.new_empty(max_rank, base.in_features)))
        self.lora_B = nn.Parameter(weight.new_zeros(base.out_features, max_rank))

    @property
    def rank(self) -> int:
        """Ranks in use: the non-zero gates."""
        return int(torch.count_nonzero(self.lora_gate))

    def kept(self) -> torch.Tensor:
        return self.lora_gate != 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        xd = self.lora_dropout(x).to(self.lora_A.dtype)
        update = ((xd @ self.lora_A.t()) * self.lora_gate) @ self.lora_B.t() * self.scaling
        return result + update.to(result.dtype)


def sora_layers(model: nn.Module) -> dict[str, SoRALinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, SoRALinear)}


def inject(model: nn.Module, names: list[str], max_rank: int, alpha: float, dropout: float) -> dict[str, SoRALinear]:
    layers = {}
    for name in names:
        layers[name] = SoRALinear(model.get_submodule(name), max_rank, alpha, dropout)
        lowrank.replace_module(model, name, layers[name])
    return layers


def _opt(cfg, key):
    return lowrank.option(cfg, DEFAULTS, key)


class SoRA(Method):
    name = "sora"

    @classmethod
    def check_config(cls, method_cfg, task_cfg, threshold, model_cfg, total_steps) -> None:
        lowrank.check_common("sora", method_cfg, DEFAULTS, task_cfg)
        lowrank.max_rank(method_cfg, DEFAULTS, task_cfg)
        for key in ("l1_weight", "xi"):
            if not is_finite_number(_opt(method_cfg, key)) or _opt(method_cfg, key) < 0:
                raise ValueError(f"method.{key} must be a number >= 0, not {_opt(method_cfg, key)!r}")
        gate_lr = _opt(method_cfg, "gate_lr")
        if gate_lr is not None and (not is_finite_number(gate_lr) or gate_lr <= 0):
            raise ValueError(f"method.gate_lr must be a number > 0 (or null = the run's LR), not {gate_lr!r}")
        if _opt(method_cfg, "proximal") not in PROXIMAL:
            raise ValueError(f"method.proximal must be one of {PROXIMAL}, not {_opt(method_cfg, 'proximal')!r}")
        cls._check_schedule(method_cfg)

    @classmethod
    def _check_schedule(cls, method_cfg) -> None:
        kind = _opt(method_cfg, "schedule")
        stage_keys = ("schedule_max_xi", "schedule_stages")
        if kind is None:
            given = [key for key in stage_keys if _opt(method_cfg, key) is not None]
            if given:
                raise ValueError(f"method.{given[0]} applies only with method.schedule ({' | '.join(SCHEDULES)})")
            return
        if kind not in SCHEDULES:
            raise ValueError(f"method.schedule must be null or one of {SCHEDULES}, not {kind!r}")
        max_xi, stages, epochs = (_opt(method_cfg, k) for k in (*stage_keys, "stage_epochs"))
        if not is_finite_number(max_xi) or max_xi <= 0:
            raise ValueError(f"method.schedule_max_xi must be a number > 0, not {max_xi!r}")
        if not isinstance(stages, int) or isinstance(stages, bool) or stages < 2:
            raise ValueError(f"method.schedule_stages (the official lambda_num) must be an integer >= 2, not {stages!r}")
        if not is_finite_number(epochs) or epochs <= 0:
            raise ValueError(f"method.stage_epochs must be a number > 0, not {epochs!r}")
        if kind == "exp_linear" and not _opt(method_cfg, "xi") > 0:
            raise ValueError("method.schedule=exp_linear interpolates log ξ: method.xi must be > 0")

    def __init__(self, cfg, task_cfg, threshold_cfg, model_cfg):
        super().__init__(cfg, task_cfg, threshold_cfg, model_cfg)
        self.max_rank = int(lowrank.max_rank(cfg, DEFAULTS, task_cfg))
        self.l1_weight = float(_opt(cfg, "l1_weight"))
        self.xi = float(_opt(cfg, "xi"))
        self.rule = str(_opt(cfg, "proximal"))
        self.layers: dict[str, SoRALinear] = {}
        self.total_steps = 0
        self.steps_per_epoch = 0
        self._last_pattern: dict[str, int] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        freeze_all_but_heads(model, self.model_cfg.head_modules)
        names = adapted_module_names(model, self.model_cfg.target_regex)
        self.layers = inject(model, names, self.max_rank, float(self.task.alpha), float(self.task.lora_dropout or 0.0))
        self._last_pattern = self.rank_pattern(model)
        return model

    def training_data(self, dataset, collate, seed: int):
        self.steps_per_epoch = math.ceil(len(dataset) / int(self.task.batch_size))
        return dataset

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = int(total_steps)

    def gates(self) -> list[nn.Parameter]:
        return [layer.lora_gate for layer in self.layers.values()]

    def optimizer_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        """The run's groups without the gates, plus the gates' own group (no decay, eps 1e-6)."""
        from adarank.training.optim import default_param_groups

        gates = {id(g) for g in self.gates()}
        groups = [{**group, "params": [p for p in group["params"] if id(p) not in gates]}
                  for group in default_param_groups(model, weight_decay)]
        gate_group = {"params": self.gates(), "weight_decay": 0.0, "eps": GATE_EPS}
        if _opt(self.cfg, "gate_lr") is not None:
            gate_group["lr"] = float(_opt(self.cfg, "gate_lr"))
        return [g for g in groups if g["params"]] + [gate_group]

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """η · Σ|g| / (number of gate entries), all gates at once (a few kernels, not a few per module)."""
        if self.l1_weight == 0:
            return None
        flat = torch.cat(self.gates())
        return self.l1_weight * flat.abs().sum() / flat.numel()

    def after_optimizer_step(self, ctx: StepContext) -> None:
        start = time.perf_counter()
        gates = self.gates()
        with torch.no_grad():  # P_ξ is element-wise: once on all gates concatenated, then copied back
            flat = proximal_step(torch.cat(gates), self.xi, self.rule)
            torch._foreach_copy_(gates, list(flat.split([g.numel() for g in gates])))
        interval = max(1, math.ceil(ctx.total_steps / RANK_CHECKS))
        if (ctx.step + 1) % interval == 0 or ctx.step + 1 == ctx.total_steps:
            self._log_pattern(ctx.step)
        self.allocation_seconds += time.perf_counter() - start

    def _log_pattern(self, step: int) -> None:
        pattern = self.rank_pattern(None)
        before = self._last_pattern or {}
        changed = sorted(name for name in pattern if pattern[name] != before.get(name))
        if not changed:
            return
        self.growth_log.append({
            "step": step,
            "k": sum(max(0, before.get(n, self.max_rank) - pattern[n]) for n in changed),  # ranks pruned
            "revived": sum(max(0, pattern[n] - before.get(n, self.max_rank)) for n in changed),
            "total_rank": int(sum(pattern.values())),
            "budget": self.max_rank * len(pattern),
            "modules": changed,
        })
        self._last_pattern = pattern

    # -- the sparsifying scheduler ------------------------------------------------------------
    def final_evaluations(self, model: nn.Module, evaluate) -> dict:
        """The paper's sparsifying scheduler (Algorithm 1), as the official ``run_glue.py`` runs it
        after training: for each ξ_k of the schedule, ``stage_epochs`` more epochs with the LR
        schedule already at 0, so that the AdamW steps change nothing and only P_ξk acts (once per
        step), then a whole-dev evaluation. Returned as ``sparsify_schedule``; the gates are put
        back afterwards, so the run's adapter and rank pattern are those of training."""
        kind = _opt(self.cfg, "schedule")
        if kind is None:
            return {}
        steps = math.ceil(float(_opt(self.cfg, "stage_epochs")) * self.steps_per_epoch)
        values = xi_schedule(self.xi, float(_opt(self.cfg, "schedule_max_xi")), int(_opt(self.cfg, "schedule_stages")), kind)
        trained = [g.detach().clone() for g in self.gates()]
        stages = []
        try:
            with torch.no_grad():
                flat = torch.cat(trained)
                for xi in values:
                    for _ in range(steps):
                        proximal_step(flat, xi, self.rule)
                    for gate, part in zip(self.gates(), flat.split([g.numel() for g in trained])):
                        gate.copy_(part)
                    pattern = self.rank_pattern(None)
                    stages.append({"xi": xi, "steps": steps, "total_rank": int(sum(pattern.values())), "eval": evaluate()})
        finally:
            with torch.no_grad():
                for gate, value in zip(self.gates(), trained):
                    gate.copy_(value)
        return {"sparsify_schedule": stages}

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "last_pattern": self._last_pattern}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._last_pattern = state["last_pattern"]

    # -- reporting -------------------------------------------------------------------------
    def rank_pattern(self, model: nn.Module | None) -> dict[str, int]:
        return {name: layer.rank for name, layer in (self.layers or sora_layers(model)).items()}

    def summary(self, model: nn.Module) -> dict:
        return {**super().summary(model), "max_rank": self.max_rank, "init_total_rank": self.max_rank * len(self.layers)}

    # -- adapters --------------------------------------------------------------------------
    def save_adapter(self, model: nn.Module, folder: str) -> None:
        lowrank.save_layers(folder, self.name, self.layers or sora_layers(model), model, max_rank=self.max_rank)

    @staticmethod
    def load_adapter(model: nn.Module, folder: str) -> nn.Module:
        """Inject the saved SoRA layers into a fresh ``model`` and load the trained tensors."""
        config = lowrank.read_config(folder)
        inject(model, config["modules"], config["max_rank"], config["alpha"], config["dropout"])
        lowrank.load_tensors_into(model, folder)
        return model


def pruned_factors(layer: SoRALinear) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of the kept ranks with B·A the layer's whole update: A[kept], s·B[:, kept]·g[kept]."""
    kept = layer.kept()
    a = layer.lora_A[kept]
    b = layer.lora_B[:, kept] * (layer.lora_gate[kept] * layer.scaling)
    return a.detach().clone(), b.detach().clone()
