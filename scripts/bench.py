"""Side-by-side speed / memory of every method: `make bench` (defaults finish in a few minutes on
a 2-core CPU). See docs/performance.md for how to read the output.

    python scripts/bench.py                                   # tiny + base presets, all methods
    python scripts/bench.py --preset base --batch 32 --seq-len 128 --steps 64   # e.g. on a GPU
    python scripts/bench.py --methods lora,triadapt-linear,increlora --preset tiny --steps 8
    python scripts/bench.py --whole-run --task rte --steps 150 --seq-len 32   # whole runs, base preset
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from adarank.tools.bench import (  # noqa: E402
    BASE_DEFAULT_METHODS,
    DEFAULT_METHODS,
    METHODS,
    OPS_SHAPE,
    PRESETS,
    BenchConfig,
    markdown_table,
    ops_table,
    whole_run_table,
    run_bench,
    write_report,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny,base", help=f"comma list of {sorted(PRESETS)} (default: tiny,base)")
    p.add_argument("--batch", type=int, default=None, help="sequences per batch (default: tiny 16, base 4)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: tiny 64, base 64)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per method (default: tiny 48, base 8)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps per method (default: tiny 4, base 2)")
    p.add_argument("--interval", type=int, default=None, help="growth/masking interval (default steps//16)")
    p.add_argument("--top-h", type=int, default=None, help="modules per fixed-k event (default: all modules)")
    p.add_argument("--task", default="mnli", help="task config whose rank/alpha/Δr/betas are used (default mnli)")
    p.add_argument("--methods", default=None,
                   help=f"comma list of {list(METHODS)} (default: all on tiny; on base: {','.join(BASE_DEFAULT_METHODS)})")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default=None, help="fp32 | bf16 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1; 0 = OMP_NUM_THREADS's, set to 1 by this script unless "
                        "you set it)")
    p.add_argument("--steady", action="store_true",
                   help="grow from step 1 every step (init_warmup 0) so that fixed-k methods reach their final "
                        "rank during the warm-up and the timed steps run at it (use --warmup > 8)")
    p.add_argument("--whole-run", action="store_true",
                   help="every method through --steps steps with the task's schedule rescaled to them "
                        "(train.schedule=scaled); all steps timed; base preset, batch 4, seq 32, 150 steps, "
                        "lora,adalora,increlora,triadapt-fixed,triadapt-linear and no op counts by default")
    p.add_argument("--train-size", type=int, default=None,
                   help="whole-run: the task's training-set size (default: the GLUE split size)")
    p.add_argument("--no-ops", action="store_true", help="skip the operator counts")
    p.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses")
    p.add_argument("--out", default="results/bench/bench.json", help="JSON output ({preset} is substituted)")
    args = p.parse_args(argv)

    # `make bench` = these defaults: ~2 min (tiny) + ~5 min (base) on 2 busy CPU cores
    defaults = {
        "tiny": dict(batch=16, seq_len=64, steps=48, warmup=4, methods=",".join(DEFAULT_METHODS)),
        "base": dict(batch=4, seq_len=64, steps=8, warmup=2, methods=",".join(BASE_DEFAULT_METHODS)),
    }
    if args.whole_run:
        defaults = {name: dict(batch=4, seq_len=32, steps=150, warmup=0,
                               methods="lora,adalora,increlora,triadapt-fixed,triadapt-linear") for name in PRESETS}
        if args.preset == p.get_default("preset"):
            args.preset = "base"
    presets = [x.strip() for x in args.preset.split(",") if x.strip()]
    for preset in presets:
        d = defaults.get(preset, defaults["tiny"])
        bc = BenchConfig(
            preset=preset,
            batch=args.batch or d["batch"],
            seq_len=args.seq_len or d["seq_len"],
            steps=args.steps or d["steps"],
            warmup=d["warmup"] if args.warmup is None else args.warmup,
            interval=args.interval,
            top_h=args.top_h,
            task=args.task,
            methods=tuple(m.strip() for m in (args.methods or d["methods"]).split(",") if m.strip()),
            device=args.device,
            precision=args.precision,
            threads=args.threads or None,
            memory=not args.no_memory,
            ops=not (args.no_ops or args.whole_run),
            whole_run=args.whole_run,
            train_size=args.train_size,
            steady=args.steady,
        )
        report = run_bench(bc, log=lambda msg: print(msg, file=sys.stderr, flush=True))
        out = args.out.replace("{preset}", preset)
        if len(presets) > 1 and "{preset}" not in args.out:
            path = Path(out)
            out = str(path.with_name(f"{path.stem}_{preset}{path.suffix}"))
        write_report(report, out)
        m = report["machine"]
        print(f"\n### preset {preset}: batch {bc.batch} x seq {bc.seq_len}, {bc.steps} timed steps "
              f"(+{bc.warmup} warm-up), "
              f"{'task ' + bc.task + ' schedule scaled to the run' if bc.whole_run else f'interval {bc.growth_interval}'}, "
              f"{m['device']} "
              f"({m.get('gpu') or m['cpu']}, {m['torch_threads']} thread(s))\n")
        print(whole_run_table(report) if bc.whole_run else markdown_table(report))
        if bc.ops:
            print(f"\nOperators per training step at the final rank (counted apart: batch "
                  f"{OPS_SHAPE['batch']} x {OPS_SHAPE['seq_len']}, steady schedule; 'kernels' = non-view ops)\n")
            print(ops_table(report))
        print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
