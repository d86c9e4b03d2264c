"""The fair protocol (issue 26 §1, docs/fair-protocol.md): the validation split, selection on it,
the dev set evaluated only at the end and never influencing a choice, the best state kept, the
LR from a scale or a table, the trainable-parameter budget, and up-front errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from adarank import results
from adarank import run as run_module
from adarank.checks import ConfigError
from adarank.data import split
from tests.conftest import FOLDERS, compose, write_tiny_glue
from tests.test_checkpoint import trained_tensors

FAIR = ["protocol=fair", "train.eval_interval=3", "task.batch_size=8", "train.max_steps=12"]
GROWTH = ["method=triadapt", "threshold=linear", "task.init_warmup=1", "task.incre_interval=2",
          "task.reference_rank=3", "task.incre_rank_num=1"]


def folder_of(metrics: dict, cfg) -> Path:
    return next(Path(cfg.results.root).rglob(metrics["variant"]))


def log_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


# -- the split ------------------------------------------------------------------------------------
def test_stratified_split_is_deterministic_proportional_and_seed_dependent_only_on_split_seed():
    labels = [0] * 70 + [1] * 30
    first = split.stratified_indices(labels, 10, seed=0)
    assert first == split.stratified_indices(labels, 10, seed=0)
    assert sorted(labels[i] for i in first) == [0] * 7 + [1] * 3  # the 70/30 shares exactly
    assert split.stratified_indices(labels, 10, seed=1) != first
    # largest remainders: strata of 5/3/2 examples, 5 held out -> quotas 2.5/1.5/1.0 -> 2/1/1 and
    # the one left over to the larger remainder, a tie of a and b broken by the name: 3/1/1
    strata = ["a"] * 5 + ["b"] * 3 + ["c"] * 2
    held = [strata[i] for i in split.stratified_indices(strata, 5, seed=0)]
    assert (held.count("a"), held.count("b"), held.count("c")) == (3, 1, 1)


def test_validation_size_fraction_count_cap_and_refusal():
    assert split.validation_size(3668, 0.1, 2000) == 367  # MRPC
    assert split.validation_size(392702, 0.1, 2000) == 2000  # MNLI: capped
    assert split.validation_size(100, 25, None) == 25
    with pytest.raises(split.SplitError, match="leaves none to train on"):
        split.validation_size(10, 10, None)


def test_grouped_split_keeps_articles_whole():
    groups = ["x"] * 4 + ["y"] * 3 + ["z"] * 4 + ["w"] * 2
    held = split.grouped_indices(groups, 5, seed=0)
    taken = {groups[i] for i in held}
    assert len(held) <= 5 and all(groups.count(g) == sum(groups[i] == g for i in held) for g in taken)
    assert split.grouped_indices(["x"] * 4 + ["y"] * 4, 1, seed=0) in ([0, 1, 2, 3], [4, 5, 6, 7])  # none fits: one article


def test_squad_validation_articles_are_disjoint_from_training(tmp_path):
    from adarank.data.squad import load_squad_task
    from adarank.models import load_tokenizer

    cfg = compose(["task=squad_v2", "model=tiny", "protocol=fair", "protocol.val_size=0.3",
                   f"data.dir={Path(__file__).parent / 'fixtures' / 'squad'}", "task.max_seq_length=96",
                   "task.doc_stride=32"])
    data = load_squad_task(cfg.task, cfg.data, cfg.train, load_tokenizer(cfg.model), cfg.protocol)
    held = data.info["validation_split"]
    assert held["articles"] == ["Photosynthesis"]  # the only article of 3 questions (= 30 % of 11)
    assert held["examples"] == 3 and held["train_examples"] == data.info["train_examples"] == 8
    assert data.validation.examples.titles == ["Photosynthesis"] * 3
    from adarank.data.squad import carve_validation, load_local

    train, out, _ = carve_validation(load_local(cfg.task, cfg.data.dir)["train"], cfg.protocol)
    assert set(train.titles) == {"Eiffel_Tower", "Harrowgate_Mill"} and set(out.titles) == {"Photosynthesis"}
    assert not set(train.ids) & set(out.ids) and out.ids == data.validation.examples.ids


def test_glue_split_is_disjoint_shared_by_seeds_and_recorded(make_cfg):
    records = []
    for seed in (0, 1):
        cfg, final = make_cfg([*FAIR, "method=lora", f"seed={seed}", "train.max_steps=2"])
        records.append(run_module.run(cfg, final)["data"])
    held, other = records[0]["validation_split"], records[1]["validation_split"]
    assert held == other  # the run's seed does not move the split
    assert held["examples"] == 5 and held["train_examples"] == 43 == records[0]["train_examples"]  # 10 % of 48
    assert held["strata"] == {"0": 3, "1": 2}  # 24 / 24 labels: 2.5 / 2.5, the tie to label 0
    # disjoint: the held-out rows and the training rows partition the file
    from adarank.data.glue import Examples, carve_validation

    texts = [(f"s{i}",) for i in range(48)]
    rest, out, info = carve_validation(Examples(texts, [i % 2 for i in range(48)]), OmegaConf.create(
        {"split_seed": 0, "val_size": 0.1, "val_max": 2000}), regression=False)
    assert set(rest.texts).isdisjoint(out.texts) and len(rest.texts) + len(out.texts) == 48
    assert info["ids_sha256"] == split.ids_hash(sorted(int(t[0][1:]) for t in out.texts))


# -- selection on validation, dev only at the end ---------------------------------------------------
def test_dev_is_evaluated_only_after_the_last_optimizer_step(make_cfg, monkeypatch):
    from adarank.training import loop

    steps, dev_calls = [], []
    real_step = loop.optimization_step

    def counting_step(*args, **kwargs):
        steps.append(1)
        return real_step(*args, **kwargs)

    real_build = run_module.build_task_data

    def recording_build(*args, **kwargs):
        data = real_build(*args, **kwargs)
        dev = data.evaluate

        def evaluate(*a, **k):
            dev_calls.append(len(steps))
            return dev(*a, **k)

        data.evaluate = evaluate
        return data

    monkeypatch.setattr(loop, "optimization_step", counting_step)
    monkeypatch.setattr(run_module, "build_task_data", recording_build)
    cfg, final = make_cfg([*FAIR, *GROWTH])
    metrics = run_module.run(cfg, final)
    assert len(steps) == 12 and metrics["evaluations"] == 4  # steps 3, 6, 9 and the final one, on validation
    assert dev_calls and set(dev_calls) == {12}  # at the best checkpoint and at the last step: after training
    assert len(dev_calls) == (1 if metrics["best"]["step"] == 12 else 2)


def flipped_dev(root: Path) -> Path:
    """A copy of the tiny GLUE folder whose RTE dev labels are all flipped."""
    write_tiny_glue(root)
    dev = root / FOLDERS["rte"] / "dev.tsv"
    flip = {"entailment": "not_entailment", "not_entailment": "entailment"}
    lines = dev.read_text().splitlines()
    rows = [line.split("\t") for line in lines[1:]]
    dev.write_text("\n".join([lines[0]] + ["\t".join(r[:-1] + [flip[r[-1]]]) for r in rows]) + "\n")
    return root


def test_corrupted_dev_labels_change_no_choice_and_no_training_step(make_cfg, tmp_path):
    overrides = [*FAIR, *GROWTH, "train.log_interval=1", "results.save_adapter=true"]
    cfg, final = make_cfg(overrides)
    clean = run_module.run(cfg, final)
    cfg2, final2 = make_cfg([*overrides, f"data.dir={flipped_dev(tmp_path / 'flipped')}",
                             f"results.root={tmp_path / 'flipped_results'}"])
    corrupted = run_module.run(cfg2, final2)
    a, b = folder_of(clean, cfg), folder_of(corrupted, cfg2)
    # every loss, LR, validation evaluation and growth event; the chosen step; the trained tensors
    assert (a / "train_log.jsonl").read_text() == (b / "train_log.jsonl").read_text()
    assert (a / "growth_log.jsonl").read_text() == (b / "growth_log.jsonl").read_text()
    assert clean["best"] == corrupted["best"] and clean["final"] == corrupted["final"]
    ta, tb = trained_tensors(a), trained_tensors(b)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    # ... while the dev ("test") scores did see the flipped labels: every prediction now scores the other way
    for key in ("test_at_best_val", "test_at_last"):
        assert clean[key]["step"] == corrupted[key]["step"]
        assert clean[key]["accuracy"] + corrupted[key]["accuracy"] == pytest.approx(100.0)


def test_test_at_best_val_is_the_dev_score_of_the_model_at_the_best_step(make_cfg, monkeypatch):
    """Validation scores are scripted so that step 6 is the best and the model keeps growing
    after it; the dev score the model had at step 6 (read in this test only) must equal the one
    metrics.json reports, which comes from the saved state loaded into a rebuilt model."""
    from adarank.training import best_state, loop

    script = iter([50.0, 90.0, 10.0, 10.0])  # steps 3, 6, 9, 12
    real_build = run_module.build_task_data
    live_dev = {}

    def scripted_build(*args, **kwargs):
        data = real_build(*args, **kwargs)
        validate = data.validation

        def scripted(*a, **k):
            return {**validate(*a, **k), "accuracy": next(script)}

        data.validation = scripted
        live_dev["evaluate"] = data.evaluate
        return data

    real_snapshot = best_state.snapshot

    def snapshot_and_score(model, method):
        live_dev["at_snapshot"] = live_dev["evaluate"](model, torch.device("cpu"), final=True)
        live_dev["rank"] = sum(method.rank_pattern(model).values())
        return real_snapshot(model, method)

    monkeypatch.setattr(run_module, "build_task_data", scripted_build)
    monkeypatch.setattr(loop.best_state, "snapshot", snapshot_and_score)
    cfg, final = make_cfg([*FAIR, *GROWTH, "task.reference_rank=4"])
    metrics = run_module.run(cfg, final)
    assert metrics["best"] == {**metrics["best"], "accuracy": 90.0, "step": 6}
    assert metrics["test_at_best_val"] == {**live_dev["at_snapshot"], "step": 6}
    assert metrics["test_at_last"]["step"] == 12
    assert metrics["rank"]["total_rank"] > live_dev["rank"]  # it grew after the chosen step


# -- the learning rate ----------------------------------------------------------------------------
def test_lr_scale_sets_the_peak_lr_and_enters_the_identity(make_cfg):
    cfg, final = make_cfg([*FAIR, "method=lora", "protocol.lr_scale=0.5", "train.max_steps=2", "train.log_interval=1"])
    metrics = run_module.run(cfg, final)
    default = compose(["task=rte"]).task.lr
    assert metrics["protocol"]["lr"] == {"key": "task.lr", "default": default, "scale": 0.5, "value": default / 2,
                                         "source": "scale"}
    folder = folder_of(metrics, cfg)
    assert log_lines(folder)[0]["lr"] == pytest.approx(default / 2)  # step 1 at the peak (no warm-up)
    assert metrics["config"]["task"]["lr"] == default / 2


def test_full_fine_tuning_scales_its_own_lr(make_cfg):
    cfg, final = make_cfg([*FAIR, "method=full", "protocol.lr_scale=4", "train.max_steps=1"])
    lr = run_module.run(cfg, final)["protocol"]["lr"]
    assert (lr["key"], lr["value"]) == ("method.lr", 4 * 2e-5)


def write_table(path: Path, entries: dict) -> Path:
    path.write_text(OmegaConf.to_yaml(OmegaConf.create({"lr": entries})))
    return path


def test_lr_table_gives_the_lr_and_the_same_config_hash_as_that_lr_typed(make_cfg, tmp_path):
    table = write_table(tmp_path / "selected_lr.yaml", {"rte": {"lora": 0.003}})
    cfg, final = make_cfg([*FAIR, "method=lora", f"protocol.lr_table={table}", "train.max_steps=1"])
    metrics = run_module.run(cfg, final)
    assert metrics["protocol"]["lr"]["source"] == "table" and metrics["config"]["task"]["lr"] == 0.003
    typed, _ = make_cfg([*FAIR, "method=lora", "task.lr=0.003", "train.max_steps=1"])
    assert metrics["variant"].endswith(results.config_hash(typed))  # the table's path is not part of the identity


def test_a_missing_lr_table_entry_is_refused_before_any_compute(make_cfg, tmp_path, monkeypatch):
    table = write_table(tmp_path / "selected_lr.yaml", {"rte": {"lora": 0.003}})
    monkeypatch.setattr(run_module, "build_task_data", lambda *a, **k: pytest.fail("data read"))
    cfg, final = make_cfg([*FAIR, "method=triadapt", f"protocol.lr_table={table}"])
    with pytest.raises(ConfigError, match=r"no learning rate for 1 \(task, arm\) pair\(s\): rte/triadapt_linear"):
        run_module.run(cfg, final)


@pytest.mark.parametrize("override, message", [
    ("protocol.lr_scale=0", "protocol.lr_scale must be a number > 0"),
    ("protocol.val_size=1.5", "protocol.val_size must be a fraction in"),
    ("protocol.split_seed=-1", "protocol.split_seed must be an integer >= 0"),
    ("+protocol.val_sise=3", "unknown config key protocol.val_sise"),
])
def test_bad_protocol_values_are_one_line_errors(make_cfg, override, message):
    cfg, final = make_cfg(["protocol=fair", override])
    with pytest.raises(ConfigError, match=message):
        run_module.run(cfg, final)


def test_a_fair_key_under_the_paper_protocol_is_refused(make_cfg):
    cfg, final = make_cfg(["+protocol.val_size=0.2"])
    with pytest.raises(ConfigError, match="belongs to the fair protocol; add protocol=fair"):
        run_module.run(cfg, final)


def test_the_paper_protocol_keeps_its_hash_and_the_fair_one_has_its_own():
    paper = compose(["task=rte", "method=lora"])
    assert results.config_hash(paper) == "88fdfa56"  # tests/test_run_identity.py's recorded run
    assert results.config_hash(compose(["task=rte", "method=lora", "protocol=fair"])) != "88fdfa56"


# -- budgets --------------------------------------------------------------------------------------
def test_trainable_budget_is_split_into_adapter_head_and_other(make_cfg):
    hidden, inter, layers = 32, 64, 2  # the tiny model (tests/test_run.py counts the same)
    head = (hidden * hidden + hidden) + (hidden * 2 + 2)
    lora = layers * (4 * 8 * 2 * hidden + 8 * (hidden + inter) + 8 * (inter + hidden))
    biases = layers * (4 * hidden + inter + hidden + 2 * hidden) + 2 * hidden
    budgets = {}
    for method in ("lora", "bitfit", "full"):
        cfg, final = make_cfg([f"method={method}", "train.max_steps=1"])
        budgets[method] = run_module.run(cfg, final)["costs"]["trainable"]
    assert budgets["lora"]["start"] == {"adapter": lora, "head": head, "other": 0, "total": lora + head}
    assert budgets["bitfit"]["end"] == {"adapter": 0, "head": head, "other": biases, "total": head + biases}
    full = budgets["full"]["peak"]
    assert full["adapter"] == 0 and full["head"] == head and full["other"] == full["total"] - head > 100 * lora


def test_growth_raises_the_peak_and_tokens_count_every_training_token(make_cfg):
    # batch 8 over the 43 training rows: 6 steps = exactly one epoch, every example drawn once
    cfg, final = make_cfg([*FAIR, *GROWTH, "train.max_steps=6"])
    metrics = run_module.run(cfg, final)
    budget = metrics["costs"]["trainable"]
    assert budget["peak"] == budget["end"] and budget["end"]["adapter"] > budget["start"]["adapter"]
    assert budget["end"]["head"] == budget["start"]["head"]
    from adarank.data.glue import Examples, carve_validation, load_local, tokenize
    from adarank.models import load_tokenizer

    raw = load_local(cfg.task, cfg.data.dir)["train"]
    train, _, _ = carve_validation(Examples(raw.texts, raw.labels), cfg.protocol, regression=False)
    features = tokenize(train, load_tokenizer(cfg.model), cfg.task.max_seq_length, regression=False).features
    assert metrics["costs"]["tokens_processed"] == sum(len(f["input_ids"]) for f in features)
