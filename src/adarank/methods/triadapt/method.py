"""TriAdaptLoRA (Liang et al., arXiv 2501.08008) as a harness ``Method``.

prepare: wrap the target linears in TriAdaptLinear (Eq. 4-5, rank r_init), freeze the backbone,
train the heads. Every optimizer step t: ``before_optimizer_step`` runs Algorithm 1 lines 4-7 when
t is a growth step (A1) and hands the new parameters to the scheduler as one new group (A17).
``extra_loss`` is the orthogonality regulariser (Eq. 10 in the form of A15).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from adarank.methods.base import Method, StepContext
from adarank.methods.triadapt import io
from adarank.methods.triadapt.allocator import NORMS, RankAllocator, grow_together
from adarank.training.distributed import refuse_multiprocess
from adarank.methods.triadapt.layer import TriAdaptLinear
from adarank.methods.triadapt.schedule import ROUNDINGS, first_growth_step
from adarank.training.optim import GrowingLinearSchedule

NEW_GROUP_LR = GrowingLinearSchedule.POLICIES  # reading A17
DEFAULTS = {
    "init_rank": 1,
    "norm": "r",
    "rounding": "ceil",
    "orth_reg": True,
    "strict_budget": False,
    "new_group_lr": "restart",
    "init_std": 0.02,
}
METHOD_KEYS = {"name", *DEFAULTS}


def _opt(cfg, key):
    value = cfg.get(key, None) if cfg is not None else None
    return DEFAULTS[key] if value is None else value


class TriAdaptLoRA(Method):
    name = "triadapt"
    thresholds = ("fixed", "linear", "nonlinear")
    default_threshold = "linear"

    def __init__(self, cfg, task_cfg, threshold_cfg, model_cfg):
        super().__init__(cfg, task_cfg, threshold_cfg, model_cfg)
        requested = getattr(threshold_cfg, "name", None) or (
            threshold_cfg.get("name") if isinstance(threshold_cfg, dict) else threshold_cfg
        )
        self.mode = self.resolve_threshold(requested or "none")
        self.options = {key: _opt(cfg, key) for key in DEFAULTS}
        self.layers: dict[str, TriAdaptLinear] = {}
        self.allocator: RankAllocator | None = None
        self.total_steps: int | None = None
        #: fast paths (see tests/test_triadapt_fast.py): each growth event's blocks live in a few
        #: flat tensors (store.py), the regulariser reuses the forward's factors, and AdamW uses
        #: its foreach kernels (the same arithmetic as the per-tensor loop); False = the
        #: straightforward layout, kept as the oracle
        self.fast = True

    # -- configuration ---------------------------------------------------------------------
    @classmethod
    def check_config(cls, method_cfg, task_cfg, threshold, model_cfg, total_steps) -> None:
        mode = cls.resolve_threshold(threshold)
        unknown = sorted(set(method_cfg or {}) - METHOD_KEYS)
        if unknown:
            raise ValueError(f"method=triadapt has no option(s) {unknown}; known: {sorted(METHOD_KEYS)}")
        opts = {key: _opt(method_cfg, key) for key in DEFAULTS}
        if opts["norm"] not in NORMS:
            raise ValueError(f"method.norm must be one of {NORMS} (Table III), not {opts['norm']!r}")
        if opts["rounding"] not in ROUNDINGS:
            raise ValueError(f"method.rounding must be one of {ROUNDINGS}, not {opts['rounding']!r}")
        if opts["new_group_lr"] not in NEW_GROUP_LR:
            raise ValueError(f"method.new_group_lr must be one of {NEW_GROUP_LR}, not {opts['new_group_lr']!r}")
        for key in ("orth_reg", "strict_budget"):
            if not isinstance(opts[key], bool):
                raise ValueError(f"method.{key} must be true or false, not {opts[key]!r}")
        if not opts["init_std"] > 0:
            raise ValueError(f"method.init_std must be > 0, not {opts['init_std']}")
        init_rank, ref = int(opts["init_rank"]), int(task_cfg["reference_rank"])
        if init_rank < 1 or init_rank > ref:
            raise ValueError(
                f"method.init_rank={init_rank} must be between 1 and the task's reference_rank={ref}"
            )
        for key, low in (("incre_rank_num", 1), ("incre_interval", 1), ("init_warmup", 0)):
            if int(task_cfg[key]) < low:
                raise ValueError(f"task.{key} must be >= {low}, not {task_cfg[key]}")
        if mode == "fixed" and int(task_cfg.get("top_h") or 0) < 1:
            raise ValueError("threshold=fixed needs task.top_h >= 1 (modules grown per event)")
        t0, interval = int(task_cfg["init_warmup"]), int(task_cfg["incre_interval"])
        if init_rank < ref and first_growth_step(t0, interval) >= total_steps:
            raise ValueError(
                f"no growth step fits: the run has {total_steps} optimizer steps but the first "
                f"growth is at step {first_growth_step(t0, interval)} (init_warmup={t0}, "
                f"incre_interval={interval}); lower task.init_warmup / task.incre_interval"
            )

    # -- lifecycle -------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        from adarank.models import adapted_module_names, freeze_all_but_heads

        refuse_multiprocess(self.name)
        freeze_all_but_heads(model, self.model_cfg["head_modules"])
        names = adapted_module_names(model, self.model_cfg["target_regex"])
        self.layers = io.inject(
            model,
            names,
            alpha=float(self.task["alpha"]),
            init_rank=int(self.options["init_rank"]),
            dropout=float(self.task.get("lora_dropout") or 0.0),
            init_std=float(self.options["init_std"]),
            shared=self.fast,
        )
        for layer in self.layers.values():
            layer.fast = self.fast
        self.allocator = RankAllocator(
            self.layers,
            reference_rank=int(self.task["reference_rank"]),
            init_rank=int(self.options["init_rank"]),
            delta_r=int(self.task["incre_rank_num"]),
            t0=int(self.task["init_warmup"]),
            interval=int(self.task["incre_interval"]),
            mode=self.mode,
            rounding=self.options["rounding"],
            norm=self.options["norm"],
            top_h=self.task.get("top_h"),
            strict_budget=bool(self.options["strict_budget"]),
        )
        return model

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = int(total_steps)

    def optimizer_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        groups = super().optimizer_groups(model, weight_decay)
        for group in groups:  # fast: AdamW's multi-tensor kernels; the oracle keeps its per-tensor loop
            group["foreach"] = self.fast
        return groups

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """reg_orth_coef × mean over the 2M matrices of ‖AAᵀ−I‖_F, ‖BᵀB−I‖_F (Eq. 10, A15)."""
        coef = float(self.task.get("reg_orth_coef") or 0.0)
        if not self.options["orth_reg"] or coef == 0.0 or not self.layers:
            return None
        device = next(iter(self.layers.values())).base.weight.device
        store = next(iter(self.layers.values())).store
        with torch.autocast(device.type, enabled=False):  # Gram matrices in fp32 even under bf16
            if self.fast and store is not None:  # grouped over all modules, reusing the forward's A, B
                total = store.fused_factors().orthogonality_sum()
            else:
                total = sum(sum(layer.orthogonality()) for layer in self.layers.values())
        return coef * total / (2 * len(self.layers))

    def before_optimizer_step(self, ctx: StepContext) -> None:
        """Algorithm 1 lines 4-7 at growth steps; new parameters join as one scheduled group."""
        if self.allocator is None or not self.allocator.wants(ctx.step):
            return
        start = time.perf_counter()
        event, params = self.allocator.grow(ctx.step, self.total_steps or ctx.total_steps)
        if params:
            ctx.scheduler.add_param_group(
                params,
                weight_decay=float(self.task.get("weight_decay") or 0.0),
                policy=self.options["new_group_lr"],
                foreach=self.fast,
            )
        self.allocation_seconds += time.perf_counter() - start
        if event is not None:
            self.growth_log.append(event)

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        allocator = self.allocator
        return {
            **super().state_dict(),
            "remaining": allocator.remaining,
            "previous": list(allocator.previous),
            "exhausted": allocator.exhausted,
        }

    def restore_structure(self, model: nn.Module, scheduler, state: dict) -> None:
        """Replay every growth event of the log: the same modules grow in the same order, and
        each event's parameters become one scheduler group, as in ``before_optimizer_step``."""
        for event in state["growth_log"]:
            params = grow_together([self.layers[name] for name in event["modules"]], int(self.task["incre_rank_num"]))
            scheduler.add_param_group(
                params,
                weight_decay=float(self.task.get("weight_decay") or 0.0),
                policy=self.options["new_group_lr"],
                foreach=self.fast,
            )

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.allocator.remaining = int(state["remaining"])
        self.allocator.previous = [float(v) for v in state["previous"]]
        self.allocator.exhausted = bool(state["exhausted"])

    # -- reporting -------------------------------------------------------------------------
    def rank_pattern(self, model: nn.Module) -> dict[str, int]:
        layers = self.layers or io.triadapt_layers(model)
        return {name: layer.rank for name, layer in layers.items()}

    def summary(self, model: nn.Module) -> dict:
        facts = super().summary(model)
        target = int(self.task["reference_rank"]) * facts.get("adapted_modules", 0)
        facts.update(
            target_total_rank=target,
            budget_left=target - facts.get("total_rank", 0),  # negative: the last event overshot (A10)
            growth_events=len(self.growth_log),
        )
        return facts

    # -- adapters --------------------------------------------------------------------------
    def save_adapter(self, model: nn.Module, folder: str) -> None:
        io.save_adapter(model, folder)

    @staticmethod
    def load_adapter(model: nn.Module, folder: str) -> nn.Module:
        io.load_adapter(model, folder)
        return model

    @staticmethod
    def merge(model: nn.Module) -> nn.Module:
        return io.merge(model)
