"""IncreLoRA (Zhang et al. 2023), our implementation of the official code (FeiyuZhang98/IncreLoRA,
``loralib/loralib/increlora.py`` and its modified Trainer), as read in methods.md §1.

Per optimizer step t (0-based), after gradient clipping and before ``optimizer.step()``:

1. at the first step, every module receives Δr "advance learning" reserve ranks (E frozen at
   1e-5, A and B trainable), added to the optimizer as one new group;
2. while the total activated rank is below the budget r_ref x M: smooth every module's importance
   (Ī, Ū EMAs of the score from the last backward pass, see ``layer.py``), and if
   t > init_warmup and t % incre_interval == 0: k = min(top_h, budget - total); every module with
   Ī·Ū >= the k-th largest grows by Δr: its reserve becomes active (ranknum += Δr, reserve E
   trainable) and it receives a new reserve; the activated E blocks and the new reserve A, B go
   into ONE new optimizer group with IncreLoRA's restart warm-up (GrowingLinearSchedule policy
   "restart"); the Adam state of the existing parameters is untouched;
3. once total >= budget: scoring stops (no more hooks); when total == budget exactly, the reserve
   E blocks are set to 0 (when the last event overshoots, the official code leaves them at 1e-5,
   and so do we).

Loss: + reg_orth_coef x mean over modules of ||A Aᵀ - I||_F and ||Bᵀ B - I||_F (unsquared, reserve
included, as the official Trainer's ``compute_svd_orth_regu``).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from adarank.methods.base import Method, StepContext
from adarank.methods.lowrank import replace_module
from adarank.methods.increlora.allocator import ema_update, growth_k, is_growth_step, select_modules
from adarank.methods.growth_clock import first_growth_step
from adarank.methods.increlora.layer import SCORE_NORMS, IncreLinear
from adarank.methods.orthogonal import gram_orth_penalty
from adarank.models import adapted_module_names, freeze_all_but_heads
from adarank.training.distributed import refuse_multiprocess

LR_POLICIES = ("restart", "global")
METHOD_KEYS = {"name", "init_rank", "score_norm", "new_group_lr"}


class IncreLoRA(Method):
    name = "increlora"
    thresholds = ("fixed",)
    default_threshold = "fixed"

    @classmethod
    def resolve_threshold(cls, requested: str) -> str:
        if requested in ("none", "fixed"):
            return "fixed"
        raise ValueError(
            f"method=increlora has a single growth rule, a fixed number of modules per event "
            f"(k = min(top_h, remaining budget), threshold=fixed); threshold={requested} is one of "
            "TriAdaptLoRA's dynamic thresholds and does not exist in IncreLoRA. Use "
            f"`method=increlora threshold=fixed`, or `method=triadapt threshold={requested}`."
        )

    @classmethod
    def check_config(cls, method_cfg, task_cfg, threshold, model_cfg, total_steps) -> None:
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise ValueError(message)

        unknown = set(method_cfg) - METHOD_KEYS
        need(not unknown, f"unknown option(s) {sorted(unknown)}; the options are {sorted(METHOD_KEYS)}")
        need(int(method_cfg.init_rank) >= 1, f"init_rank must be >= 1, got {method_cfg.init_rank}")
        need(
            int(task_cfg.reference_rank) > int(method_cfg.init_rank),
            f"the reference rank ({task_cfg.reference_rank}) must exceed init_rank ({method_cfg.init_rank})",
        )
        need(int(task_cfg.incre_rank_num) >= 1, f"task.incre_rank_num must be >= 1, got {task_cfg.incre_rank_num}")
        need(int(task_cfg.top_h) >= 1, f"task.top_h must be >= 1, got {task_cfg.top_h}")
        need(int(task_cfg.incre_interval) >= 1, f"task.incre_interval must be >= 1, got {task_cfg.incre_interval}")
        need(int(task_cfg.init_warmup) >= 0, f"task.init_warmup must be >= 0, got {task_cfg.init_warmup}")
        for key in ("beta1", "beta2"):
            need(0 < float(task_cfg[key]) < 1, f"task.{key} must lie in (0, 1), got {task_cfg[key]}")
        need(float(task_cfg.reg_orth_coef) >= 0, "task.reg_orth_coef must be >= 0")
        need(method_cfg.score_norm in SCORE_NORMS, f"score_norm must be one of {SCORE_NORMS}")
        need(method_cfg.new_group_lr in LR_POLICIES, f"new_group_lr must be one of {LR_POLICIES}")
        t0, interval = int(task_cfg.init_warmup), int(task_cfg.incre_interval)
        first = first_growth_step(t0, interval)
        need(
            first < total_steps,
            f"no growth step fits: the run has {total_steps} optimizer steps but the first growth is "
            f"at step {first} (task.init_warmup={t0}, task.incre_interval={interval}), so the rank "
            "would never grow; lower task.init_warmup / task.incre_interval or train for more steps",
        )

    def __init__(self, cfg, task_cfg, threshold_cfg, model_cfg):
        super().__init__(cfg, task_cfg, threshold_cfg, model_cfg)
        self.layers: dict[str, IncreLinear] = {}
        self.delta_r = int(task_cfg.incre_rank_num)
        self.top_h = int(task_cfg.top_h)
        self.init_warmup = int(task_cfg.init_warmup)
        self.interval = int(task_cfg.incre_interval)
        self.beta1, self.beta2 = float(task_cfg.beta1), float(task_cfg.beta2)
        self.reg_coef = float(task_cfg.reg_orth_coef)
        self.weight_decay = float(task_cfg.weight_decay)
        self.lr_policy = str(cfg.get("new_group_lr", "restart"))
        self.total_steps: int | None = None
        self.total_rank = 0
        self.target_total_rank = 0
        self.budget_open = True
        self.reserve_added = False
        self.reserve_zeroed = False
        self.exhausted_at: int | None = None
        self.exp_avg_ipt: torch.Tensor | None = None
        self.exp_avg_unc: torch.Tensor | None = None
        #: fast paths (tests/test_increlora_fast.py): in-place importance scoring in the layers,
        #: and AdamW's foreach kernels over the many blocks of ranks (the same arithmetic as the
        #: per-tensor loop, which CPU AdamW uses by default); False = the plain oracle
        self.fast = True
        #: a module's Δr ranks of one growth as one block of parameters (layer.py); False = one
        #: parameter per rank, the official layout. Recorded in the method state: a checkpoint
        #: written before the blocks existed has no entry and resumes in the per-rank layout.
        self.rank_blocks = True

    # -- cost accounting: time in the allocator plus time in the backward scoring hooks ------
    @property
    def allocation_seconds(self) -> float:
        return self._allocation_seconds + sum(layer.hook_seconds for layer in self.layers.values())

    @allocation_seconds.setter
    def allocation_seconds(self, value: float) -> None:
        self._allocation_seconds = value

    # -- lifecycle -------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        refuse_multiprocess(self.name)
        freeze_all_but_heads(model, self.model_cfg.head_modules)
        init_rank = int(self.cfg.init_rank)
        for name in adapted_module_names(model, self.model_cfg.target_regex):
            layer = IncreLinear(
                model.get_submodule(name),
                init_rank=init_rank,
                alpha=float(self.task.alpha),
                dropout=float(self.task.lora_dropout),
                score_norm=str(self.cfg.score_norm),
            )
            layer.fast = self.fast
            layer.rank_blocks = self.rank_blocks
            replace_module(model, name, layer)
            self.layers[name] = layer
        self.total_rank = init_rank * len(self.layers)
        self.target_total_rank = int(self.task.reference_rank) * len(self.layers)
        if self.total_rank >= self.target_total_rank:
            self._close_budget(step=None)
        return model

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = int(total_steps)

    def optimizer_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        groups = super().optimizer_groups(model, weight_decay)
        for group in groups:
            group.update(self._group_options())
        return groups

    def _group_options(self) -> dict:
        """Every growth adds 3 tensors per grown module: let AdamW loop over them in C++."""
        return {"foreach": self.fast}  # the plain oracle keeps AdamW's per-tensor loop

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        if self.reg_coef == 0:
            return None
        pairs = []
        for layer in self.layers.values():
            a, _, b = layer.matrices()
            pairs.append((a, b))
        penalty = gram_orth_penalty(pairs)
        return None if penalty is None else self.reg_coef * penalty

    def before_optimizer_step(self, ctx: StepContext) -> None:
        start = time.perf_counter()
        if not self.reserve_added:
            new = [p for layer in self.layers.values() for p in layer.add_reserve(self.delta_r)]
            ctx.scheduler.add_param_group(
                new, weight_decay=self.weight_decay, policy=self.lr_policy, **self._group_options()
            )
            self.reserve_added = True
        if self.budget_open:
            self._update_scores()
            if is_growth_step(ctx.step, self.init_warmup, self.interval):
                self._grow(ctx)
        self._allocation_seconds += time.perf_counter() - start

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint_tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Also the frozen reserve E blocks (1e-5, or 0 once the budget is met exactly)."""
        tensors = super().checkpoint_tensors(model)
        tensors.update((name, p) for name, p in model.named_parameters() if ".lora_E." in name)
        return tensors

    def state_dict(self) -> dict:
        layers = list(self.layers.values())
        return {
            **super().state_dict(),
            "total_rank": self.total_rank,
            "budget_open": self.budget_open,
            "reserve_added": self.reserve_added,
            "reserve_zeroed": self.reserve_zeroed,
            "rank_blocks": self.rank_blocks,
            "exhausted_at": self.exhausted_at,
            "exp_avg_ipt": self.exp_avg_ipt,
            "exp_avg_unc": self.exp_avg_unc,
            "scoring": [layer.scoring for layer in layers],
            "scores": [layer.score for layer in layers],
        }

    def restore_structure(self, model: nn.Module, scheduler, state: dict) -> None:
        """Replay the reserve of step 0 and every growth event of the log (same groups, same order),
        in the parameter layout the state was written with."""
        self.rank_blocks = bool(state.get("rank_blocks", False))
        for layer in self.layers.values():
            layer.rank_blocks = self.rank_blocks
        if not state["reserve_added"]:
            return
        new = [p for layer in self.layers.values() for p in layer.add_reserve(self.delta_r)]
        scheduler.add_param_group(new, weight_decay=self.weight_decay, policy=self.lr_policy, **self._group_options())
        for event in state["growth_log"]:
            new = []
            for name in event["modules"]:
                new += self.layers[name].activate_reserve()
                new += self.layers[name].add_reserve(self.delta_r)
            scheduler.add_param_group(new, weight_decay=self.weight_decay, policy=self.lr_policy, **self._group_options())

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        device = next(iter(self.layers.values())).lora_A[0].device
        self.total_rank = int(state["total_rank"])
        self.budget_open = bool(state["budget_open"])
        self.reserve_added = bool(state["reserve_added"])
        self.reserve_zeroed = bool(state["reserve_zeroed"])
        self.exhausted_at = state["exhausted_at"]
        self.exp_avg_ipt = None if state["exp_avg_ipt"] is None else state["exp_avg_ipt"].to(device)
        self.exp_avg_unc = None if state["exp_avg_unc"] is None else state["exp_avg_unc"].to(device)
        for layer, scoring, score in zip(self.layers.values(), state["scoring"], state["scores"]):
            layer.scoring = bool(scoring)
            layer.score = None if score is None else score.to(device)

    # -- allocator -------------------------------------------------------------------------
    def _update_scores(self) -> None:
        layers = list(self.layers.values())
        device = layers[0].lora_A[0].device
        zero = torch.zeros((), device=device)
        scores = torch.stack([zero if layer.score is None else layer.score.to(device) for layer in layers])
        if self.exp_avg_ipt is None:
            self.exp_avg_ipt = torch.zeros_like(scores)
            self.exp_avg_unc = torch.zeros_like(scores)
        self.exp_avg_ipt, self.exp_avg_unc = ema_update(
            self.exp_avg_ipt, self.exp_avg_unc, scores, self.beta1, self.beta2
        )

    def importance_scores(self) -> dict[str, float]:
        """Ī·Ū per module (0 before the first update)."""
        if self.exp_avg_ipt is None:
            return {name: 0.0 for name in self.layers}
        values = (self.exp_avg_ipt * self.exp_avg_unc).tolist()
        return dict(zip(self.layers, values))

    def _grow(self, ctx: StepContext) -> None:
        names = list(self.layers)
        k = growth_k(self.top_h, self.target_total_rank, self.total_rank)
        chosen, threshold = select_modules(self.exp_avg_ipt * self.exp_avg_unc, k)
        new_params: list[nn.Parameter] = []
        for index in chosen:
            layer = self.layers[names[index]]
            new_params += layer.activate_reserve()
            new_params += layer.add_reserve(self.delta_r)
        self.total_rank += self.delta_r * len(chosen)
        ctx.scheduler.add_param_group(
            new_params, weight_decay=self.weight_decay, policy=self.lr_policy, **self._group_options()
        )
        if self.total_rank >= self.target_total_rank:
            self._close_budget(step=ctx.step)
        self.growth_log.append(
            {
                "step": ctx.step,
                "k": k,
                "threshold": threshold,
                "total_rank": self.total_rank,
                "budget": self.target_total_rank,
                "modules": [names[i] for i in chosen],
                "budget_exhausted": not self.budget_open,
                "reserve_zeroed": self.reserve_zeroed,
            }
        )

    def _close_budget(self, step: int | None) -> None:
        """Stop scoring for good; zero the reserve E when the budget is met exactly (official)."""
        self.budget_open = False
        self.exhausted_at = step
        for layer in self.layers.values():
            layer.scoring = False
            layer.score = None
            if self.total_rank == self.target_total_rank:
                layer.zero_reserve()
        self.reserve_zeroed = self.total_rank == self.target_total_rank and self.reserve_added

    # -- reporting -------------------------------------------------------------------------
    def rank_pattern(self, model: nn.Module) -> dict[str, int]:
        return {name: layer.rank for name, layer in self.layers.items()}

    def summary(self, model: nn.Module) -> dict:
        out = super().summary(model)
        out.update(
            {
                "target_total_rank": self.target_total_rank,
                "growth_events": len(self.growth_log),
                "budget_exhausted_step": self.exhausted_at,
                "reserve_zeroed": self.reserve_zeroed,
                "rank_blocks": self.rank_blocks,
            }
        )
        return out
