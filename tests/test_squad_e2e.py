"""SQuAD 2.0 end to end on the tiny random DeBERTaV2 and the hand-written fixture.

Windows are shortened (max_seq_length 96, doc stride 32) so that a CPU run takes seconds; the
fixture's long context still needs several windows, and its 9 dev questions include 3
unanswerable ones.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent / "fixtures" / "squad"
SQUAD_KEYS = {
    "exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact", "NoAns_f1",
    "NoAns_total", "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh", "eval_examples",
    "dev_examples",
}
FAST_SQUAD = [
    "task=squad_v2", "model=tiny", f"data.dir={FIXTURE}", "task.max_seq_length=96", "task.doc_stride=32",
    "task.batch_size=4", "train.max_steps=4", "train.eval_interval=2", "task.periodic_eval_max_examples=4",
    "train.progress=off", "train.eval_batch_size=32",
]
HAS_TRIADAPT = importlib.util.find_spec("adarank.methods.triadapt") is not None


def check_results(folder: Path, metrics: dict) -> None:
    assert metrics["task"] == "squad_v2" and metrics["primary_metric"] == "f1"
    for key in ("best", "final"):
        assert SQUAD_KEYS <= set(metrics[key]), key
        for name in ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_exact", "best_f1"):
            assert 0.0 <= metrics[key][name] <= 100.0
    final = metrics["final"]
    assert final["eval_examples"] == final["total"] == final["dev_examples"] == 9  # the whole dev set
    assert (final["HasAns_total"], final["NoAns_total"]) == (6, 3)
    assert final["best_f1"] >= final["f1"] and final["best_exact"] >= final["exact"]
    data = metrics["data"]
    assert data["validation_features"] > data["validation_examples"] == 9  # long context split
    assert data["train_features"] > data["train_examples"] == 11

    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    evals = [record for record in log if "eval" in record]
    assert [(r["step"], r["final"]) for r in evals] == [(2, False), (4, True)]
    assert evals[0]["eval"]["eval_examples"] == 4  # periodic: capped sample
    assert evals[1]["eval"]["eval_examples"] == 9  # final: all of dev


@pytest.fixture(scope="module")
def squad_runs(tmp_path_factory) -> dict[str, Path]:
    """One ``python train.py -m method=...`` multirun over the methods: {method label: run folder}.

    A multirun pays the imports once for all methods. The growth settings (t0 = interval = 1) give
    TriAdaptLoRA growth events within 4 steps and leave LoRA unchanged.
    """
    tmp = tmp_path_factory.mktemp("squad_e2e")
    methods = "lora,triadapt" if HAS_TRIADAPT else "lora"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, str(REPO / "train.py"), "-m", f"method={methods}", *FAST_SQUAD,
           "task.init_warmup=1", "task.incre_interval=1", "task.warmup_steps=1",
           f"results.root={tmp / 'results'}", f"hydra.sweep.dir={tmp / 'hydra'}"]
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {path.parent.parent.parent.name: path.parent for path in (tmp / "results").rglob("metrics.json")}


def test_train_py_squad_v2_lora(squad_runs):
    """The real entrypoint, as a user runs it: task=squad_v2 method=lora."""
    folder = squad_runs["lora"]
    check_results(folder, json.loads((folder / "metrics.json").read_text()))


@pytest.mark.skipif(not HAS_TRIADAPT, reason="adarank.methods.triadapt is not there yet")
def test_train_py_squad_v2_triadapt(squad_runs):
    """The same for TriAdaptLoRA (threshold=none resolves to its default, linear)."""
    folder = squad_runs["triadapt-linear"]
    metrics = json.loads((folder / "metrics.json").read_text())
    check_results(folder, metrics)
    assert metrics["threshold"] == "linear"
    growth = (folder / "growth_log.jsonl").read_text().splitlines()
    assert len(growth) >= 1  # ranks grew during the SQuAD run
    assert metrics["costs"]["trainable_params_end"] > metrics["costs"]["trainable_params_start"]


def test_make_tables_reads_the_squad_runs(squad_runs, tmp_path):
    """Table IV from the real runs: their answerability diagnostics do not make the reader skip them."""
    from adarank.analysis import write_report

    root = next(iter(squad_runs.values())).parents[3]
    report = write_report(root, tmp_path / "tables")
    table4 = (tmp_path / "tables" / "table4.csv").read_text()
    assert sorted(report.runs["arm"]) == sorted(["lora", *(["triadapt_linear"] if HAS_TRIADAPT else [])])
    assert "LoRA" in table4
