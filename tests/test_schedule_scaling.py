"""train.schedule=scaled: step hyperparameters rescaled by T_run / T_paper (hand-computed), the
clear errors where a schedule cannot fit, and the values a run actually used."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from adarank.checks import ConfigError
from adarank.methods.growth_clock import count_growth_steps
from adarank.run import run
from adarank.schedule_scaling import ScheduleError, paper_steps, scaled_values
from tests.conftest import compose


def rte(method: str):
    return compose(["task=rte", f"method={method}"])


def test_paper_steps_of_real_rte():
    assert paper_steps(2490, 32, 50) == 78 * 50 == 3900


def test_rte_scaled_to_300_steps_by_hand():
    # s = 300 / 3900; warm-up round(100 s) = round(7.69) = 8; t0 = 8; the full run has 37 growth
    # steps (200, 300, ..., 3800); interval round(100 s) = 8 gives only 36 (16, 24, ..., 296),
    # 7 gives 41 (14, ..., 294): the scaled interval is 7
    assert count_growth_steps(3900, 100, 100) == 37
    assert count_growth_steps(300, 8, 8) == 36 and count_growth_steps(300, 8, 7) == 41
    values = scaled_values(rte("triadapt"), 300, 3900)
    assert values == {"task.warmup_steps": (100, 8), "task.init_warmup": (100, 8), "task.incre_interval": (100, 7)}
    assert scaled_values(rte("lora"), 300, 3900) == {"task.warmup_steps": (100, 8)}


def test_adalora_rte_scaled_to_300_steps_by_hand():
    # warm-up 200 -> 15.38 -> 15, t_init 600 -> 46.15 -> 46, t_final 1800 -> 138.46 -> 138, deltaT 1 -> 1
    assert scaled_values(rte("adalora"), 300, 3900) == {
        "task.adalora.warmup_steps": (200, 15),
        "task.adalora.init_warmup": (600, 46),
        "task.adalora.final_warmup": (1800, 138),
        "task.adalora.mask_interval": (1, 1),
    }


def test_alora_phases_in_epochs_scale_like_steps():
    # an RTE epoch is 3900 / 50 = 78 steps: K1 = 1 epoch = 78 -> round(6.0) = 6; K2 = round(19.5) = 20
    # steps -> round(1.54) = 2
    values = scaled_values(rte("alora"), 300, 3900)
    assert values["method.k1_steps"] == (78, 6) and values["method.k2_steps"] == (20, 2)


def test_a_run_too_short_for_the_growth_steps_is_refused_with_the_minimum():
    # 30 steps: t0 = round(0.77) = 1, at most 28 growth steps (2..29) < 37; 1 + 37 + 1 = 39 steps needed
    with pytest.raises(ScheduleError, match="at least 39 steps"):
        scaled_values(rte("increlora"), 30, 3900)
    assert scaled_values(rte("increlora"), 39, 3900)["task.incre_interval"] == (100, 1)


def test_scaled_run_writes_the_values_it_used(make_cfg):
    # tiny RTE: 48 examples, batch 8 -> T_paper = 6 x 50 = 300; a 30-step run has s = 0.1:
    # warm-up 10, t0 10, interval 10 (growth at step 20, as the full run's single growth step 200)
    cfg, overrides = make_cfg([
        "task=rte", "method=triadapt", "threshold=fixed", "task.batch_size=8", "task.warmup_steps=100",
        "train.max_steps=30", "train.schedule=scaled",
    ])
    metrics = run(cfg, overrides)
    schedule = metrics["schedule"]
    assert schedule["paper_steps"] == 300 and schedule["run_steps"] == 30
    assert schedule["values"] == {
        "task.warmup_steps": {"paper": 100, "scaled": 10},
        "task.init_warmup": {"paper": 100, "scaled": 10},
        "task.incre_interval": {"paper": 100, "scaled": 10},
    }
    assert metrics["config"]["task"]["incre_interval"] == 10
    folder = next(Path(cfg.results.root).rglob("growth_log.jsonl")).parent
    growth = [json.loads(line) for line in (folder / "growth_log.jsonl").read_text().splitlines()]
    assert [event["step"] for event in growth] == [20]
    assert OmegaConf.load(folder / "config.yaml").task.init_warmup == 10


@pytest.mark.parametrize("method", ["increlora", "triadapt"])
def test_growth_methods_refuse_a_paper_schedule_that_never_grows(make_cfg, method):
    # 4 steps but the first growth step is 200: IncreLoRA used to accept this and never grow
    cfg, overrides = make_cfg([f"method={method}", "task.warmup_steps=1"])
    with pytest.raises(ConfigError, match=r"no growth step fits.*train\.schedule=scaled"):
        run(cfg, overrides)


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_an_lr_warmup_as_long_as_the_run_is_refused(make_cfg, method):
    cfg, overrides = make_cfg([f"method={method}", "task.warmup_steps=100", "task.adalora.init_warmup=0", "task.adalora.final_warmup=1"])
    key = "task.adalora.warmup_steps" if method == "adalora" else "task.warmup_steps"
    with pytest.raises(ConfigError, match=rf"LR warm-up .* fills the whole run .*{key}.*train\.schedule=scaled"):
        run(cfg, overrides)


# GLUE training-set sizes (the official splits; RTE/MRPC/STS-B/CoLA as in ../shared/data/glue)
GLUE_TRAIN_SIZES = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "stsb": 5749, "qqp": 363846,
                    "mnli": 392702, "qnli": 104743, "rte": 2490}


@pytest.mark.parametrize("task", sorted(GLUE_TRAIN_SIZES))
def test_the_smoke_preset_fits_every_glue_task_and_method(task):
    cfg = compose([f"task={task}", "+preset=smoke"])
    assert cfg.train.schedule == "scaled" and cfg.task.max_seq_length == 64
    full = paper_steps(GLUE_TRAIN_SIZES[task], cfg.task.batch_size, cfg.task.epochs)
    for method in ("lora", "adalora", "increlora", "triadapt", "alora", "dylora"):
        cfg = compose([f"task={task}", f"method={method}", "+preset=smoke"])
        values = scaled_values(cfg, cfg.train.max_steps, full)
        if method in ("increlora", "triadapt"):
            t0, interval = values["task.init_warmup"][1], values["task.incre_interval"][1]
            full_t0, full_interval = values["task.init_warmup"][0], values["task.incre_interval"][0]
            assert count_growth_steps(cfg.train.max_steps, t0, interval) >= count_growth_steps(full, full_t0, full_interval)
