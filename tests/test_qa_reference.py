"""The harness's question-answering training against a plain reference (scripts/qa_reference.py):
transformers' AutoModelForQuestionAnswering trained by a few lines of plain PyTorch on the same
windows, batches and initial weights. Full fine-tuning and LoRA through ``run()`` must give the
reference's per-step losses and final dev scores (the pretrained MiniLM, on the hand-written
SQuAD fixture, so the run takes seconds)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from adarank.run import run
from tests.conftest import REPO, compose

FIXTURE = Path(__file__).parent / "fixtures" / "squad"
STEPS = 4
SHARED = ["task.max_seq_length=96", "task.doc_stride=32", "task.batch_size=4"]


def load_reference():
    spec = importlib.util.spec_from_file_location("qa_reference", REPO / "scripts" / "qa_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("method, lr", [("full", 5e-5), ("lora", 1e-3)])
def test_harness_trains_like_the_plain_reference(method, lr, tmp_path):
    reference = load_reference().main([
        "--data-dir", str(FIXTURE), "--steps", str(STEPS), "--lr", str(lr), "--max-seq-length", "96",
        "--doc-stride", "32", "--batch-size", "4", "--eval-batch-size", "32", "--threads", "1",
        *(["--lora"] if method == "lora" else []),
    ])
    overrides = [
        "task=squad_v2", "model=minilm", f"method={method}", f"data.dir={FIXTURE}", *SHARED,
        f"train.max_steps={STEPS}", "train.schedule=scaled", "train.optimizer=adamw_torch",
        "train.log_interval=1", "train.progress=off", "train.eval_batch_size=32",
        f"results.root={tmp_path}", *([f"method.lr={lr}"] if method == "full" else []),
    ]
    metrics = run(compose(overrides), overrides)
    log = [json.loads(line) for line in next(tmp_path.rglob("train_log.jsonl")).read_text().splitlines()]
    harness_losses = [r["loss"] for r in log if "loss" in r]
    reference_losses = [s["loss"] for s in reference["steps"]]
    assert len(harness_losses) == len(reference_losses) == STEPS
    assert harness_losses == pytest.approx(reference_losses, rel=1e-5, abs=1e-6)
    assert reference_losses[-1] < reference_losses[0]  # it trains at all
    assert [r["lr"] for r in log if "lr" in r] == pytest.approx([s["lr"] for s in reference["steps"]])
    assert metrics["costs"]["trainable_params_end"] == reference["trainable_params"]
    ours, theirs = metrics["final"], reference["evaluations"][-1]
    for key in ("exact", "f1", "HasAns_f1", "NoAns_f1", "best_f1"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
    assert ours["answerability"]["loss"]["all"] == pytest.approx(theirs["answerability"]["loss"]["all"], rel=1e-4)
