"""Issue 12 §3 (and issue 24 §4): bad input is refused with one clear line before any compute (no training here)."""

from __future__ import annotations

import json
import logging

import pytest
from hydra.types import RunMode
from omegaconf import OmegaConf

from adarank import jobs
from adarank import run as run_module
from adarank.analysis import build_report, load_runs, write_report
from adarank.analysis.runs import BAD_FILE
from adarank.analysis.synthetic import fake_run
from adarank.checks import ConfigError, check_static
from adarank.data.glue import TSV_LAYOUTS, GlueDataError, read_tsv
from adarank.data.squad import SquadDataError, read_squad_json
from tests.conftest import CONF_DIR, compose


@pytest.mark.parametrize("override,message", [
    ("task.batch_size=0", "task.batch_size must be an integer >= 1, got 0"),
    ("train.log_interval=0", "train.log_interval must be an integer >= 1, got 0"),
    ("task.lr=0", "task.lr must be a finite number > 0, got 0"),
    ("task.lr=-1", "task.lr must be a finite number > 0, got -1"),
    ("task.lr=abc", "task.lr must be a finite number > 0, got 'abc'"),
    ("task.lr=inf", "task.lr must be a finite number > 0, got inf"),
    ("task.lr=nan", "task.lr must be a finite number > 0, got nan"),
    ("task.weight_decay=inf", "task.weight_decay must be a finite number >= 0, got inf"),
    ("task.max_seq_length=0", "task.max_seq_length must be an integer >= 1, got 0"),
    ("seed=-1", "seed must be an integer >= 0, got -1"),
    ("seed=abc", "seed must be an integer >= 0, got 'abc'"),
    ("seed=1.5", "seed must be an integer >= 0, got 1.5"),
    ("train.eval_batch_size=0", "train.eval_batch_size must be an integer >= 1, got 0"),
    ("train.device=tpu", "unknown train.device 'tpu'"),
    ("train.device=gpu", "unknown train.device 'gpu'"),
    ("train.max_steps=true", "train.max_steps must be a positive integer or null, got True"),
])
def test_bad_numbers_and_devices_are_refused_by_the_static_check(override, message):
    with pytest.raises(ConfigError) as err:
        check_static(compose([override]))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_full_fine_tunings_own_lr_is_checked_like_the_tasks():
    for value, shown in (("0", "0"), ("-1e-5", "-1e-05"), ("abc", "'abc'"), ("inf", "inf")):
        with pytest.raises(ConfigError, match=f"method.lr must be a finite number > 0, got {shown}"):
            check_static(compose(["method=full", f"method.lr={value}"]))
    check_static(compose(["method=lora"]))  # the other methods have no method.lr
    check_static(compose(["method=lora", "train.max_grad_norm=inf"]))  # torch's "no clipping"


@pytest.mark.parametrize("overrides,message", [
    (["+train.max_step=10"], "unknown config key train.max_step (did you mean train.max_steps?)"),
    (["method=lora", "+method.rnak=4"], "unknown config key method.rnak"),
    (["method=full", "+method.typo=1"], "unknown config key method.typo"),
    (["method=bitfit", "+method.typo=1"], "unknown config key method.typo"),
    (["method=triadapt", "+method.init_rnak=2"], "unknown config key method.init_rnak (did you mean method.init_rank?)"),
    (["+data.dirr=/x"], "unknown config key data.dirr (did you mean data.dir?)"),
    (["+results.rot=/x"], "unknown config key results.rot (did you mean results.root?)"),
    (["+sed=3"], "unknown config key sed (did you mean seed?)"),
])
def test_unknown_keys_are_refused(overrides, message):
    with pytest.raises(ConfigError, match="unknown config key") as err:
        check_static(compose(overrides))
    assert message in str(err.value)


def test_data_dir_pointing_at_a_file_says_so(tmp_path):
    path = tmp_path / "glue.zip"
    path.write_text("x")
    with pytest.raises(ConfigError, match="glue.zip is a file, not a folder"):
        check_static(compose([f"data.dir={path}"]))


