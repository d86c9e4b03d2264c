"""Side-by-side speed and memory of every method (``make bench``; ``scripts/bench.py`` is the CLI).

What runs. Every method trains a DeBERTaV2 with random weights (``model=tiny`` with its sizes
overridden: preset ``tiny`` = conf/model/tiny.yaml, ``base`` = DeBERTaV3-base dimensions, hidden
768, 12 layers, 12 heads, intermediate 3072, 72 adapted linears) on synthetic batches of
``batch`` sequences of exactly ``seq_len`` tokens, through the *real* training loop
(``adarank.training.loop.train``: autocast, loss + extra_loss, backward, clipping,
before_optimizer_step, optimizer.step, scheduler.step, after_optimizer_step, zero_grad).

Side by side. All methods live in ONE process and take turns step by step: each method's
``train`` runs in its own thread, and the collate function of its data loader (called once per
step, before the step starts) hands the turn to the next method and waits for its own turn.
Only one thread computes at any time, so every method sees the same machine state within a
round of steps, and the ratios (to LoRA, to the floor) are what to read on a shared machine.
A step is timed from the moment its batch is ready (turn received) to the request for the next
batch (the previous step fully done: optimizer.zero_grad, loss.item, logging), or to the final
evaluation for the last step; the first ``warmup`` steps of every method are excluded.

Growth inside the window. The task's schedule is rewritten so that rank events happen among
the timed steps: init_warmup (t0) = ``warmup``, incre_interval = ``interval``, the LR warm-up =
``warmup``, AdaLoRA's t_init = ``warmup``, t_final = a quarter of the window, ΔT = ``interval``;
``top_h`` (IncreLoRA and TriAdaptLoRA fixed) defaults to the number of adapted modules so that
the fixed-k methods reach the same final budget r_ref x M as LoRA's r_ref x M within the window
(the dynamic thresholds follow their own schedule; the final total rank is reported).
``steady`` instead starts growth at step 1 with interval 1, so that the fixed-k methods finish
growing during the warm-up and every timed step runs at the final rank (the steady state that
dominates a real run, whose growth events are hundreds of steps apart).

Memory. Peak memory is measured per method in a fresh subprocess running the same schedule
alone (so one method's peak cannot hide another's): VmHWM of /proc/self/status on CPU (the
resident high-water mark of the process's own address space; ``ru_maxrss`` is not used because
Linux carries it across fork/exec), ``torch.cuda.max_memory_allocated`` on CUDA. Both the
absolute peak and the peak minus the resident size once the model is built are reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adarank.data import split_sizes
from adarank.methods.base import Method

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
PRESETS = {
    "tiny": {},  # conf/model/tiny.yaml as is: hidden 32, 2 layers, 2 heads, intermediate 64
    "base": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072},
}
#: bench label -> (registry method, threshold)
METHODS = {
    "floor": (None, "none"),
    "full": ("full", "none"),
    "bitfit": ("bitfit", "none"),
    "hadapter": ("hadapter", "none"),
    "lora": ("lora", "none"),
    "adalora": ("adalora", "none"),
    "increlora": ("increlora", "fixed"),
    "triadapt-fixed": ("triadapt", "fixed"),
    "triadapt-linear": ("triadapt", "linear"),
    "triadapt-nonlinear": ("triadapt", "nonlinear"),
    "dylora": ("dylora", "none"),
    "alora": ("alora", "none"),
    "dora": ("dora", "none"),
    "rslora": ("rslora", "none"),
    "pissa": ("pissa", "none"),
    "loraplus": ("loraplus", "none"),
    "eva": ("eva", "none"),
    "sora": ("sora", "none"),
    # TriAdaptLoRA-fixed with the straightforward storage (4 parameters per block and module,
    # no fast paths): the oracle of tests/test_triadapt_fast.py, to see what the fast paths buy
    "triadapt-plain": ("triadapt", "fixed"),
    # IncreLoRA in the official layout, one parameter per rank (docs/baselines.md C17), to see what
    # one block per growth buys
    "increlora-per-rank": ("increlora", "fixed"),
}
#: labels whose method runs with ``fast = False``
PLAIN = ("triadapt-plain",)
#: labels whose IncreLoRA keeps one parameter per rank (``rank_blocks = False``)
PER_RANK = ("increlora-per-rank",)
DEFAULT_METHODS = tuple(METHODS)
#: what `make bench` runs on the base preset (the methods the performance targets name)
BASE_DEFAULT_METHODS = ("floor", "lora", "increlora", "triadapt-fixed", "triadapt-linear")
SCHEMA_VERSION = 1


class Floor(Method):
    """The floor: frozen backbone, only the head (classifier, pooler) trains."""

    name = "floor"

    def prepare(self, model):
        from adarank.models import freeze_all_but_heads

        freeze_all_but_heads(model, self.model_cfg.head_modules)
        return model


@dataclass
class BenchConfig:
    preset: str = "tiny"
    batch: int = 8
    seq_len: int = 64
    steps: int = 24  # timed steps per method
    warmup: int = 4  # untimed steps per method (before them no growth can happen)
    interval: int | None = None  # growth / masking interval; None = max(1, steps // 16)
    top_h: int | None = None  # modules per fixed-k event; None = number of adapted modules
    task: str = "mnli"
    methods: tuple[str, ...] = DEFAULT_METHODS
    device: str = "auto"
    precision: str | None = None  # None = bf16 on CUDA, fp32 on CPU
    threads: int | None = 1  # torch intra-op threads on CPU (None = leave as is)
    seed: int = 0
    memory: bool = True  # peak memory per method in a fresh subprocess
    #: growth from step 1 with interval 1 (init_warmup 0), so that the fixed-k methods reach their
    #: final rank inside the warm-up and every timed step runs at the final rank
    steady: bool = False
    #: count the operators of a step at the final rank (adarank.tools.op_count), in a separate pass
    ops: bool = True
    #: whole-run mode: every method trains ``steps`` steps (``warmup`` 0 times them all) with the
    #: task's own schedule rescaled to them (adarank.schedule_scaling, train.schedule=scaled)
    whole_run: bool = False
    #: full training-set size that sets the scaling factor (None = GLUE_TRAIN_SIZES[task])
    train_size: int | None = None

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    @property
    def growth_interval(self) -> int:
        if self.steady:
            return 1
        return self.interval or max(1, self.steps // 16)

    @property
    def growth_start(self) -> int:
        """init_warmup (t0) of the growing methods."""
        return 0 if self.steady else self.warmup

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out["methods"] = list(self.methods)
        out["interval"] = self.growth_interval
        return out


#: training examples of the GLUE tasks (the published split sizes): T_paper of the whole-run mode
GLUE_TRAIN_SIZES = {task: n for task, n in split_sizes.TRAIN.items() if task != "squad_v2"}


# -- configuration ---------------------------------------------------------------------------
def compose_cfg(bc: BenchConfig, label: str, device: torch.device):
    """The harness config of one benchmarked method (Hydra compose of conf/ + overrides)."""
    from hydra import compose, initialize_config_dir

    registry_name, threshold = METHODS[label]
    preset = PRESETS[bc.preset]
    common = [
        f"task={bc.task}",
        f"method={registry_name or 'full'}",
        f"threshold={threshold}",
        "model=tiny",
        *[f"model.{k}={v}" for k, v in preset.items()],
        f"seed={bc.seed}",
        f"task.batch_size={bc.batch}",
        f"task.max_seq_length={bc.seq_len}",
        f"train.eval_interval={bc.total_steps + 1}",
        f"train.log_interval={bc.total_steps + 1}",
        "train.progress=off",
        f"train.device={device.type}",
        f"train.precision={bc.precision or ('bf16' if device.type == 'cuda' else 'fp32')}",
        # the turn-taking collate (run_threads) is the bench's step clock: it must run in the runner's
        # own thread, never in a DataLoader worker process (train.num_workers=auto means 2 on CUDA,
        # where a forked worker cannot synchronise CUDA and the turns would wait forever)
        "train.num_workers=0",
        "logger=none",
    ]
    if registry_name == "eva":  # EVA's SVD batches must not look like training batches to the turn-taking collate
        common.append(f"method.batch_size={bc.batch + 1}")
    if bc.whole_run:
        return compose_whole_run(bc, label, common)
    overrides = [
        *common,
        f"task.warmup_steps={bc.warmup}",
        f"task.init_warmup={bc.growth_start}",
        f"task.incre_interval={bc.growth_interval}",
        f"task.adalora.init_warmup={bc.warmup}",
        f"task.adalora.final_warmup={max(1, bc.steps // 4)}",
        f"task.adalora.mask_interval={bc.growth_interval}",
        f"task.adalora.warmup_steps={bc.warmup}",
        "task.adalora.warmup_ratio=null",
    ]
    modules = num_adapted_modules(PRESETS[bc.preset].get("num_layers", None) or None)
    overrides.append(f"task.top_h={bc.top_h or modules}")
    if registry_name == "alora":
        overrides += alora_overrides(bc)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return cfg, registry_name, threshold


def alora_overrides(bc: BenchConfig) -> list[str]:
    """ALoRA's rounds on the bench's growth clock: 2 batches held out as B_val (so that every
    training batch stays full), the first round at the end of the warm-up, then one every
    interval, two of them (enough for allocation_s_per_event, the wall time of one round)."""
    epoch = bc.total_steps  # build_runner adds the held-out rows: the rest is one epoch of full batches
    rounds = min(2, max(1, (bc.steps - 1) // bc.growth_interval))  # 2 rounds: the per-round cost, briefly
    return [f"method.val_examples={2 * bc.batch}", f"method.k1_epochs={max(1, bc.warmup) / epoch}",
            f"method.k2_epochs={bc.growth_interval / epoch}", f"method.rounds={rounds}"]


def compose_whole_run(bc: BenchConfig, label: str, overrides: list[str]):
    """Whole-run mode: the task's own schedule (LR warm-up, t0 and growth interval, top_h,
    AdaLoRA's t_init / t_final / ΔT) rescaled to the bench's steps by train.schedule=scaled's
    rule (adarank.schedule_scaling), so every method keeps the shape of its full-length run."""
    from hydra import compose, initialize_config_dir

    from adarank import schedule_scaling

    registry_name, threshold = METHODS[label]
    size = bc.train_size or GLUE_TRAIN_SIZES.get(bc.task)
    if size is None:
        raise ValueError(f"whole-run mode needs the training-set size of task {bc.task!r} (train_size)")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        task_batch = int(compose("config", overrides=[f"task={bc.task}"]).task.batch_size)
        cfg = compose("config", overrides=[*overrides, "train.schedule=scaled"])
    from omegaconf import open_dict

    with open_dict(cfg):  # T_paper counts the task's own batches, not the bench's
        cfg.task.batch_size = task_batch
        schedule_scaling.apply(cfg, bc.total_steps, size)
        cfg.task.batch_size = bc.batch
    return cfg, registry_name, threshold


def num_adapted_modules(model_cfg_or_layers) -> int:
    """6 linears per encoder layer (W_q, W_k, W_v, attention output, intermediate, output)."""
    if model_cfg_or_layers is None:  # the tiny preset: conf/model/tiny.yaml's layer count
        from omegaconf import OmegaConf

        model_cfg_or_layers = OmegaConf.load(CONF_DIR / "model" / "tiny.yaml").num_layers
    if isinstance(model_cfg_or_layers, int):
        return 6 * model_cfg_or_layers
    return 6 * int(model_cfg_or_layers.num_layers)


# -- synthetic data ----------------------------------------------------------------------------
def synthetic_dataset(bc: BenchConfig, vocab: int, num_labels: int) -> list[dict]:
    """``total_steps x batch`` fixed-length examples (random token ids, random labels)."""
    gen = torch.Generator().manual_seed(bc.seed)
    n = bc.total_steps * bc.batch
    ids = torch.randint(1000, vocab, (n, bc.seq_len), generator=gen)
    ids[:, 0] = 101  # [CLS]
    labels = torch.randint(0, max(num_labels, 2), (n,), generator=gen)
    if num_labels == 1:
        labels = labels.float()
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)]


def stack(features: list[dict]) -> dict:
    ids = torch.stack([f["input_ids"] for f in features])
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.stack([f["labels"] for f in features]),
    }


# -- turn taking -------------------------------------------------------------------------------
class Aborted(RuntimeError):
    """Raised in a runner thread when another runner failed."""


class Turns:
    """Round-robin turns between the runner threads: exactly one computes at a time."""

    def __init__(self, count: int):
        self.cond = threading.Condition()
        self.active = list(range(count))
        self.turn = 0
        self.failed: BaseException | None = None

    def wait(self, who: int) -> None:
        with self.cond:
            while self.turn != who and self.failed is None:
                self.cond.wait()
            if self.failed is not None and self.turn != who:
                raise Aborted("another benchmarked method failed") from self.failed

    def _advance(self, who: int) -> None:
        if not self.active:
            self.turn = -1
        else:
            later = [i for i in self.active if i > who]
            self.turn = later[0] if later else self.active[0]
        self.cond.notify_all()

    def pass_on(self, who: int) -> None:
        with self.cond:
            self._advance(who)

    def leave(self, who: int, error: BaseException | None = None) -> None:
        with self.cond:
            if who in self.active:
                self.active.remove(who)
            if error is not None and self.failed is None:
                self.failed = error
            if self.turn == who:
                self._advance(who)


@dataclass
class Runner:
    """One method: its model, its method object, its per-step records."""

    label: str
    index: int
    cfg: object
    method: object
    model: torch.nn.Module
    device: torch.device
    trainable_start: int = 0
    records: list[dict] = field(default_factory=list)
    error: BaseException | None = None
    _tick: float | None = None
    _alloc0: float = 0.0
    _events0: int = 0

    def _begin(self) -> None:
        self._tick = time.perf_counter()
        self._alloc0 = float(self.method.allocation_seconds)
        self._events0 = len(self.method.growth_log)

    def _end(self) -> None:
        if self._tick is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - self._tick
        self.records.append(
            {
                "seconds": seconds,
                "allocation_seconds": float(self.method.allocation_seconds) - self._alloc0,
                "events": len(self.method.growth_log) - self._events0,
                "total_rank": current_total_rank(self.method, self.model),
                "scoring": bool(getattr(self.method, "budget_open", False)),
            }
        )
        self._tick = None


def current_total_rank(method, model) -> int | None:
    layers = getattr(method, "layers", None)
    if layers:
        return int(sum(int(layer.rank) for layer in layers.values()))
    if getattr(method, "name", "") == "lora":
        return int(method.task.reference_rank) * num_adapted_modules(method.model_cfg)
    return None


def build_runner(bc: BenchConfig, label: str, index: int, device: torch.device) -> tuple[Runner, list]:
    from adarank import checks
    from adarank.methods import method_class
    from adarank.models import count_trainable, load_model

    cfg, registry_name, threshold = compose_cfg(bc, label, device)
    resolved = checks.check_static(cfg)
    if registry_name is not None:
        checks.check_schedule(cfg, resolved, bc.total_steps, bc.total_steps * bc.batch)
    torch.manual_seed(bc.seed)
    model = load_model(cfg.model, "sequence_classification", int(cfg.task.num_labels), float(cfg.task.cls_dropout))
    from omegaconf import OmegaConf

    threshold_cfg = OmegaConf.create({**OmegaConf.to_container(cfg.threshold), "name": resolved or "none"})
    klass = Floor if registry_name is None else method_class(registry_name)
    method = klass(cfg.method, cfg.task, threshold_cfg, cfg.model)
    if label in PLAIN:
        method.fast = False
    if label in PER_RANK:
        method.rank_blocks = False
    model = method.prepare(model).to(device)
    runner = Runner(label, index, cfg, method, model, device, trainable_start=count_trainable(model))
    data = synthetic_dataset(bc, int(cfg.model.vocab_size), int(cfg.task.num_labels))
    if registry_name == "alora":  # ALoRA's held-out batch comes on top of the training rows
        data += data[: 2 * bc.batch]
    return runner, data


def run_threads(bc: BenchConfig, runners: list[Runner], datasets: list[list]) -> None:
    """Train every runner through the real loop, taking turns step by step."""
    from adarank.data.task_data import TaskData
    from adarank.tracking import NullTracker
    from adarank.training.loop import train

    turns = Turns(len(runners))

    def work(runner: Runner, data: list) -> None:
        me = runner.index

        def collate(features):
            if len(features) != bc.batch:  # ALoRA's held-out scoring batch, not a training step
                return stack(features)
            runner._end()
            turns.pass_on(me)
            turns.wait(me)
            batch = stack(features)
            runner._begin()
            return batch

        def evaluate(model, device, final=True):
            runner._end()
            return {runner.cfg.task.primary_metric: 0.0}

        task_data = TaskData(data, collate, evaluate, "sequence_classification", int(runner.cfg.task.num_labels))
        error = None
        try:
            turns.wait(me)
            train(runner.model, runner.method, task_data, runner.cfg, bc.total_steps, io.StringIO(),
                  NullTracker(), runner.device)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            error = runner.error = err
        finally:
            turns.leave(me, error)

    threads = [
        threading.Thread(target=work, args=(r, d), name=f"bench-{r.label}", daemon=True)
        for r, d in zip(runners, datasets)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in runners:
        if r.error is not None and not isinstance(r.error, Aborted):
            raise RuntimeError(f"benchmark of {r.label} failed: {r.error!r}") from r.error


# -- operator counts ---------------------------------------------------------------------------
#: the counting pass: steady schedule (final rank reached in the warm-up), a small batch (the
#: number of operators does not depend on the batch or the sequence length)
OPS_SHAPE = dict(batch=2, seq_len=16, warmup=10, steps=3, steady=True, memory=False, ops=False, whole_run=False)


def count_method_ops(bc: BenchConfig, label: str, device: torch.device) -> dict:
    """Operators per training step of one method (``adarank.tools.op_count``), counted over a steady
    run of ``OPS_SHAPE``: the medians over its last ``steps`` steps (at the final rank), plus
    IncreLoRA's scoring per step while its budget is open and the growth hooks per event."""
    from adarank.tools.op_count import OpCounter, count_step, instrument
    from adarank.training.optim import GrowingLinearSchedule, build_optimizer

    cbc = dataclasses.replace(bc, **OPS_SHAPE)
    runner, data = build_runner(cbc, label, 0, device)
    method, model, cfg = runner.method, runner.model, runner.cfg
    total = cbc.total_steps
    method.set_total_steps(total)
    optimizer = build_optimizer(method.optimizer_groups(model, float(cfg.task.weight_decay)), method.learning_rate(),
                                str(cfg.train.get("optimizer", "adamw_torch")))
    warmup = method.lr_warmup_steps(total)
    scheduler = GrowingLinearSchedule(optimizer, cfg.task.warmup_steps if warmup is None else warmup, total)
    counter = OpCounter()
    instrument(method, counter)
    model.train()
    steps = []
    for step in range(total):
        batch = {k: v.to(device) for k, v in stack(data[step * cbc.batch : (step + 1) * cbc.batch]).items()}
        events = len(method.growth_log)
        counts = count_step(counter, method, model, optimizer, scheduler, batch, step, total,
                            float(cfg.train.max_grad_norm))
        counts["event"] = len(method.growth_log) > events
        steps.append(counts)

    def median(rows, phase, kind="kernels"):
        values = [r.get(phase, {}).get(kind, 0) for r in rows]
        return int(statistics.median(values)) if values else None

    final = steps[cbc.warmup :]
    scoring = [r for r in steps if r.get("scoring", {}).get("ops")]
    growth = [r for r in steps if r["event"]]
    out = {
        "ops_step": median(final, "total", "ops"),
        "kernels_step": median(final, "total"),
        **{f"kernels_{phase}": median(final, phase) for phase in ("forward", "regulariser", "update", "hooks")},
        "kernels_scoring_per_step": median(scoring, "scoring") if scoring else None,
        "kernels_hooks_per_event": median(growth, "hooks") if growth else None,
        "ops_total_rank": current_total_rank(method, model),
    }
    return out


