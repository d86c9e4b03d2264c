"""The mini Table IV (conf/sweep/mini_squad.yaml, `make mini-squad`): every job composes, passes the
up-front checks and fits its scaled schedule on the real SQuAD data; `make tables` renders it as
Table IV with HasAns / NoAns F1 in the .csv."""

from __future__ import annotations

import math

import pytest

from adarank import checks, schedule_scaling
from adarank.analysis import build_report
from adarank.analysis.synthetic import fake_run
from adarank.analysis.sweep_configs import compose_jobs, sweep_jobs
from adarank.analysis.tables import to_markdown
from adarank.methods.growth_clock import count_growth_steps
from tests.conftest import REPO

SHARED_SQUAD = REPO.parent / "shared" / "data" / "squad"
ARMS = {"full_mini_squad", "lora", "adalora", "increlora", "triadapt_fixed", "triadapt_linear", "triadapt_nonlinear"}


def test_mini_squad_sweep_jobs():
    jobs = sweep_jobs("mini_squad")
    assert len(jobs) == 7 * 3
    arms = {dict(item.split("=", 1) for item in job)["+sweep/arm"] for job in jobs}
    assert arms == ARMS
    for cfg in compose_jobs(jobs[:7]):
        assert (cfg.task.name, cfg.model.name, cfg.data.dir) == ("squad_v2", "minilm", "../shared/data/squad")
        assert cfg.train.schedule == "scaled" and cfg.train.eval_interval == cfg.train.max_steps
        assert cfg.train.num_threads == 1 and cfg.task.max_seq_length == 192
        if cfg.method.name == "full":  # its own rate, measured (conf/sweep/arm/full_mini_squad.yaml)
            assert cfg.method.lr == 2e-4


@pytest.mark.skipif(not SHARED_SQUAD.is_dir(), reason="needs ../shared/data/squad")
def test_every_mini_squad_arm_fits_its_scaled_schedule():
    """What run() checks before training, on the real windows: the scaled schedule of each arm
    (every growth step of the full-length run, an AdaLoRA budget phase) fits the sweep's length."""
    from adarank.data.squad import full_train_windows, load_local, tokenize_windows
    from adarank.models import load_tokenizer

    jobs = [job for job in sweep_jobs("mini_squad") if "seed=0" in job]
    configs = compose_jobs([[*job, f"data.dir={SHARED_SQUAD}"] for job in jobs])
    task = configs[0].task
    raw = load_local(task, str(SHARED_SQUAD))
    windows = len(tokenize_windows(raw["train"], load_tokenizer(configs[0].model), 192, int(task.doc_stride)))
    full = full_train_windows(task, windows, len(raw["train"]), len(raw["train"]))
    assert schedule_scaling.paper_steps(full, 16, 14) == 224_210  # docs/reproducing.md, docs/mini-reproduction.md
    for cfg in configs:
        threshold = checks.check_static(cfg)
        steps = int(cfg.train.max_steps)
        report = schedule_scaling.apply(cfg, steps, full)
        checks.check_schedule(cfg, threshold, steps, windows)
        values = report["values"]
        if cfg.method.name in schedule_scaling.GROWING_METHODS:
            t0, interval = values["task.init_warmup"]["scaled"], values["task.incre_interval"]["scaled"]
            assert count_growth_steps(steps, t0, interval) >= count_growth_steps(224_210, 1000, 1000)


def test_table4_csv_has_hasans_and_noans_f1(tmp_path):
    root = tmp_path / "raw"
    for seed, (has, no) in enumerate([(30.0, 80.0), (40.0, 70.0)]):
        fake_run(root, "squad_v2", "lora", seed, 55.0, model="minilm", overrides={"train.max_steps": 300},
                 extra_best={"exact": 50.0, "HasAns_f1": has, "NoAns_f1": no})
    fake_run(root, "squad_v2", "adalora", 0, 52.0, model="minilm", overrides={"train.max_steps": 300},
             extra_best={"exact": 49.0, "HasAns_f1": 10.0, "NoAns_f1": 95.0})
    tidy = build_report(root).tables["table4"]
    cells = {(r["row"], r["column"]): r for r in tidy.to_dict("records")}
    assert cells[("lora", "HasAns_f1")]["mean"] == pytest.approx(35.0)
    assert cells[("lora", "NoAns_f1")]["mean"] == pytest.approx(75.0)
    assert cells[("adalora", "f1")]["mean"] == pytest.approx(52.0)  # an extra row, no paper number
    assert math.isnan(cells[("adalora", "f1")]["paper"])  # the paper prints none
    text = to_markdown(tidy, "table4")
    assert "| AdaLoRA " in text and "HasAns" not in text  # printed like the paper's Table IV: EM / F1