# --- data files -------------------------------------------------------------------------------------

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def write(tmp_path, text, name="train.tsv"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


@pytest.mark.parametrize("task,text,message", [
    ("rte", "", r"train.tsv is empty"),
    ("cola", "", r"train.tsv holds no example"),
    ("rte", RTE_HEADER, r"train.tsv holds no example \(only a header line\)"),
    ("rte", (RTE_HEADER + "0\ta .\tb .\tentailment\n1\tc \xff .\td .\tentailment\n").encode("latin-1"),
     r"train.tsv:3: not UTF-8 text \(byte 0xff"),
    ("mrpc", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n2\t1\t2\ta .\tb .\n", r"train.tsv:2: label '2' is not a class id"),
    ("cola", "src\t3\t*\ta .\n", r"train.tsv:1: label '3' is not a class id"),
    ("sst2", "sentence\tlabel\na .\t-1\n", r"train.tsv:2: label '-1' is not a class id"),
    ("qqp", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\ta\tb\t7\n", r"train.tsv:2: label '7'"),
    ("qnli", "index\tquestion\tsentence\tlabel\n0\ta\tb\t1\n", r"train.tsv:2: unreadable label '1'"),
    ("stsb", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
     "0\tm\tf\t2012\t0\tn\tn\ta .\tb .\t5.5\n", r"train.tsv:2: similarity score '5.5' outside \[0, 5\]"),
])
def test_bad_glue_files_name_the_file_and_line(tmp_path, task, text, message):
    num_labels = OmegaConf.load(CONF_DIR / "task" / f"{task}.yaml").num_labels
    with pytest.raises(GlueDataError, match=message):
        read_tsv(write(tmp_path, text), TSV_LAYOUTS[task], num_labels if num_labels > 1 else None)


def test_mnli_unknown_label_names_the_line(tmp_path):
    header = "\t".join(["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1",
                        "sentence2", "label1", "gold_label"]) + "\n"
    row = "\t".join(["0"] * 8 + ["a", "b", "x", "maybe"]) + "\n"
    with pytest.raises(GlueDataError, match=r"dev_matched.tsv:2: unreadable label 'maybe'"):
        read_tsv(write(tmp_path, header + row, "dev_matched.tsv"), TSV_LAYOUTS["mnli"], 3)


def test_squad_files_not_utf8_or_without_questions(tmp_path):
    with pytest.raises(SquadDataError, match="not UTF-8"):
        read_squad_json(write(tmp_path, b'{"data": ["\xff"]}', "train-v2.0.json"))
    with pytest.raises(SquadDataError, match="holds no question"):
        read_squad_json(write(tmp_path, json.dumps({"data": []}), "dev-v2.0.json"))


@pytest.mark.parametrize("split", ["train.tsv", "dev.tsv"])
def test_a_bad_data_file_stops_the_run_before_the_model_is_built(make_cfg, tmp_path, monkeypatch, split):
    data = tmp_path / "glue"
    (data / "RTE").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (data / "RTE" / name).write_text(RTE_HEADER + "0\ta .\tb .\tentailment\n")
    (data / "RTE" / split).write_text(RTE_HEADER)  # header only
    monkeypatch.setattr(run_module, "load_model", lambda *a, **k: pytest.fail("the model was built"))
    cfg, overrides = make_cfg([f"data.dir={data}", "method=bitfit"])
    with pytest.raises(GlueDataError, match=f"RTE/{split} holds no example"):
        run_module.run(cfg, overrides)
    # train.py's answer: one line, no traceback
    hydra_cfg = OmegaConf.create({"mode": RunMode.RUN, "overrides": {"task": overrides}, "runtime": {"output_dir": str(tmp_path)},
                                  "job": {"num": 0}})
    with pytest.raises(SystemExit) as stop:
        jobs.run_job(run_module.run, cfg, hydra_cfg)
    assert str(stop.value).startswith("data error: ") and f"RTE/{split} holds no example" in str(stop.value)


# --- make tables on bad metrics.json files -----------------------------------------------------------


def test_make_tables_skips_bad_metrics_files_with_a_warning_and_counts_them(tmp_path, caplog):
    root = tmp_path / "raw"
    good = fake_run(root, "rte", "lora", 0, 80.0)
    metrics = json.loads((good / "metrics.json").read_text())
    bad = {
        "latin1": "caf\xe9".encode("latin-1"),
        "list": b"[1, 2, 3]",
        "null": b"null",
        "foreign": json.dumps({"accuracy": 0.9, "model": "bert"}).encode(),
        "wrong_type": json.dumps({**metrics, "best": [1, 2]}).encode(),
        "nan_score": json.dumps({**metrics, "best": {**metrics["best"], "accuracy": float("nan")}}).encode(),
        "bad_seed": json.dumps({**metrics, "seed": "zero"}).encode(),
        # issue 24 §4: every field the tables read is type-checked, names are checked against conf/
        **{name: json.dumps({**metrics, **change}).encode() for name, change in {
            "rank_string": {"rank": "x"},
            "rank_total_string": {"rank": {"total_rank": "x"}},
            "unknown_method": {"method": "lroa"},
            "negative_seed": {"seed": -1},
            "empty_config": {"config": {}},
            "unknown_threshold": {"threshold": "quadratic"},
            "cost_string": {"costs": {**metrics["costs"], "wall_seconds": "slow"}},
            "cost_bool": {"costs": {**metrics["costs"], "optimizer_steps": True}},
            "best_string": {"best": {**metrics["best"], "f1": "high"}},
            "by_rank_keys": {"by_rank": {"x": {"accuracy": 1.0}}},
        }.items()},
    }
    for name, content in bad.items():
        folder = root / "rte" / "lora" / "seed9" / f"{name}-0000"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_bytes(content)
    dropped = []
    with caplog.at_level(logging.WARNING, logger="adarank.analysis.runs"):
        runs = load_runs(root, dropped=dropped)
    assert list(runs["run_dir"]) == [str(good)]
    assert sorted(d[0].rsplit("/", 1)[-1] for d in dropped) == sorted(f"{n}-0000" for n in bad)
    assert caplog.text.count("skipping") == len(bad)
    assert "method 'lroa' is none of" in caplog.text and "seed -1 is not an integer >= 0" in caplog.text
    assert f"{len(bad)} run(s) left out of every table: {BAD_FILE}" in build_report(root).summary()
    write_report(root, tmp_path / "tables")  # and the whole report is written