# -- summaries ---------------------------------------------------------------------------------
def summarise(bc: BenchConfig, runner: Runner) -> dict:
    from adarank.models import count_trainable

    timed = runner.records[bc.warmup :]
    seconds = [r["seconds"] for r in timed]
    alloc = [r["allocation_seconds"] for r in timed]
    method = runner.method
    growing = [r["seconds"] for r in timed if r["scoring"]]
    settled = [r["seconds"] for r in timed if not r["scoring"]]
    event_steps = [r for r in timed if r["events"]]
    out = {
        "method": runner.label,
        "steps_timed": len(timed),
        "median_step_s": statistics.median(seconds),
        "min_step_s": min(seconds),
        "mean_step_s": statistics.fmean(seconds),
        "total_step_s": sum(seconds),
        "max_step_s": max(seconds),
        "allocation_s_total": sum(alloc),
        "allocation_s_per_step": statistics.fmean(alloc),
        "allocation_share": sum(alloc) / sum(seconds),
        "allocation_s_whole_run": float(method.allocation_seconds),
        "events_timed": sum(r["events"] for r in timed),
        "events_total": len(method.growth_log),
        "allocation_s_per_event": (
            statistics.fmean(r["allocation_seconds"] for r in event_steps) if event_steps else None
        ),
        "median_step_s_while_scoring": statistics.median(growing) if growing else None,
        "median_step_s_after_budget": statistics.median(settled) if growing and settled else None,
        "total_rank_end": current_total_rank(method, runner.model),
        "trainable_params_start": runner.trainable_start,
        "trainable_params_end": count_trainable(runner.model),
        "step_seconds": seconds,
    }
    if bc.whole_run:  # the rescaled schedule this method ran with
        task = runner.cfg.task
        keys = ("warmup_steps", "init_warmup", "incre_interval", "top_h")
        out["schedule"] = {k: task.get(k) for k in keys}
        out["schedule"].update({f"adalora.{k}": task.adalora.get(k) for k in ("init_warmup", "final_warmup",
                                                                                "mask_interval", "warmup_steps")})
    if runner.device.type == "cuda":
        out["tokens_per_s"] = bc.batch * bc.seq_len / out["median_step_s"]
    return out


