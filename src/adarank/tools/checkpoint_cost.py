"""What a checkpoint costs (``make bench`` prints it; docs/architecture.md quotes it).

For each method: the model at a preset's sizes (``base`` = DeBERTaV3-base dimensions, see
``adarank.tools.bench.PRESETS``), one real optimizer step on a synthetic batch (so AdamW holds its two
moments for every trainable tensor), then ``Checkpointer.save`` into a temporary folder, the
exact code a run uses (tensors, optimizer, scheduler, method and RNG state, torch.save, fsync,
rename), ``repeats`` times. Reported: the file size, the median save and load seconds, and the
interval ``train.checkpoint_interval=auto`` would pick at a given step time (save ≤ 1 % of the
steps in between).

Growing methods are measured at their initial rank; at the end of a run their trainable set is
about LoRA's (the same budget r_ref × M), so LoRA's row is their upper size.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from adarank.tools.bench import METHODS, BenchConfig, build_runner, stack
from adarank.training import checkpoint
from adarank.training.loop import optimization_step
from adarank.training.optim import GrowingLinearSchedule, build_optimizer

DEFAULT_METHODS = ("full", "bitfit", "hadapter", "lora", "adalora", "triadapt-linear")
#: step times (seconds) at which to show the auto interval: a fast GPU step and a slow one
STEP_TIMES = (0.1, 0.5)


def measure_one(bc: BenchConfig, label: str, repeats: int = 3, device: torch.device | None = None) -> dict:
    device = device or torch.device("cpu")
    runner, data = build_runner(bc, label, 0, device)
    model, method = runner.model, runner.method
    method.set_total_steps(bc.total_steps)
    optimizer = build_optimizer(method.optimizer_groups(model, 0.01), 1e-4)
    scheduler = GrowingLinearSchedule(optimizer, 0, bc.total_steps)
    batch = {k: v.to(device) for k, v in stack(data[: bc.batch]).items()}
    model.train()
    loss = model(**batch).loss
    extra = method.extra_loss(model)
    optimization_step(method, model, optimizer, scheduler, loss if extra is None else loss + extra, 0, bc.total_steps, 1.0)
    loop = checkpoint.LoopState(step=1, epoch_generator_state=torch.Generator().get_state(), step_seconds=[0.1])
    saves, loads = [], []
    with tempfile.TemporaryDirectory() as folder:
        saver = checkpoint.Checkpointer(Path(folder), 1)
        for _ in range(repeats):
            saver.save(model, method, optimizer, scheduler, loop)
            start = time.perf_counter()
            checkpoint.read(Path(folder))
            loads.append(time.perf_counter() - start)
        size = checkpoint.path_in(Path(folder)).stat().st_size
        saves = saver.save_seconds
    save = statistics.median(saves)
    return {
        "method": label,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "checkpoint_mb": size / 2**20,
        "save_seconds": save,
        "load_seconds": statistics.median(loads),
        "auto_interval": {str(t): checkpoint.auto_interval(save, [t]) for t in STEP_TIMES},
    }


def measure(preset: str = "base", methods=DEFAULT_METHODS, repeats: int = 3, log=print) -> list[dict]:
    bc = BenchConfig(preset=preset, batch=2, seq_len=32, steps=8, warmup=2, methods=tuple(methods), memory=False)
    rows = []
    for label in methods:
        if label not in METHODS:
            raise ValueError(f"unknown method {label!r}; choose from {list(METHODS)}")
        log(f"checkpoint cost: {label} ({preset})")
        rows.append(measure_one(bc, label, repeats))
    return rows


def markdown_table(rows: list[dict]) -> str:
    head = ["method", "trainable params", "checkpoint MB", "save s", "load s"] + [
        f"auto interval at {t} s/step" for t in STEP_TIMES
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], f"{r['trainable_params']:,}", f"{r['checkpoint_mb']:.1f}", f"{r['save_seconds']:.3f}",
                 f"{r['load_seconds']:.3f}"] + [str(r["auto_interval"][str(t)]) for t in STEP_TIMES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)



def main(argv=None) -> int:
    import argparse
    import json
    import os
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(description="size and save/load time of a checkpoint per method")
    p.add_argument("--preset", default="base", help="tiny | base (DeBERTaV3-base sizes, the default)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="results/bench/checkpoint_cost.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = measure(args.preset, [m for m in args.methods.split(",") if m], args.repeats,
                   log=lambda msg: print(msg, file=sys.stderr, flush=True))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"preset": args.preset, "rows": rows}, indent=2))
    print(f"\n### checkpoint cost, preset {args.preset} (train.checkpoint_interval=auto keeps it < 1 %)\n")
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
