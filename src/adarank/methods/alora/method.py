"""ALoRA (Liu et al., NAACL 2024, arXiv 2403.16187) as a harness ``Method``; readings L1-L10 in
docs/alora.md.

Every target linear starts at r_init = r_ref ranks with a gate per rank (``layer.py``), so the
budget R_target = r_ref x M is met from the start. The optimizer steps train the super-network;
``training_data`` holds ``val_examples`` training examples out of the optimizer steps as the
fixed batch B_val. At the optimizer steps t = K1 + n·K2 (n < rounds; ``allocator.round_steps``),
in ``before_optimizer_step`` (after that step's backward, before its update):

1. score every live rank by ablation on B_val, IS(r) = S(M) − S(M\\r) + S(M_r), S = −loss, all
   1 + 2·(live ranks) gate configurations batched into few forward passes;
2. prune the n_A = prune_per_module x M live ranks with the lowest IS (gate -> 0);
3. give n_A new ranks to the modules that had live ranks and lost none (footnote 3's split);
   the new A/B blocks of the round join the optimizer as one new group (existing parameters and
   their AdamW state untouched).

The round's wall time (scoring included) is counted in ``allocation_seconds``.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from adarank.methods import lowrank
from adarank.methods.alora.allocator import (
    ablation_configs, ablation_scores, distribute, hf_loss, importance, lowest, round_steps,
)
from adarank.methods.alora.layer import GatedLoRALinear, gated_layers, inject
from adarank.methods.base import Method, StepContext
from adarank.models import adapted_module_names, freeze_all_but_heads
from adarank.training.distributed import refuse_multiprocess
from adarank.training.optim import GrowingLinearSchedule

DEFAULTS = {
    "init_rank": None,          # null = task.reference_rank (the paper: r_init = R_target / N_mod)
    "prune_per_module": 1,      # n_A = prune_per_module x M ranks pruned per round (paper: 1 x N_mod)
    "rounds": 8,                # N_A
    "k1_epochs": 1.0,           # K1
    "k2_epochs": 0.25,          # K2
    "k1_steps": None,           # K1 in optimizer steps, replacing k1_epochs (train.schedule=scaled sets it)
    "k2_steps": None,           # K2 in optimizer steps, replacing k2_epochs
    "val_examples": 32,         # |B_val|
    "examples_per_forward": 256,
    "new_group_lr": "global",
}


def _opt(cfg, key):
    return lowrank.option(cfg, DEFAULTS, key)


def _schedule(method_cfg, task_cfg, num_examples: int) -> list[int]:
    """The rounds' optimizer steps: K1, K2 from k1_steps / k2_steps when given, else from the
    epochs (of the examples left after the held-out batch)."""
    kept = num_examples - int(_opt(method_cfg, "val_examples"))
    steps_per_epoch = math.ceil(kept / int(task_cfg.batch_size))
    k1, k2 = _opt(method_cfg, "k1_steps"), _opt(method_cfg, "k2_steps")
    k1 = float(_opt(method_cfg, "k1_epochs")) if k1 is None else int(k1) / steps_per_epoch
    k2 = float(_opt(method_cfg, "k2_epochs")) if k2 is None else int(k2) / steps_per_epoch
    return round_steps(steps_per_epoch, k1, k2, int(_opt(method_cfg, "rounds")))


class ALoRA(Method):
    name = "alora"

    # -- configuration ---------------------------------------------------------------------
    @classmethod
    def check_config(cls, method_cfg, task_cfg, threshold, model_cfg, total_steps) -> None:
        lowrank.check_common("alora", method_cfg, DEFAULTS, task_cfg)
        init_rank = _opt(method_cfg, "init_rank")
        if init_rank is not None and (not isinstance(init_rank, int) or init_rank < 1):
            raise ValueError(f"method.init_rank must be a positive integer or null (= task.reference_rank), not {init_rank!r}")
        for key, low in (("prune_per_module", 1), ("rounds", 1), ("val_examples", 2), ("examples_per_forward", 1)):
            value = _opt(method_cfg, key)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"method.{key} must be an integer >= {low}, not {value!r}")
        if not float(_opt(method_cfg, "k1_epochs")) > 0 or not float(_opt(method_cfg, "k2_epochs")) > 0:
            raise ValueError("method.k1_epochs and method.k2_epochs must be > 0")
        for key in ("k1_steps", "k2_steps"):
            value = _opt(method_cfg, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"method.{key} must be an integer >= 1 or null (= from the epochs), not {value!r}")
        if _opt(method_cfg, "new_group_lr") not in GrowingLinearSchedule.POLICIES:
            raise ValueError(f"method.new_group_lr must be one of {GrowingLinearSchedule.POLICIES}")

    @classmethod
    def check_data(cls, method_cfg, task_cfg, total_steps: int, num_examples: int) -> None:
        held = int(_opt(method_cfg, "val_examples"))
        if num_examples <= held:
            raise ValueError(
                f"method.val_examples={held} held-out examples leave nothing to train on "
                f"({num_examples} training examples); lower method.val_examples"
            )
        steps = _schedule(method_cfg, task_cfg, num_examples)
        if steps[-1] >= total_steps:
            raise ValueError(
                f"the last of the {len(steps)} allocation rounds is at optimizer step {steps[-1]} "
                f"(K1 = method.k1_epochs / k1_steps, K2 = method.k2_epochs / k2_steps, epochs of "
                f"{math.ceil((num_examples - held) / int(task_cfg.batch_size))} steps) but the run has "
                f"{total_steps} steps; lower method.rounds / k1_epochs / k2_epochs or train longer"
            )

    def __init__(self, cfg, task_cfg, threshold_cfg, model_cfg):
        super().__init__(cfg, task_cfg, threshold_cfg, model_cfg)
        self.options = {key: _opt(cfg, key) for key in DEFAULTS}
        init_rank = self.options["init_rank"]
        self.init_rank = int(task_cfg.reference_rank) if init_rank is None else int(init_rank)
        self.layers: dict[str, GatedLoRALinear] = {}
        self.val_batch: dict[str, torch.Tensor] | None = None
        self.round_at: list[int] = []
        self.rounds_done = 0
        #: per-example loss of the model on a batch (tests swap in a toy's)
        self.loss_fn = hf_loss

    # -- lifecycle -------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        refuse_multiprocess(self.name)
        freeze_all_but_heads(model, self.model_cfg.head_modules)
        names = adapted_module_names(model, self.model_cfg.target_regex)
        self.layers = inject(model, names, self.init_rank, float(self.task.alpha), float(self.task.lora_dropout or 0.0))
        return model

    def training_data(self, dataset, collate, seed: int):
        """Hold ``val_examples`` examples out (a seeded random choice) as B_val; train on the rest
        (reading L5); the round schedule follows from the rest's size."""
        held = int(self.options["val_examples"])
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(int(seed))).tolist()
        self.val_batch = collate([dataset[i] for i in sorted(order[:held])])
        self.round_at = _schedule(self.cfg, self.task, len(dataset))
        return torch.utils.data.Subset(dataset, sorted(order[held:]))

    def before_optimizer_step(self, ctx: StepContext) -> None:
        if self.rounds_done < len(self.round_at) and ctx.step == self.round_at[self.rounds_done]:
            start = time.perf_counter()
            event, params = self.allocation_round(ctx.model, ctx.step)
            if params:
                ctx.scheduler.add_param_group(params, weight_decay=float(self.task.weight_decay),
                                              policy=self.options["new_group_lr"])
            # wall seconds go to allocation_seconds only: the growth log is deterministic (a
            # resumed run writes the same file)
            self.allocation_seconds += time.perf_counter() - start
            self.growth_log.append(event)

    # -- one round -------------------------------------------------------------------------
    def allocation_round(self, model: nn.Module, step: int) -> tuple[dict, list[nn.Parameter]]:
        """Score, prune, reallocate (module docstring); return the growth-log event and the new
        parameters."""
        names, layers = list(self.layers), list(self.layers.values())
        device = layers[0].gate.device
        live = torch.cat([layer.gate for layer in layers])
        configs, ranks = ablation_configs(live)
        batch = {k: v.to(device) for k, v in self.val_batch.items()}
        scores, forwards = ablation_scores(model, layers, configs, batch, self.loss_fn,
                                           int(self.options["examples_per_forward"]))
        imp = importance(scores).cpu()
        ranks = ranks.cpu()
        offsets = [0]
        for layer in layers:
            offsets.append(offsets[-1] + layer.slots)
        owner = torch.bucketize(ranks, torch.tensor(offsets[1:]), right=True)  # module of each live rank

        n_prune = min(int(self.options["prune_per_module"]) * len(layers), ranks.numel())
        chosen = lowest(imp, n_prune)
        pruned: dict[int, list[int]] = {}
        for pos in chosen:
            m = int(owner[pos])
            pruned.setdefault(m, []).append(int(ranks[pos]) - offsets[m])
        means = {m: float(imp[owner == m].mean()) for m in set(owner.tolist())}
        keep = [m for m in range(len(layers)) if m in means and m not in pruned]
        added = distribute(len(chosen), keep, means)

        params: list[nn.Parameter] = []
        for m, slots in pruned.items():
            layers[m].prune(slots)
        for m, count in added.items():
            params += layers[m].add_ranks(count)
        self.rounds_done += 1
        total = sum(layer.rank for layer in layers)
        event = {
            "step": step,
            "round": self.rounds_done,
            "k": len(chosen),  # n_A: ranks pruned (and re-given when some module lost none)
            "modules": [names[m] for m in sorted(set(pruned) | set(added))],  # modules whose rank changed
            "configurations": int(configs.shape[0]),
            "forwards": forwards,
            "score_full": float(scores[0]),
            "threshold": float(imp[chosen].max()) if chosen else None,
            "pruned": {names[m]: slots for m, slots in sorted(pruned.items())},
            "added": {names[m]: count for m, count in sorted(added.items())},
            "total_rank": total,
            "budget": self.init_rank * len(layers),
        }
        return event, params

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "rounds_done": self.rounds_done}

    def restore_structure(self, model: nn.Module, scheduler, state: dict) -> None:
        """Re-add each round's new ranks (one group per round, as in training); gates are buffers
        and come back with the checkpoint's tensors."""
        for event in state["growth_log"]:
            params = [p for name, count in event["added"].items() for p in self.layers[name].add_ranks(count)]
            if params:
                scheduler.add_param_group(params, weight_decay=float(self.task.weight_decay),
                                          policy=self.options["new_group_lr"])

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.rounds_done = int(state["rounds_done"])

    # -- reporting -------------------------------------------------------------------------
    def rank_pattern(self, model: nn.Module) -> dict[str, int]:
        return {name: layer.rank for name, layer in (self.layers or gated_layers(model)).items()}

    def summary(self, model: nn.Module) -> dict:
        facts = super().summary(model)
        facts.update(
            target_total_rank=self.init_rank * facts.get("adapted_modules", 0),
            rounds=self.rounds_done,
            pruned_ranks=sum(len(s) for e in self.growth_log for s in e["pruned"].values()),
            added_ranks=sum(c for e in self.growth_log for c in e["added"].values()),
            round_steps=list(self.round_at),
        )
        return facts

    # -- adapters --------------------------------------------------------------------------
    def save_adapter(self, model: nn.Module, folder: str) -> None:
        layers = self.layers or gated_layers(model)
        first = next(iter(layers.values()))
        config = {
            "method": self.name,
            "init_rank": first.init_rank,
            "alpha": first.lora_alpha,
            "dropout": first.lora_dropout.p if isinstance(first.lora_dropout, nn.Dropout) else 0.0,
            "blocks": {name: layer.blocks for name, layer in layers.items()},
            "rank_pattern": {name: layer.rank for name, layer in layers.items()},
        }
        tensors = {n: p for n, p in model.named_parameters() if p.requires_grad}
        tensors.update({f"{name}.gate": layer.gate for name, layer in layers.items()})
        lowrank.save_folder(folder, config, tensors)

    @staticmethod
    def load_adapter(model: nn.Module, folder: str) -> nn.Module:
        """Rebuild the saved blocks and gates in a fresh ``model`` and load the trained tensors."""
        config = lowrank.read_config(folder)
        layers = inject(model, list(config["blocks"]), config["init_rank"], config["alpha"], config["dropout"])
        for name, sizes in config["blocks"].items():
            for size in sizes[1:]:
                layers[name].add_ranks(size)
        lowrank.load_tensors_into(model, folder)
        for name, layer in layers.items():
            if layer.rank != config["rank_pattern"][name]:
                raise ValueError(f"{name}: rank {layer.rank} != saved {config['rank_pattern'][name]}")
        return model
