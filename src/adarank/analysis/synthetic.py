"""Synthetic results trees with known values, in the metrics.json schema of docs/architecture.md.

Used by the tests and to try the notebook without training anything:

    python -m adarank.analysis.synthetic /tmp/fake_results   # then: make tables RESULTS=/tmp/fake_results
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from adarank.analysis.rank_pattern import WEIGHT_TYPES

MODULE_SUFFIX = {
    "W_q": "attention.self.query_proj",
    "W_k": "attention.self.key_proj",
    "W_v": "attention.self.value_proj",
    "W_a": "attention.output.dense",
    "W_m": "intermediate.dense",
    "W_o": "output.dense",
}
PRIMARY = {"cola": "matthews_correlation", "stsb": "pearson", "squad_v2": "f1"}


def fake_run(
    root: str | Path,
    task: str,
    method: str,
    seed: int,
    score: float,
    threshold: str | None = None,
    *,
    overrides: dict | None = None,
    model: str = "deberta_v3_base",
    extra_best: dict | None = None,
    costs: dict | None = None,
    total_rank: int | None = None,
    rank_pattern: dict | None = None,
    variant: str = "default",
) -> Path:
    """Write one finished run and return its folder. ``overrides`` = {"task.init_warmup": 200, ...}
    are put into the resolved config (the way the sweeps change it)."""
    primary = PRIMARY.get(task, "accuracy")
    config = {
        "task": {"name": task, "primary_metric": primary},
        "method": {"name": method, **({"init_rank": 1} if method in ("increlora", "triadapt") else {})},
        "threshold": {"name": threshold or "none"},
        "model": {"name": model},
        "seed": seed,
    }
    for dotted, value in (overrides or {}).items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    label = f"{method}-{threshold}" if threshold else method
    slug = ",".join(f"{k}={v}" for k, v in sorted((overrides or {}).items())) or variant
    folder = Path(root) / task / label / f"seed{seed}" / f"{slug}-{abs(hash((task, label, seed, slug))) % 10**8:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {
        "schema_version": 1,
        "status": "completed",
        "task": task,
        "method": method,
        "threshold": threshold,
        "seed": seed,
        "model": model,
        "variant": slug,
        "primary_metric": primary,
        "best": {primary: score, **(extra_best or {}), "step": 100},
        "final": {primary: score - 0.5, **(extra_best or {}), "step": 200},
        "evaluations": 2,
        "costs": {
            "wall_seconds": 100.0,
            "train_seconds": 90.0,
            "optimizer_steps": 200,
            "median_step_seconds": 0.4,
            "allocation_seconds": 0.0,
            "peak_memory_mb": 1000.0,
            "trainable_params_start": 1000,
            "trainable_params_end": 1000,
            **(costs or {}),
        },
        "rank": {"total_rank": total_rank, "adapted_modules": 72} if total_rank is not None else {},
        "config": config,
        "provenance": {"git_sha": None, "device": "cpu"},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    # evaluations every 50 steps rising to the best score (train_log.jsonl), and growth events for
    # the growing methods (growth_log.jsonl), as a real run writes them
    evals = [{"step": step, "eval": {primary: score - 4.0 * (200 - step) / 150}, "final": step == 200}
             for step in (50, 100, 150, 200)]
    (folder / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    if method in ("increlora", "triadapt") and total_rank is not None:
        growth = [{"step": step, "k": 4, "total_rank": 72 + (total_rank - 72) * (i + 1) // 3, "modules": []}
                  for i, step in enumerate((60, 100, 140))]
        (folder / "growth_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in growth))
    if rank_pattern is not None:
        (folder / "rank_pattern.json").write_text(json.dumps(rank_pattern))
    return folder


def fake_fair_run(root: str | Path, task: str, method: str, seed: int, test_score: float, val_score: float,
                  lr: float, *, lr_scale: float = 1.0, source: str = "scale", threshold: str | None = None,
                  model: str = "deberta_v3_base", costs: dict | None = None, overrides: dict | None = None) -> Path:
    """One finished run of the fair protocol (docs/fair-protocol.md): ``best``/``final`` on the
    validation split (``val_score``), ``test_at_best_val`` / ``test_at_last`` on dev, the LR
    ``lr`` set by ``lr_scale`` x the default (``source="scale"``, an LR search) or by a table
    (``"table"``); the default is the repository's (conf/task, conf/method/full.yaml)."""
    from omegaconf import OmegaConf

    from adarank.analysis.defaults import REPO_CONF

    key = "method.lr" if method == "full" else "task.lr"
    group, name = ("method", "full") if method == "full" else ("task", task)
    default_lr = float(OmegaConf.load(REPO_CONF / group / f"{name}.yaml").lr)
    protocol = {"name": "fair", "split_seed": 0, "val_size": 0.1, "val_max": 2000, "lr_scale": lr_scale,
                "lr_table": "selected_lr.yaml" if source == "table" else None}
    folder = fake_run(root, task, method, seed, val_score, threshold, model=model, costs=costs,
                      overrides={**(overrides or {}), key: lr, **{f"protocol.{k}": v for k, v in protocol.items()}})
    path = folder / "metrics.json"
    metrics = json.loads(path.read_text())
    primary = metrics["primary_metric"]
    metrics["protocol"] = {"name": "fair", "lr": {"key": key, "default": default_lr, "scale": lr_scale,
                                                  "value": lr, "source": source}}
    metrics["test_at_best_val"] = {primary: test_score, "step": 100}
    metrics["test_at_last"] = {primary: test_score - 1.0, "step": 200}
    path.write_text(json.dumps(metrics, indent=2))
    return folder


