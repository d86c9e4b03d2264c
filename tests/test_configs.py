"""Every task x method composes; Table V values are in the task configs; bad choices fail early."""

import pytest
from hydra.errors import ConfigCompositionException

from adarank.checks import TASKS, ConfigError, check_static
from adarank.methods import REGISTRY
from tests.conftest import CONF_DIR, compose

METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))


def test_every_registered_method_has_a_config_and_vice_versa():
    assert set(METHODS) <= set(REGISTRY)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", METHODS)
def test_every_task_and_method_composes(task, method):
    cfg = compose([f"task={task}", f"method={method}"])
    assert cfg.task.name == task and cfg.method.name == method
    check_static(cfg)


# (epochs, lr, incre rank num, weight decay, warm-up, alpha, dropout, max length, interval, reg coef)
TABLE_V = {
    "mnli": (7, 5e-4, 1, 0, 1000, 16, 0, 256, 1000, 0.1),
    "sst2": (24, 8e-4, 4, 0.01, 1000, 16, 0.3, 128, 1000, 0.1),
    "cola": (25, 1e-3, 4, 0, 100, 32, 0, 64, 100, 0.1),
    "qqp": (7, 6e-4, 4, 0.01, 1000, 16, 0, 320, 1000, 0.1),
    "qnli": (5, 9e-4, 4, 0.01, 500, 32, 0, 512, 500, 0.1),
    "rte": (50, 1.2e-3, 4, 0.01, 100, 32, 0, 320, 100, 0.3),
    "mrpc": (30, 1e-3, 4, 0.01, 100, 32, 0.3, 320, 100, 0.1),
    "stsb": (25, 2.2e-3, 4, 0.1, 100, 32, 0, 128, 100, 0.3),
    "squad_v2": (14, 1e-3, 1, 0, 1000, 16, 0.1, 384, 1000, 0.1),  # Table VI
}
KEYS = ("epochs", "lr", "incre_rank_num", "weight_decay", "warmup_steps", "alpha", "lora_dropout",
        "max_seq_length", "incre_interval", "reg_orth_coef")


@pytest.mark.parametrize("task", sorted(TABLE_V))
def test_task_configs_carry_the_paper_hyperparameters(task):
    cfg = compose([f"task={task}"]).task
    assert tuple(cfg[k] for k in KEYS) == pytest.approx(TABLE_V[task])
    assert cfg.reference_rank == 8
    assert cfg.batch_size == (16 if task == "squad_v2" else 32)
    assert cfg.adalora.init_rank == 12


def test_adalora_rows_of_table_v():
    rte = compose(["task=rte"]).task.adalora
    assert (rte.init_warmup, rte.final_warmup, rte.mask_interval, rte.warmup_steps) == (600, 1800, 1, 200)
    assert compose(["task=mrpc"]).task.adalora.warmup_ratio == 0.1


def test_a_non_growing_method_rejects_a_threshold():
    with pytest.raises(ConfigError, match="does not grow ranks"):
        check_static(compose(["method=lora", "threshold=linear"]))


def test_unknown_group_choices_list_the_valid_ones():
    with pytest.raises(ConfigCompositionException, match="rte"):
        compose(["task=nope"])


def test_in_process_configs_are_checked_too():
    cfg = compose([])
    cfg.method.name = "vera"
    with pytest.raises(ConfigError, match="unknown method 'vera'.*lora"):
        check_static(cfg)


def test_missing_data_dir_is_an_early_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        check_static(compose([f"data.dir={tmp_path}/none"]))
    with pytest.raises(ConfigError, match="RTE/train.tsv"):
        check_static(compose([f"data.dir={tmp_path}"]))


def test_bad_train_options_are_errors():
    with pytest.raises(ConfigError, match="train.max_steps"):
        check_static(compose(["train.max_steps=0"]))
    with pytest.raises(ConfigError, match="train.progress"):
        check_static(compose(["train.progress=loud"]))


def test_missing_squad_files_are_an_early_error(tmp_path):
    with pytest.raises(ConfigError, match="v2.0.json"):
        check_static(compose(["task=squad_v2", f"data.dir={tmp_path}"]))