def add_ratios(rows: list[dict]) -> None:
    by = {r["method"]: r for r in rows}
    for ref in ("lora", "adalora", "increlora"):  # whole-run totals (same steps, interleaved)
        if ref in by:
            for r in rows:
                r[f"total_x_{ref}"] = r["total_step_s"] / by[ref]["total_step_s"]
    for ref, key in (("lora", "x_lora"), ("floor", "x_floor")):
        base = by.get(ref)
        for r in rows:
            r[key] = r["median_step_s"] / base["median_step_s"] if base else None
            if ref == "lora":
                r["min_x_lora"] = r["min_step_s"] / base["min_step_s"] if base else None
    add_kernel_deltas(rows)
    lora_mem = by.get("lora", {}).get("peak_memory_mb")
    for r in rows:
        if lora_mem and r.get("peak_memory_mb"):
            r["memory_x_lora"] = r["peak_memory_mb"] / lora_mem


def add_kernel_deltas(rows: list[dict]) -> None:
    """``extra_kernels_x_lora``: a row's kernels per step minus LoRA's (when both were counted)."""
    lora = next((r.get("kernels_step") for r in rows if r["method"] == "lora"), None)
    for r in rows:
        if lora is not None and r.get("kernels_step") is not None:
            r["extra_kernels_x_lora"] = r["kernels_step"] - lora