def layered_pattern(layers: int, rank_of, prefix: str = "deberta.encoder.layer") -> dict:
    """{module name: rank} for ``layers`` layers x the six weight types, rank_of(layer, weight type)."""
    return {
        f"{prefix}.{layer}.{MODULE_SUFFIX[weight]}": int(rank_of(layer, weight))
        for layer in range(layers)
        for weight in WEIGHT_TYPES
    }


def demo_tree(root: str | Path) -> Path:
    """A small but complete-looking tree: Table I on RTE and MRPC, a Table II/III slice, a SQuAD row,
    Figure 2 patterns and a Figure 3 sweep. Values are made up."""
    root = Path(root)
    arms = [("full", None), ("lora", None), ("adalora", None), ("increlora", "fixed"),
            ("triadapt", "fixed"), ("triadapt", "linear"), ("triadapt", "nonlinear")]
    for task, base in (("rte", 85.0), ("mrpc", 89.0)):
        for i, (method, threshold) in enumerate(arms):
            for seed in range(3):
                pattern = layered_pattern(12, lambda l, w, i=i: 1 + (l * (i + 1) + WEIGHT_TYPES.index(w)) % 13)
                fake_run(root, task, method, seed, base + 0.3 * i + 0.2 * seed, threshold,
                         total_rank=sum(pattern.values()) if method not in ("full",) else None,
                         rank_pattern=pattern if method in ("adalora", "increlora", "triadapt") else None)
    for seed in range(3):
        fake_run(root, "rte", "triadapt", seed, 84.0 + seed, "nonlinear", overrides={"method.orth_reg": False})
        fake_run(root, "rte", "triadapt", seed, 83.0 + seed, "nonlinear", overrides={"method.norm": "sqrt_r"})
        for value in (50, 200, 400):
            for method, threshold in (("triadapt", "linear"), ("increlora", "fixed")):
                fake_run(root, "rte", method, seed, 84.0 + value / 400 + seed * 0.3, threshold,
                         overrides={"task.init_warmup": value})
    fake_run(root, "squad_v2", "lora", 0, 88.0, extra_best={"exact": 85.0})
    return root


def full_tree(root: str | Path, model: str = "deberta_v3_base", overrides: dict | None = None) -> Path:
    """Every cell of Tables I-IV with 3 seeds (the paper's number, or LoRA's for the extra rows,
    plus a little seed spread) and the costs a real run records; what a finished paper sweep
    writes, for checking the tables' layout at full size. Values are made up."""
    from adarank.analysis.paper import glue_tasks, load_paper

    root = Path(root)
    paper = load_paper()
    arms = {"triadapt_fixed": ("triadapt", "fixed"), "triadapt_linear": ("triadapt", "linear"),
            "triadapt_nonlinear": ("triadapt", "nonlinear"), "increlora": ("increlora", "fixed")}
    rows = paper["table1"]["rows"]
    for key, row in rows.items():
        if row.get("best_of"):
            continue
        method, threshold = arms.get(key, (key, None))
        for task in glue_tasks():
            base = (row["scores"] or rows["lora"]["scores"])[task]
            for seed in range(3):
                fake_run(root, task, method, seed, round(base - 0.4 + 0.37 * seed, 2), threshold, model=model,
                         overrides=overrides, total_rank=None if method in ("full", "bitfit", "hadapter") else 576,
                         costs={"trainable_params_start": 1_330_000 + 1000 * seed, "trainable_params_end": 1_340_000,
                                "wall_seconds": 31234.5, "train_seconds": 30123.4, "allocation_seconds": 123.4,
                                "median_step_seconds": 0.1234, "peak_memory_mb": 12345.6})
    ablations = {"method.orth_reg": [False], "method.norm": ["none", "sqrt_r"]}
    for key, values in ablations.items():
        for value in values:
            for task in glue_tasks():
                for seed in range(3):
                    fake_run(root, task, "triadapt", seed, rows["triadapt_nonlinear"]["scores"][task] - 0.5 + 0.2 * seed,
                             "nonlinear", model=model, overrides={**(overrides or {}), key: value})
    squad_rows = paper["table4"]["rows"]
    for key, row in squad_rows.items():
        method, threshold = arms.get(key, (key, None))
        scores = row["scores"] or squad_rows["lora"]["scores"]  # an extra row (AdaLoRA): LoRA's numbers
        for seed in range(3):
            fake_run(root, "squad_v2", method, seed, scores["f1"] - 0.2 + 0.1 * seed, threshold, model=model,
                     overrides=overrides, extra_best={"exact": scores["exact"] - 0.2 + 0.1 * seed})
    return root


if __name__ == "__main__":
    print(demo_tree(sys.argv[1] if len(sys.argv) > 1 else "results/synthetic"))
