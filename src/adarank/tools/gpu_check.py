"""``make gpu-check``: what a GPU must confirm before the paper's sweeps run on it (<= 10 minutes
on one A100 / H100 / H200; never part of the default tests).

    python -m adarank.tools.gpu_check --out results/gpu_check           # what make gpu-check runs
    python -m adarank.tools.gpu_check --device cpu --arms lora --steps 4 --bench-preset tiny --bench-steps 2

Four parts, one JSON (``<out>/gpu_check.json``) and one Markdown report (``<out>/gpu_check.md``):

1. **Same numbers as the CPU.** Every method (the 11 arms of tools/sync_count.py) trains the tiny
   model for 24 steps through ``adarank.run.run`` on the CPU (fp32) and on the device (exact fp32,
   ``train.tf32=false``); the logged losses (steps 1, 10, 20) must agree to ``--tolerance``
   (relative).
2. **bf16.** The same runs with ``train.precision=bf16``: they finish, the losses stay finite and
   within ``--bf16-tolerance`` of the device's fp32 losses.
3. **Syncs per step.** The device fp32 runs of part 1 run under the host-device sync counter
   (tools/sync_count.py, CUDA mode: real device residency, pinned-memory check on copies): at most
   one sync in every ordinary step of every method.
4. **Step time at DeBERTaV3-base dimensions.** LoRA, AdaLoRA, IncreLoRA and TriAdaptLoRA (linear)
   through the real loop side by side (tools/bench.py, base preset, bf16 on CUDA, batch x tokens
   as given), with examples/s, tokens/s and the fraction of the device's dense bf16 tensor-core
   peak the model FLOPs reach (:func:`model_flops_per_token`, :data:`PEAK_BF16_TFLOPS`).

On ``--device cpu`` every part runs on the CPU (part 1 compares the CPU with itself, part 3 is
the CPU emulation of the counter): that is how tests/test_gpu_check.py keeps this script alive.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

#: dense (no sparsity) bf16 tensor-core peak, TFLOP/s, by device name (vendor datasheets: NVIDIA
#: A100 Tensor Core GPU datasheet, "BFLOAT16 Tensor Core 312 TFLOPS" for SXM and PCIe; NVIDIA H100
#: Tensor Core GPU datasheet, "BFLOAT16 Tensor Core 1,979 TFLOPS" (SXM) / "1,513" (PCIe), both
#: "with sparsity", i.e. 989 and 756 dense; NVIDIA H200 Tensor Core GPU datasheet, "BFLOAT16
#: Tensor Core 1,979 TFLOPS" with sparsity, 989 dense). Matched in order on the CUDA device name.
PEAK_BF16_TFLOPS = (
    (("H200",), 989.0),
    (("H100", "PCIE"), 756.0),
    (("H100", "NVL"), None),  # not in the table: reported as unknown
    (("H100",), 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    (("A100",), 312.0),
)
BENCH_METHODS = ("lora", "adalora", "increlora", "triadapt-linear")
RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def device_peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of a device from :data:`PEAK_BF16_TFLOPS`; None when unknown."""
    upper = name.upper()
    for keys, peak in PEAK_BF16_TFLOPS:
        if all(key in upper for key in keys):
            return peak
    return None


def model_flops_per_token(hidden: int, layers: int, intermediate: int, seq_len: int) -> float:
    """Training FLOPs per token of a frozen-backbone adapter method on a BERT-style encoder.

    Per layer the linear weights are 4·d² (Q, K, V, attention output) + 2·d·d_ff (FFN), N in all;
    a token's forward pass costs 2·N (one multiply-add per weight) plus the attention products
    QKᵀ and AV, 4·s·d per layer; the backward pass computes the activation gradients only
    (2·N, the frozen weights get none; the rank-8 adapters' weight gradients are < 1 % and left
    out) and twice the attention products (8·s·d). Total: 4·N + 12·L·s·d. DeBERTa's relative-
    position attention terms and the embeddings are left out, so the fraction of peak is a lower
    bound."""
    linear = layers * (4 * hidden * hidden + 2 * hidden * intermediate)
    return 4.0 * linear + 12.0 * layers * seq_len * hidden