# -- memory in a fresh process -----------------------------------------------------------------
def _vm_kib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory_single(bc: BenchConfig, label: str) -> dict:
    """Run one method alone (this process must be fresh) and return its memory figures in MiB."""
    device = pick(bc.device)
    before = _vm_kib("VmRSS")
    runner, data = build_runner(bc, label, 0, device)
    built = _vm_kib("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        built_cuda = torch.cuda.memory_allocated(device)
    run_threads(bc, [runner], [data])
    out = {"method": label}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        out.update(peak_memory_mb=peak / 2**20, peak_over_model_mb=(peak - built_cuda) / 2**20, memory_kind="cuda_max_allocated")
    else:
        hwm = _vm_kib("VmHWM")
        out.update(
            peak_memory_mb=hwm / 1024 if hwm else None,
            peak_over_model_mb=(hwm - built) / 1024 if hwm and built else None,
            rss_before_model_mb=before / 1024 if before else None,
            memory_kind="cpu_rss_hwm",
        )
    return out


def peak_memory_subprocess(bc: BenchConfig, label: str) -> dict:
    payload = json.dumps({**bc.as_dict(), "methods": [label], "memory": False})
    env = {**os.environ, "OMP_NUM_THREADS": str(bc.threads or os.environ.get("OMP_NUM_THREADS", ""))}
    if not bc.threads:
        env.pop("OMP_NUM_THREADS")
    proc = subprocess.run(
        [sys.executable, "-m", "adarank.tools.bench", "--memory-child", payload],
        capture_output=True, text=True, env=env, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory run of {label} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- driver ------------------------------------------------------------------------------------
def pick(name: str) -> torch.device:
    from adarank.training.loop import pick_device

    return pick_device(name)


def machine_info(device: torch.device) -> dict:
    info = {
        "device": device.type,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with contextlib.suppress(OSError):
        info["load_average"] = list(os.getloadavg())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_bench(bc: BenchConfig, log=print) -> dict:
    unknown = [m for m in bc.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown bench method(s) {unknown}; choose from {list(METHODS)}")
    if bc.preset not in PRESETS:
        raise ValueError(f"unknown preset {bc.preset!r}; choose one of {list(PRESETS)}")
    if bc.steps < 1 or bc.warmup < (0 if bc.whole_run else 1):
        raise ValueError("steps must be >= 1, and warmup >= 1 (>= 0 in whole-run mode)")
    if bc.threads:
        torch.set_num_threads(int(bc.threads))
    device = pick(bc.device)
    started = time.time()
    memory = {}
    if bc.memory:  # first, while this process is still small
        for label in bc.methods:
            log(f"[bench] peak memory of {label} (fresh process) ...")
            memory[label] = peak_memory_subprocess(bc, label)
    runners, datasets = [], []
    for i, label in enumerate(bc.methods):
        log(f"[bench] building {label} ...")
        runner, data = build_runner(bc, label, i, device)
        runners.append(runner)
        datasets.append(data)
    log(f"[bench] {len(runners)} methods x {bc.total_steps} steps, taking turns ...")
    run_threads(bc, runners, datasets)
    rows = []
    for runner in runners:
        row = summarise(bc, runner)
        row.update({k: v for k, v in memory.get(runner.label, {}).items() if k != "method"})
        rows.append(row)
    if bc.ops:
        for row in rows:
            log(f"[bench] counting the operators of {row['method']} ...")
            row.update(count_method_ops(bc, row["method"], device))
    add_ratios(rows)
    return {
        "schema_version": SCHEMA_VERSION,
        "config": bc.as_dict(),
        "machine": machine_info(device),
        "adapted_modules": num_adapted_modules(runners[0].cfg.model),
        "budget_total_rank": int(runners[0].cfg.task.reference_rank) * num_adapted_modules(runners[0].cfg.model),
        "wall_seconds": time.time() - started,
        "results": rows,
    }


def _fmt(value, spec: str, missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def markdown_table(report: dict) -> str:
    head = (
        "| method | median s | min s | × LoRA | × floor | alloc s/step | alloc s total | events | "
        "final rank | peak MiB | peak − model MiB | trainable start → end |"
    )
    lines = [head, "|" + "---|" * 12]
    cuda = report["machine"]["device"] == "cuda"
    if cuda:
        lines[0] = lines[0][:-1] + " tokens/s |"
        lines[1] += "---|"
    for r in report["results"]:
        cells = [
            r["method"],
            _fmt(r["median_step_s"], ".4f"),
            _fmt(r["min_step_s"], ".4f"),
            _fmt(r.get("x_lora"), ".3f"),
            _fmt(r.get("x_floor"), ".3f"),
            _fmt(r["allocation_s_per_step"], ".2e"),
            _fmt(r["allocation_s_total"], ".3f"),
            str(r["events_timed"]),
            _fmt(r["total_rank_end"], "d"),
            _fmt(r.get("peak_memory_mb"), ".0f"),
            _fmt(r.get("peak_over_model_mb"), ".0f"),
            f"{r['trainable_params_start']:,} → {r['trainable_params_end']:,}",
        ]
        if cuda:
            cells.append(_fmt(r.get("tokens_per_s"), ".0f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ops_table(report: dict) -> str:
    """The operator counts of the rows (empty when they were not counted)."""
    rows = [r for r in report["results"] if r.get("kernels_step") is not None]
    if not rows:
        return ""
    lines = [
        "| method | ops/step | kernels/step | + kernels vs LoRA | forward | regulariser | backward + AdamW | hooks "
        "| scoring/step (budget open) | hooks/growth event | rank |",
        "|---|" + "---:|" * 10,
    ]
    for r in rows:
        cells = [r["method"], _fmt(r["ops_step"], ","), _fmt(r["kernels_step"], ","),
                 _fmt(r.get("extra_kernels_x_lora"), "+,"), _fmt(r["kernels_forward"], ","),
                 _fmt(r["kernels_regulariser"], ","), _fmt(r["kernels_update"], ","), _fmt(r["kernels_hooks"], ","),
                 _fmt(r["kernels_scoring_per_step"], ","), _fmt(r["kernels_hooks_per_event"], ","),
                 _fmt(r["ops_total_rank"], "d")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def whole_run_table(report: dict) -> str:
    """Whole-run mode: totals per method and their ratios (the paper's efficiency claim)."""
    head = ("| method | train s | mean step s | alloc s | alloc share | events | final rank | peak MiB "
            "| × LoRA | × AdaLoRA | × IncreLoRA |")
    lines = [head, "|---|" + "---:|" * 10]
    for r in report["results"]:
        cells = [r["method"], _fmt(r["total_step_s"], ".1f"), _fmt(r["mean_step_s"], ".3f"),
                 _fmt(r["allocation_s_total"], ".2f"), _fmt(r["allocation_share"], ".2%"), str(r["events_timed"]),
                 _fmt(r["total_rank_end"], "d"), _fmt(r.get("peak_memory_mb"), ".0f"),
                 _fmt(r.get("total_x_lora"), ".3f"), _fmt(r.get("total_x_adalora"), ".3f"),
                 _fmt(r.get("total_x_increlora"), ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)
    return path


#: keys every result row carries (the smoke test checks them)
ROW_KEYS = (
    "method", "steps_timed", "median_step_s", "min_step_s", "x_lora", "x_floor",
    "allocation_s_total", "allocation_s_per_step", "events_timed", "total_rank_end",
    "trainable_params_start", "trainable_params_end", "step_seconds",
)


def _memory_child(payload: str) -> None:
    data = json.loads(payload)
    data["methods"] = tuple(data["methods"])
    bc = BenchConfig(**data)
    if bc.threads:
        torch.set_num_threads(int(bc.threads))
    with contextlib.redirect_stdout(sys.stderr):
        out = peak_memory_single(bc, bc.methods[0])
    print(json.dumps(out))


if __name__ == "__main__":  # python -m adarank.tools.bench --memory-child '<json>' (internal)
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-child":
        _memory_child(sys.argv[2])
    else:
        sys.exit("use scripts/bench.py")
