"""Where a training step's time goes, per method: forward (+ extra loss), backward, clipping,
growth hook, AdamW + LR step, zero_grad. Milliseconds, median over the timed steps, methods
taking turns step by step in one process (the same batch for all).

The methods are built as `make bench` builds them (``adarank.tools.bench.build_runner``), in steady
mode (fixed-k methods reach their final rank during the warm-up), and stepped by hand in the
order of ``adarank.training.loop.optimization_step`` so that each phase can be timed.

    .venv/bin/python scripts/bench_phases.py --methods lora,triadapt-fixed,triadapt-plain
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from adarank.tools.bench import METHODS, BenchConfig, build_runner, stack
from adarank.methods.base import StepContext
from adarank.training.optim import GrowingLinearSchedule, build_optimizer

PHASES = ("forward", "backward", "clip", "grow", "optimizer", "zero_grad")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default="lora,triadapt-fixed,triadapt-plain", help=f"comma list of {list(METHODS)}")
    p.add_argument("--preset", default="base", help="base | tiny")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps (growth happens here); > 8")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bc = BenchConfig(preset=args.preset, batch=args.batch, seq_len=args.seq_len, steps=args.steps,
                     warmup=args.warmup, steady=True, memory=False)
    device = torch.device("cpu")
    total = bc.total_steps
    runs = []
    for index, label in enumerate(args.methods.split(",")):
        print(f"building {label} ...", file=sys.stderr, flush=True)
        runner, data = build_runner(bc, label, index, device)
        method, model = runner.method, runner.model
        model.train()
        method.set_total_steps(total)
        optimizer = build_optimizer(method.optimizer_groups(model, float(runner.cfg.task.weight_decay)),
                                    method.learning_rate())
        scheduler = GrowingLinearSchedule(optimizer, bc.warmup, total)
        runs.append((label, method, model, optimizer, scheduler, {phase: [] for phase in PHASES}))
    batch = stack(data[: bc.batch])
    for step in range(total):
        for label, method, model, optimizer, scheduler, times in runs:
            marks = [time.perf_counter()]
            loss = model(**batch).loss
            extra = method.extra_loss(model)
            if extra is not None:
                loss = loss + extra
            marks.append(time.perf_counter())
            loss.backward()
            marks.append(time.perf_counter())
            torch.nn.utils.clip_grad_norm_([q for g in optimizer.param_groups for q in g["params"]], 1.0)
            marks.append(time.perf_counter())
            ctx = StepContext(step, total, model, optimizer, scheduler)
            method.before_optimizer_step(ctx)
            marks.append(time.perf_counter())
            optimizer.step()
            scheduler.step()
            method.after_optimizer_step(ctx)
            marks.append(time.perf_counter())
            optimizer.zero_grad(set_to_none=True)
            marks.append(time.perf_counter())
            if step >= bc.warmup:
                for phase, start, end in zip(PHASES, marks, marks[1:]):
                    times[phase].append(end - start)
    print(f"\n{args.preset} preset, batch {bc.batch} x {bc.seq_len} tokens, {bc.steps} timed steps, "
          f"{torch.get_num_threads()} thread(s), medians in ms\n")
    print("| method | " + " | ".join(PHASES) + " | step | optimizer tensors | total rank |")
    print("|---|" + "---:|" * (len(PHASES) + 3))
    for label, method, model, optimizer, _, times in runs:
        medians = [statistics.median(times[phase]) * 1000 for phase in PHASES]
        tensors = sum(len(g["params"]) for g in optimizer.param_groups)
        layers = getattr(method, "layers", None) or {}
        rank = sum(int(layer.rank) for layer in layers.values()) or "–"
        print(f"| {label} | " + " | ".join(f"{m:.1f}" for m in medians)
              + f" | {sum(medians):.0f} | {tensors:,} | {rank} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