def write_tiny_rte(root: Path, train_rows: int = 48, dev_rows: int = 24) -> Path:
    """A tiny learnable RTE folder (the label is a marker word), so the check needs no data."""
    import random

    rng = random.Random(0)
    words = "alpha beta gamma delta river stone cloud green small quick bright heavy".split()
    folder = root / "RTE"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", train_rows), ("dev.tsv", dev_rows)):
        lines = [RTE_HEADER]
        for i in range(n):
            first = " ".join(rng.sample(words, 5) + ["yes" if i % 2 else "no"]) + " ."
            second = " ".join(rng.sample(words, 5)) + " ."
            lines.append(f"{i}\t{first}\t{second}\t{['not_entailment', 'entailment'][i % 2]}\n")
        (folder / name).write_text("".join(lines))
    return root


def _losses(results_root: Path) -> list[float]:
    (log,) = results_root.glob("*/*/seed*/[!.]*/train_log.jsonl")
    return [json.loads(line)["loss"] for line in log.read_text().splitlines() if '"loss"' in line]


def _relative_gap(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return math.inf
    return max((abs(x - y) / max(abs(x), 1e-6) for x, y in zip(a, b)), default=0.0)


def check_arms(arms, device: str, data: Path, work: Path, steps: int, log) -> list[dict]:
    """Parts 1-3 for every arm: CPU fp32, device fp32 under the sync counter, device bf16."""
    from adarank.tools import sync_count

    rows = []
    for arm in arms:
        started = time.perf_counter()
        row = {"arm": arm}
        runs = {"cpu_fp32": ("cpu", "fp32"), "device_fp32": (device, "fp32"), "device_bf16": (device, "bf16")}
        for label, (where, precision) in runs.items():
            root = work / arm / label
            # fp32 against the CPU with TF32 off: the check is for device bugs, not TF32's rounding,
            # which could flip an AdaLoRA / ALoRA ranking decision within 24 steps
            extra = [f"train.max_steps={steps}", f"train.precision={precision}", f"train.tf32={str(label == 'device_bf16').lower()}"]
            if label == "device_fp32":  # part 3: the sync counter runs along (it changes no number)
                sync = sync_count.measure_arm(arm, data, root, where, extra)
                row.update(syncs_max_ordinary=sync["max_ordinary"], syncs_per_step=sync["per_step"],
                           sync_where=sync["where_ordinary"][:5])
            else:
                _run(sync_count.arm_overrides(arm, data, root, where, extra))
            row[label] = _losses(root)  # the logged steps: 1, 10, 20, ...
        row["gap_device_vs_cpu"] = _relative_gap(row["cpu_fp32"], row["device_fp32"])
        row["gap_bf16_vs_fp32"] = _relative_gap(row["device_fp32"], row["device_bf16"])
        row["bf16_finite"] = all(math.isfinite(v) for v in row["device_bf16"])
        row["seconds"] = time.perf_counter() - started
        log(f"[gpu-check] {arm}: device vs CPU {row['gap_device_vs_cpu']:.2e}, bf16 vs fp32 "
            f"{row['gap_bf16_vs_fp32']:.2e}, max syncs in an ordinary step {row['syncs_max_ordinary']} "
            f"({row['seconds']:.0f} s)")
        rows.append(row)
    return rows


def _run(overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir

    from adarank.run import run
    from adarank.tools.sync_count import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return run(cfg, overrides)


def step_times(device: str, preset: str, batch: int, seq_len: int, steps: int, warmup: int, log) -> dict:
    """Part 4: the side-by-side bench of :data:`BENCH_METHODS` and the fraction of peak."""
    from adarank.tools.bench import PRESETS, BenchConfig, run_bench

    bc = BenchConfig(preset=preset, batch=batch, seq_len=seq_len, steps=steps, warmup=warmup, methods=BENCH_METHODS,
                     device=device, memory=False, ops=False, steady=True, threads=None)
    report = run_bench(bc, log=log)
    from omegaconf import OmegaConf

    from adarank.tools.bench import CONF_DIR

    dims = {**OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "tiny.yaml")), **PRESETS[preset]}
    flops = model_flops_per_token(int(dims["hidden_size"]), int(dims["num_layers"]), int(dims["intermediate_size"]), seq_len)
    name = report["machine"].get("gpu") or report["machine"]["cpu"]
    peak = device_peak_tflops(name) if report["machine"]["device"] == "cuda" else None
    for row in report["results"]:
        row["examples_per_s"] = batch / row["median_step_s"]
        row["tokens_per_s"] = batch * seq_len / row["median_step_s"]
        row["model_tflops_per_s"] = row["tokens_per_s"] * flops / 1e12
        row["fraction_of_peak"] = row["model_tflops_per_s"] / peak if peak else None
    report["model_flops_per_token"] = flops
    report["peak_bf16_tflops"] = peak
    report["peak_note"] = (f"{name}: {peak:g} TFLOP/s dense bf16 (PEAK_BF16_TFLOPS)" if peak
                           else f"{name}: not in the table of known devices, fraction of peak not computed")
    return report


def markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['device_name']}, torch {report['torch']}, {report['date']})", "",
             "| method | device vs CPU (fp32) | bf16 vs fp32 | bf16 finite | max syncs, ordinary step | seconds |",
             "|---|---:|---:|---|---:|---:|"]
    for r in report["arms"]:
        lines.append(f"| {r['arm']} | {r['gap_device_vs_cpu']:.2e} | {r['gap_bf16_vs_fp32']:.2e} | {r['bf16_finite']} | "
                     f"{r['syncs_max_ordinary']} | {r['seconds']:.0f} |")
    bench = report.get("bench")
    if bench:
        b = bench["config"]
        lines += ["", f"Step time, preset {b['preset']}, batch {b['batch']} x {b['seq_len']} tokens, "
                      f"{report['bench_precision']}, steady state at the final rank; {bench['peak_note']}; "
                      f"model FLOPs per token {bench['model_flops_per_token'] / 1e6:.1f} M", "",
                  "| method | median step s | examples/s | tokens/s | model TFLOP/s | fraction of bf16 peak |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in bench["results"]:
            fraction = "unknown device" if r["fraction_of_peak"] is None else f"{r['fraction_of_peak']:.1%}"
            lines.append(f"| {r['method']} | {r['median_step_s']:.4f} | {r['examples_per_s']:.1f} | "
                         f"{r['tokens_per_s']:.0f} | {r['model_tflops_per_s']:.2f} | {fraction} |")
    if report.get("bench_error"):
        lines += ["", f"Step-time bench failed: {report['bench_error']}"]
    lines += ["", f"Verdict: {report['verdict']}"]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, report: dict, started: float) -> None:
    report["wall_seconds"] = time.time() - started
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(report))


def main(argv=None) -> int:
    from adarank.tools import sync_count

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) | cuda:N | cpu (a dry run of the logic)")
    p.add_argument("--arms", default=",".join(sync_count.ARMS), help="comma list of tools/sync_count.py ARMS")
    p.add_argument("--steps", type=int, default=sync_count.MEASURED_STEPS, help="steps of the tiny-model runs")
    p.add_argument("--tolerance", type=float, default=2e-2, help="largest relative loss gap device vs CPU")
    p.add_argument("--bf16-tolerance", type=float, default=5e-2, help="largest relative loss gap bf16 vs fp32")
    p.add_argument("--bench-preset", default="base", help="base (DeBERTaV3-base dimensions) | tiny")
    p.add_argument("--bench-batch", type=int, default=32)
    p.add_argument("--bench-seq-len", type=int, default=128)
    p.add_argument("--bench-steps", type=int, default=30, help="timed steps per method (after 10 warm-up steps)")
    p.add_argument("--no-bench", action="store_true")
    p.add_argument("--out", default="results/gpu_check")
    args = p.parse_args(argv)

    import torch

    from adarank.training.loop import pick_device

    device = pick_device(args.device)  # cuda without a usable GPU: a one-line error naming the reason
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    started = time.time()
    data = write_tiny_rte(out / "data")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    shutil.rmtree(out / "runs", ignore_errors=True)  # a rerun into the same folder starts clean
    rows = check_arms(arms, str(device), data, out / "runs", args.steps, log)
    report = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "arms": rows,
        "bench_precision": "bf16" if device.type == "cuda" else "fp32",
    }
    failures = [r["arm"] for r in rows if r["gap_device_vs_cpu"] > args.tolerance or r["gap_bf16_vs_fp32"] > args.bf16_tolerance
                or not r["bf16_finite"] or (r["syncs_max_ordinary"] or 0) > 1]
    report["verdict"] = "parts 1-3 only, the step-time bench still running"
    write_reports(out, report, started)  # parts 1-3 survive a bench that fails or is cut off
    if not args.no_bench:
        try:
            report["bench"] = step_times(str(device), args.bench_preset, args.bench_batch, args.bench_seq_len,
                                         args.bench_steps, 10, log)
        except Exception as err:  # noqa: BLE001 - reported in the verdict, parts 1-3 kept
            report["bench_error"] = repr(err)
            failures.append("step-time bench")
    report["verdict"] = "all checks passed" if not failures else f"FAILED: {', '.join(failures)}"
    write_reports(out, report, started)
    print(markdown(report))
    print(f"JSON: {out / 'gpu_check.json'} ({report['wall_seconds']:.0f} s)")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
