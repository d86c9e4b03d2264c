"""AdaLoRA (Zhang et al. 2023) through peft, configured like the official code (methods.md §2).

ΔW = B (A ⊙ E) · alpha / (init_r + 1e-5) on the 72 encoder linears (peft ``SVDLinear``); after
every optimizer step t (0-based optimizer-step counter) peft's ``update_and_allocate(t)``:

* smooths the sensitivity of every entry, I = |p ⊙ ∇p|: Ī ← β1 Ī + (1-β1) I, Ū ← β2 Ū + (1-β2)|I - Ī|;
* scores rank i of a module as S(E_i) + mean_j S(A_ij) + mean_j S(B_ji) with S = Ī·Ū;
* keeps the b(t) best triplets (E of the others set to 0) when t % ΔT == 0 in the budget phase,
  with the cubic schedule b(t) = b_T + (b_0 - b_T)(1 - (t - t_init)/(T - t_final - t_init))³
  (int), b_0 = init_r·M, b_T = target_r·M; the final mask (b_T) is forced at the official code's
  first b_T mask, t = T - t_final when that is a multiple of ΔT, else T - t_final + 1
  (:func:`final_mask_step`; peft alone forces it at T - t_final), and then re-applied every step
  (by :meth:`AdaLoRA._apply_final_pattern`: peft's masking with the masks kept on the device).

Settings (methods.md §2.3 verdict): init_r = task.adalora.init_rank (12), target_r = the task's
reference rank (8), t_init/t_final/ΔT = task.adalora.*, β1 = β2 = task beta1/beta2 (0.85),
total_step = the exact optimizer-step count T, targets = the exact encoder module names (never
``pooler.dense``), classifier and pooler fully trained (peft ``modules_to_save``).

Orthogonal regulariser: reg_orth_coef · mean over modules of ||A Aᵀ - I||_F and ||Bᵀ B - I||_F,
added by :meth:`AdaLoRA.extra_loss`. peft only adds it inside ``AdaLoraModel.forward``, which the
generic ``PeftModel.forward`` bypasses (peft issue #432), so peft's own ``orth_reg_weight`` is set
to 0 and the term (same formula, same weight) is added once, here.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from adarank.methods.base import Method, StepContext
from adarank.methods.orthogonal import gram_orth_penalty
from adarank.methods.peft_support import peft_targets

ADAPTER = "default"


def final_mask_step(total_steps: int, t_final: int, delta_t: int) -> int:
    """The step of the official code's first b_T mask (docs/baselines.md B6): T - t_final when it
    is a masking step (a multiple of ΔT, where the cubic budget is b_T), otherwise the first step
    after it, from which on the official code masks to b_T at every step with frozen scores."""
    final = total_steps - t_final
    return final if final % delta_t == 0 else final + 1


class AdaLoRA(Method):
    name = "adalora"

    @classmethod
    def check_config(cls, method_cfg, task_cfg, threshold, model_cfg, total_steps) -> None:
        unknown = set(method_cfg) - {"name"}
        if unknown:
            raise ValueError(
                f"unknown option(s) {sorted(unknown)}; AdaLoRA reads its settings from "
                "the task (task.adalora.*, reference_rank, beta1, beta2, reg_orth_coef, alpha, lora_dropout)"
            )
        ada = task_cfg.adalora
        t_init, t_final = int(ada.init_warmup), int(ada.final_warmup)
        if t_final < 1:
            raise ValueError(
                f"task.adalora.final_warmup must be >= 1 (got {t_final}), otherwise the "
                "final mask at step T - t_final is never applied and the rank never reaches the target"
            )
        if t_init >= total_steps - t_final:
            raise ValueError(
                f"no budget phase: t_init={t_init} >= total_steps - t_final = "
                f"{total_steps} - {t_final} = {total_steps - t_final}. Lower task.adalora.init_warmup / "
                "task.adalora.final_warmup or train for more steps."
            )
        if int(ada.mask_interval) < 1:
            raise ValueError(f"task.adalora.mask_interval must be >= 1, got {ada.mask_interval}")
        if final_mask_step(total_steps, t_final, int(ada.mask_interval)) >= total_steps:
            raise ValueError(
                f"the final mask never runs: T - t_final = {total_steps - t_final} is not a multiple of "
                f"task.adalora.mask_interval={ada.mask_interval} and no step follows it (the official "
                "code masks to the target at the first step after it); raise task.adalora.final_warmup"
            )
        if int(ada.init_rank) <= int(task_cfg.reference_rank):
            raise ValueError(
                f"the initial rank ({ada.init_rank}) must exceed the target rank "
                f"(task.reference_rank = {task_cfg.reference_rank})"
            )
        if (ada.get("warmup_steps") is None) == (ada.get("warmup_ratio") is None):
            raise ValueError(
                "give exactly one of task.adalora.warmup_steps and task.adalora.warmup_ratio"
            )
        for key in ("beta1", "beta2"):
            if not 0 < float(task_cfg[key]) < 1:
                raise ValueError(f"task.{key} must lie in (0, 1), got {task_cfg[key]}")
        if float(task_cfg.reg_orth_coef) < 0:
            raise ValueError("task.reg_orth_coef must be >= 0")

    def __init__(self, cfg, task_cfg, threshold_cfg, model_cfg):
        super().__init__(cfg, task_cfg, threshold_cfg, model_cfg)
        ada = task_cfg.adalora
        self.init_rank = int(ada.init_rank)
        self.target_rank = int(task_cfg.reference_rank)
        self.t_init = int(ada.init_warmup)
        self.t_final = int(ada.final_warmup)
        self.delta_t = int(ada.mask_interval)
        self.reg_coef = float(task_cfg.reg_orth_coef)
        self.total_steps: int | None = None
        self.tuner = None  # peft AdaLoraModel
        self._last_pattern: dict[str, int] | None = None
        #: (E parameter, boolean mask of its dropped entries) of the stored final pattern, on the
        #: device (built at the first step after the final mask; None = to build)
        self._final_masks: list | None = None

    # -- learning-rate warm-up (Table V's AdaLoRA-only "Warm-up Steps/ratio" row) -------------
    warmup_key = "task.adalora.warmup_steps"

    @classmethod
    def warmup_for(cls, task_cfg, total_steps: int) -> int:
        """AdaLoRA's own LR warm-up: task.adalora.warmup_steps, or ceil(warmup_ratio x T)
        (transformers' ``get_warmup_steps``, which the official scripts use)."""
        ada = task_cfg.adalora
        if ada.get("warmup_steps") is not None:
            return int(ada.warmup_steps)
        return math.ceil(float(ada.warmup_ratio) * int(total_steps))

    # -- lifecycle -------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import AdaLoraConfig, get_peft_model

        targets, heads = peft_targets(model, self.model_cfg)
        # total_step must be given now; the exact value arrives with set_total_steps (it may come first)
        placeholder = self.t_init + self.t_final + 1
        config = AdaLoraConfig(
            init_r=self.init_rank,
            target_r=self.target_rank,
            tinit=self.t_init,
            tfinal=self.t_final,
            deltaT=self.delta_t,
            beta1=float(self.task.beta1),
            beta2=float(self.task.beta2),
            orth_reg_weight=0.0,  # added by extra_loss (see the module docstring)
            total_step=self.total_steps or placeholder,
            lora_alpha=float(self.task.alpha),
            lora_dropout=float(self.task.lora_dropout),
            target_modules=targets,
            modules_to_save=heads,
            bias="none",
        )
        peft_model = get_peft_model(model, config)
        self.tuner = peft_model.base_model
        return peft_model

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = int(total_steps)
        if self.t_init >= self.total_steps - self.t_final:
            raise ValueError(
                f"t_init={self.t_init} >= total_steps - t_final = {self.total_steps - self.t_final}"
            )
        if self.tuner is not None:
            self.tuner.rankallocator.set_total_step(self.total_steps)

    @property
    def peft_config(self):
        return self.tuner.peft_config[ADAPTER]

    def svd_layers(self) -> dict[str, nn.Module]:
        """{adapted module name: peft SVDLinear}."""
        from peft.tuners.adalora.layer import AdaLoraLayer

        return {
            name: module
            for name, module in self.tuner.model.named_modules()
            if isinstance(module, AdaLoraLayer) and ADAPTER in module.lora_A
        }

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        if self.reg_coef == 0:
            return None
        pairs = [(layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]) for layer in self.svd_layers().values()]
        penalty = gram_orth_penalty(pairs)
        return None if penalty is None else self.reg_coef * penalty

    def after_optimizer_step(self, ctx: StepContext) -> None:
        start = time.perf_counter()
        config = self.peft_config
        if self.total_steps is None or config.total_step != ctx.total_steps:
            raise RuntimeError(
                f"AdaLoRA's total_step ({config.total_step}) differs from the run's optimizer steps "
                f"({ctx.total_steps}): call set_total_steps(T) before training"
            )
        step, final = ctx.step, config.total_step - config.tfinal
        first_final = final_mask_step(config.total_step, config.tfinal, config.deltaT)
        allocator = self.tuner.rankallocator
        if step < final:
            budget, masking = allocator.budget_schedule(step)
            self.tuner.update_and_allocate(step)
        elif step < first_final:
            # t = T - t_final but not a multiple of ΔT: the official code neither updates the
            # scores (t >= T - t_final) nor masks here, peft would force its final mask now
            budget, masking = allocator.target_bgt, False
        elif step == first_final:
            # peft's forced final mask (b_T, scores of the last update), one step late when needed
            budget, masking = allocator.target_bgt, True
            self.tuner.update_and_allocate(final)
            self._final_masks = self._build_final_masks()  # here, at the event, not at the next step
        else:
            budget, masking = allocator.target_bgt, False
            self._apply_final_pattern()  # peft's update_and_allocate(step) here: the same masking
        if masking:
            self._log_mask(step, budget, allocator.init_bgt, final=step == first_final)
        self.allocation_seconds += time.perf_counter() - start

    def _apply_final_pattern(self) -> None:
        """Zero the E entries outside the stored final pattern, as peft's
        ``mask_using_rank_pattern`` does at every step after the final mask, but with the boolean
        masks built once on the device (peft rebuilds one from a Python list per module and step:
        a blocking host-to-device copy each) and one in-place ``masked_fill_`` per module."""
        if self._final_masks is None:  # a resumed run
            self._final_masks = self._build_final_masks()
        with torch.no_grad():
            for param, drop in self._final_masks:
                param.masked_fill_(drop, 0.0)

    def _build_final_masks(self) -> list:
        """[(E parameter, boolean mask of its dropped entries)] of the stored pattern, on the device."""
        pattern = self.peft_config.rank_pattern
        truncated = not any(ADAPTER in key for key in pattern)  # as peft's mask_using_rank_pattern reads it
        masks = []
        for name, param in self.tuner.model.named_parameters():
            if f"lora_E.{ADAPTER}" in name:
                kept = pattern[name.replace(f".{ADAPTER}", "") if truncated else name]
                masks.append((param, ~torch.tensor(kept, dtype=torch.bool, device=param.device).unsqueeze(-1)))
        return masks

    def _log_mask(self, step: int, budget: int, init_budget: int, final: bool) -> None:
        pattern = self.rank_pattern(None)
        before = self._last_pattern or {name: self.init_rank for name in pattern}
        self.growth_log.append(
            {
                "step": step,
                "k": init_budget - budget,  # triplets masked (kthvalue's k)
                "budget": budget,
                "total_rank": int(sum(pattern.values())),
                "modules": sorted(name for name in pattern if pattern[name] != before.get(name)),
                "final": final,
            }
        )
        self._last_pattern = pattern

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Also peft's allocator state (sensitivity and its EMAs per entry) and the last mask."""
        allocator = self.tuner.rankallocator
        return {
            **super().state_dict(),
            "ipt": dict(allocator.ipt),
            "exp_avg_ipt": dict(allocator.exp_avg_ipt),
            "exp_avg_unc": dict(allocator.exp_avg_unc),
            "rank_pattern": self.peft_config.rank_pattern,
            "last_pattern": self._last_pattern,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        allocator = self.tuner.rankallocator
        device = next(iter(self.svd_layers().values())).lora_A[ADAPTER].device
        for key in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            setattr(allocator, key, {name: value.to(device) for name, value in state[key].items()})
        self.peft_config.rank_pattern = state["rank_pattern"]
        self._last_pattern = state["last_pattern"]
        self._final_masks = None

    # -- reporting -------------------------------------------------------------------------
    def rank_pattern(self, model: nn.Module | None) -> dict[str, int]:
        """Kept ranks per module: peft's boolean ``rank_pattern`` of the last mask (init_r before)."""
        stored = self.peft_config.rank_pattern
        if not stored:
            return {name: self.init_rank for name in self.svd_layers()}
        suffix = f".lora_E.{ADAPTER}"
        return {name.removesuffix(suffix): int(sum(bool(v) for v in kept)) for name, kept in stored.items()}

    def summary(self, model: nn.Module) -> dict:
        out = super().summary(model)
        allocator = self.tuner.rankallocator
        out.update(
            {
                "init_total_rank": int(allocator.init_bgt),
                "target_total_rank": int(allocator.target_bgt),
                "masking_events": len(self.growth_log),
            }
        )
        return out
