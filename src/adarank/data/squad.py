"""SQuAD 2.0: examples, doc-stride windows, and the TaskData the training loop consumes.

Sources: the hub's ``squad_v2`` (``datasets.load_dataset(task.hf_name)``) or, with ``data.dir``,
the original SQuAD JSON files ``train-v2.0.json`` and ``dev-v2.0.json`` (``data → paragraphs →
qas``). Both give the same flat examples: ``id``, ``question``, ``context`` and ``answers``
(``{"text": [...], "answer_start": [...]}``, empty for an unanswerable question).

Preprocessing follows transformers' ``run_qa.py`` (a fast tokenizer is required for the offsets):

* the question is left-stripped and paired with the context, truncating only the context, with
  ``max_length = min(task.max_seq_length, tokenizer.model_max_length)`` and overlapping windows
  of the context (``stride = task.doc_stride`` tokens shared by consecutive windows), so a long
  context yields several windows (features) of the same question;
* training labels: the first gold answer's start/end tokens when the answer lies entirely inside
  the window's context (start = last context token starting at or before the answer's first
  character, end = first context token ending at or after its last character); the CLS index for
  an unanswerable question and for a window that does not contain the whole answer;
* evaluation windows keep their question id and the character offsets of their context tokens;
  predictions are post-processed by :mod:`adarank.data.qa_postprocess` and scored by
  :mod:`adarank.metrics.squad_v2`.

With ``data.cache_dir`` set, the windows are cached there (``adarank_squad/windows-<hash>.npz``,
keyed by the examples, the tokenizer and the window sizes), so only the first run of a sweep
tokenises the full dataset.

``train.max_train_samples`` / ``train.max_eval_samples`` cap *examples* (questions), never
windows, so every evaluated question keeps all its windows. Periodic evaluations use at most
``task.periodic_eval_max_examples`` dev questions (a fixed random sample, the same at every
evaluation and for every seed); the final evaluation always uses the whole dev set (after
``train.max_eval_samples``). The metrics say which: ``eval_examples`` (questions scored) next to
``dev_examples`` (questions in the dev split before any cap).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import OmegaConf

from adarank.data.task_data import TaskData
from adarank.data import split as splitting
from adarank.data.qa_postprocess import QuestionAggregator, best_spans_in_windows, gap_summary, window_losses
from adarank.metrics.squad_v2 import squad_v2_scores

log = logging.getLogger("adarank")

SPLIT_FILES = {"train": "train-v2.0.json", "validation": "dev-v2.0.json"}
TOKENIZE_CHUNK = 1000  # examples per tokenizer call (bounds the memory of offset lists)
PERIODIC_SAMPLE_SEED = 0
WINDOWS_CACHE_VERSION = 1  # bump when tokenize_windows changes what it produces


class SquadDataError(ValueError):
    """Missing or malformed SQuAD data."""


# --------------------------------------------------------------------------------------------
# examples


@dataclass
class SquadExamples:
    """Flat question list, column-wise (the hub's ``squad_v2`` schema)."""

    ids: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)
    answers: list[dict] = field(default_factory=list)  # {"text": [...], "answer_start": [...]}
    fingerprint: str | None = None  # the hub split's datasets fingerprint (data/fingerprint.py)
    # each question's article (the fair protocol's split); metadata, not part of an example's identity
    titles: list[str] = field(default_factory=list, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices) -> "SquadExamples":
        indices = list(indices)
        return SquadExamples(
            [self.ids[i] for i in indices],
            [self.questions[i] for i in indices],
            [self.contexts[i] for i in indices],
            [self.answers[i] for i in indices],
            titles=[self.titles[i] for i in indices] if self.titles else [],
        )

    def head(self, n: int | None) -> "SquadExamples":
        return self if not n or n >= len(self) else self.subset(range(n))


def read_squad_json(path: str) -> SquadExamples:
    """Read an original-format SQuAD file (``{"data": [{"paragraphs": [{"context", "qas"}]}]}``)."""
    try:
        with open(path, encoding="utf-8") as handle:
            articles = json.load(handle)["data"]
    except UnicodeDecodeError as err:
        raise SquadDataError(f"{path}: not UTF-8 text (byte offset {err.start})") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise SquadDataError(f"{path} is not a SQuAD JSON file ({type(err).__name__}: {err})") from err
    examples = SquadExamples()
    for number, article in enumerate(articles):
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                examples.titles.append(str(article.get("title", number)))
                golds = [] if qa.get("is_impossible") else qa.get("answers", [])
                examples.ids.append(str(qa["id"]))
                examples.questions.append(qa["question"])
                examples.contexts.append(context)
                examples.answers.append(
                    {"text": [a["text"] for a in golds], "answer_start": [int(a["answer_start"]) for a in golds]}
                )
    if not examples.ids:
        raise SquadDataError(f"{path} holds no question")
    return examples


def local_files(task_cfg, data_dir: str) -> dict[str, str]:
    folder = os.path.join(data_dir, task_cfg.get("local_dir", ".") or ".")
    return {split: os.path.join(folder, name) for split, name in SPLIT_FILES.items()}


def check_local_files(task_cfg, data_dir: str) -> None:
    """Raise :class:`SquadDataError` naming every missing file (``checks`` can call this early)."""
    missing = [path for path in local_files(task_cfg, data_dir).values() if not os.path.isfile(path)]
    if missing:
        raise SquadDataError(
            f"data.dir={data_dir} lacks {', '.join(missing)}; expected the original SQuAD 2.0 JSON "
            f"files {SPLIT_FILES['train']} and {SPLIT_FILES['validation']} (from "
            "https://rajpurkar.github.io/SQuAD-explorer/), or leave data.dir unset to use the hub"
        )


def load_local(task_cfg, data_dir: str) -> dict[str, SquadExamples]:
    check_local_files(task_cfg, data_dir)
    return {split: read_squad_json(path) for split, path in local_files(task_cfg, data_dir).items()}


def load_hub(task_cfg, cache_dir=None) -> dict[str, SquadExamples]:
    import datasets

    try:
        dataset = datasets.load_dataset(task_cfg.hf_name, cache_dir=cache_dir)
    except Exception as err:  # ConnectionError, hub errors, offline mode: all mean "not reachable"
        raise SquadDataError(
            f"could not load {task_cfg.hf_name!r} from the Hugging Face hub ({type(err).__name__}: "
            f"{err}). Without network, point data.dir at a folder holding {SPLIT_FILES['train']} "
            f"and {SPLIT_FILES['validation']}: python train.py task=squad_v2 data.dir=/path/to/squad"
        ) from err
    out = {}
    for split in SPLIT_FILES:
        rows = dataset[split]
        answers = [
            {"text": list(a["text"]), "answer_start": [int(s) for s in a["answer_start"]]}
            for a in rows["answers"]
        ]
        out[split] = SquadExamples(list(rows["id"]), list(rows["question"]), list(rows["context"]), answers,
                                   getattr(rows, "_fingerprint", None), list(rows["title"]))
    return out


# --------------------------------------------------------------------------------------------
# windows (features)


@dataclass
class Windows:
    """Tokenised windows, ragged (one array per window, no padding).

    ``example_index[w]`` is the question a window belongs to; ``offsets[w]`` is an int32 array
    [len, 2] of character spans, ``-1`` for tokens outside the context; ``start``/``end`` are the
    training labels (token indices, the CLS index when the window holds no answer).
    """

    input_ids: list = field(default_factory=list)
    token_type_ids: list | None = None
    offsets: list = field(default_factory=list)
    example_index: list = field(default_factory=list)
    cls_index: list = field(default_factory=list)
    start: list = field(default_factory=list)
    end: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def window_length(task_cfg, tokenizer) -> int:
    return min(int(task_cfg.max_seq_length), int(tokenizer.model_max_length))


def _label_window(offsets: np.ndarray, answer: dict, cls_index: int) -> tuple[int, int]:
    """Start/end token of the first gold answer inside the window's context, else CLS twice."""
    if not answer["text"]:
        return cls_index, cls_index
    start_char = answer["answer_start"][0]
    end_char = start_char + len(answer["text"][0])
    context_tokens = np.flatnonzero(offsets[:, 0] >= 0)
    if len(context_tokens) == 0:
        return cls_index, cls_index
    first, last = context_tokens[0], context_tokens[-1]
    if not (offsets[first, 0] <= start_char and offsets[last, 1] >= end_char):
        return cls_index, cls_index
    starts = offsets[context_tokens, 0]
    ends = offsets[context_tokens, 1]
    start_token = context_tokens[np.flatnonzero(starts <= start_char)[-1]]
    end_token = context_tokens[np.flatnonzero(ends >= end_char)[0]]
    return int(start_token), int(end_token)


def tokenize_windows(examples: SquadExamples, tokenizer, max_length: int, doc_stride: int) -> Windows:
    """Split every question + context into overlapping windows and label them (see module doc)."""
    if not getattr(tokenizer, "is_fast", False):
        raise SquadDataError("SQuAD preprocessing needs a fast tokenizer (character offsets)")
    pad_on_right = tokenizer.padding_side == "right"
    context_id = 1 if pad_on_right else 0
    windows = Windows()
    for begin in range(0, len(examples), TOKENIZE_CHUNK):
        stop = min(begin + TOKENIZE_CHUNK, len(examples))
        questions = [q.lstrip() for q in examples.questions[begin:stop]]
        contexts = examples.contexts[begin:stop]
        encoded = tokenizer(
            questions if pad_on_right else contexts,
            contexts if pad_on_right else questions,
            truncation="only_second" if pad_on_right else "only_first",
            max_length=max_length,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding=False,
        )
        has_types = "token_type_ids" in encoded
        if has_types and windows.token_type_ids is None:
            windows.token_type_ids = []
        for w, ids in enumerate(encoded["input_ids"]):
            example = begin + encoded["overflow_to_sample_mapping"][w]
            sequence_ids = encoded.sequence_ids(w)
            offsets = np.asarray(encoded["offset_mapping"][w], dtype=np.int32).reshape(-1, 2)
            offsets[[s != context_id for s in sequence_ids]] = -1
            cls_index = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
            start, end = _label_window(offsets, examples.answers[example], cls_index)
            windows.input_ids.append(np.asarray(ids, dtype=np.int32))
            if has_types:
                windows.token_type_ids.append(np.asarray(encoded["token_type_ids"][w], dtype=np.int8))
            windows.offsets.append(offsets)
            windows.example_index.append(example)
            windows.cls_index.append(cls_index)
            windows.start.append(start)
            windows.end.append(end)
    return windows


def windows_cache_key(examples: SquadExamples, tokenizer, max_length: int, doc_stride: int) -> str:
    """Hash of everything the windows depend on: the examples, the tokenizer, the window sizes."""
    digest = hashlib.sha256()
    settings = [WINDOWS_CACHE_VERSION, max_length, doc_stride, tokenizer.padding_side,
                type(tokenizer).__name__, tokenizer.cls_token_id]
    digest.update(json.dumps(settings).encode())
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    for qid, question, context, answers in zip(examples.ids, examples.questions, examples.contexts, examples.answers):
        digest.update(json.dumps([qid, question, context, answers["text"], answers["answer_start"]]).encode())
    return digest.hexdigest()


def _save_windows(windows: Windows, path: str) -> None:
    lengths = np.array([len(ids) for ids in windows.input_ids], dtype=np.int64)
    arrays = {
        "lengths": lengths,
        "input_ids": np.concatenate(windows.input_ids) if len(windows) else np.zeros(0, np.int32),
        "offsets": np.concatenate(windows.offsets) if len(windows) else np.zeros((0, 2), np.int32),
        "labels": np.array([windows.example_index, windows.cls_index, windows.start, windows.end], dtype=np.int64).reshape(4, -1),
    }
    if windows.token_type_ids is not None:
        arrays["token_type_ids"] = np.concatenate(windows.token_type_ids)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _load_windows(path: str) -> Windows:
    with np.load(path) as data:
        bounds = np.cumsum(data["lengths"])[:-1]
        example_index, cls_index, start, end = (row.tolist() for row in data["labels"])
        return Windows(
            input_ids=np.split(data["input_ids"], bounds),
            token_type_ids=np.split(data["token_type_ids"], bounds) if "token_type_ids" in data else None,
            offsets=np.split(data["offsets"], bounds),
            example_index=example_index, cls_index=cls_index, start=start, end=end,
        )


def cached_windows(examples: SquadExamples, tokenizer, max_length: int, doc_stride: int, cache_dir=None) -> Windows:
    """:func:`tokenize_windows`, stored under ``cache_dir/adarank_squad/`` when a cache folder is
    given (tokenising all of SQuAD takes minutes; a sweep reuses the windows of its first run)."""
    if not cache_dir or not len(examples):
        return tokenize_windows(examples, tokenizer, max_length, doc_stride)
    key = windows_cache_key(examples, tokenizer, max_length, doc_stride)
    folder = os.path.join(cache_dir, "adarank_squad")
    path = os.path.join(folder, f"windows-{key[:24]}.npz")
    if os.path.isfile(path):
        return _load_windows(path)
    windows = tokenize_windows(examples, tokenizer, max_length, doc_stride)
    os.makedirs(folder, exist_ok=True)
    _save_windows(windows, path)
    return windows


class WindowDataset(torch.utils.data.Dataset):
    """Training/evaluation windows as dicts of numpy arrays (padded by :func:`make_collate`)."""

    def __init__(self, windows: Windows, with_labels: bool):
        self.windows = windows
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict:
        w = self.windows
        item = {"input_ids": w.input_ids[index]}
        if w.token_type_ids is not None:
            item["token_type_ids"] = w.token_type_ids[index]
        if self.with_labels:
            item["start_positions"] = w.start[index]
            item["end_positions"] = w.end[index]
        return item


def make_collate(pad_token_id: int, pad_to_multiple_of: int | None = None):
    """Dynamic padding (right) to the longest window of the batch (rounded up to a multiple of
    ``pad_to_multiple_of`` when given), with an attention mask."""

    def collate(items: list[dict]) -> dict:
        width = max(len(item["input_ids"]) for item in items)
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        input_ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        token_type_ids = torch.zeros((len(items), width), dtype=torch.long) if "token_type_ids" in items[0] else None
        for i, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[i, :n] = torch.from_numpy(np.asarray(item["input_ids"], dtype=np.int64))
            attention_mask[i, :n] = 1
            if token_type_ids is not None:
                token_type_ids[i, :n] = torch.from_numpy(np.asarray(item["token_type_ids"], dtype=np.int64))
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        if "start_positions" in items[0]:
            batch["start_positions"] = torch.tensor([item["start_positions"] for item in items], dtype=torch.long)
            batch["end_positions"] = torch.tensor([item["end_positions"] for item in items], dtype=torch.long)
        return batch

    return collate


# --------------------------------------------------------------------------------------------
# evaluation


class SquadEvaluator:
    """``evaluate(model, device, final)`` for SQuAD 2.0; keeps the last answers for inspection.

    After a call, ``last_predictions`` maps question id -> answer text ("" = no answer) and
    ``last_score_diffs`` question id -> null-score difference (the no-answer score).

    Besides the SQuAD 2.0 scores, each evaluation returns ``answerability`` (see
    :func:`answerability_diagnostics`): the dev loss of the evaluated windows split by label, and the
    distribution of the null-score difference over answerable and unanswerable questions.
    """

    def __init__(self, examples: SquadExamples, windows: Windows, task_cfg, batch_size: int, collate,
                 dev_examples: int | None = None):
        self.examples = examples
        self.windows = windows
        self.task = task_cfg
        self.batch_size = batch_size
        self.collate = collate
        self.dev_examples = len(examples) if dev_examples is None else dev_examples
        self.periodic_examples = self._periodic_sample(task_cfg.get("periodic_eval_max_examples"))
        self.last_predictions: dict[str, str] = {}
        self.last_score_diffs: dict[str, float] = {}

    def _periodic_sample(self, cap) -> set[int] | None:
        if not cap or cap >= len(self.examples):
            return None
        rng = random.Random(PERIODIC_SAMPLE_SEED)
        return set(rng.sample(range(len(self.examples)), int(cap)))

    def __call__(self, model, device, final: bool = True) -> dict[str, float]:
        chosen = None if final else self.periodic_examples
        examples = range(len(self.examples)) if chosen is None else sorted(chosen)
        window_ids = [w for w, e in enumerate(self.windows.example_index) if chosen is None or e in chosen]
        aggregator, losses = self._predict(model, device, window_ids)
        threshold = float(self.task.null_score_diff_threshold)
        references, spans, diffs, answers = {}, {}, {}, {}
        for e in examples:
            qid = self.examples.ids[e]
            pred = aggregator.predictions[qid]
            references[qid] = self.examples.answers[e]["text"]
            spans[qid] = pred.span_text
            diffs[qid] = pred.score_diff
            answers[qid] = pred.answer(threshold)
        metrics = squad_v2_scores(references, spans, diffs, no_answer_threshold=threshold)
        self.last_predictions, self.last_score_diffs = answers, diffs
        metrics["eval_examples"] = len(references)
        metrics["dev_examples"] = self.dev_examples
        metrics["answerability"] = answerability_diagnostics(self.windows, self.examples, losses, references, diffs, threshold)
        log.info(answerability_line(metrics["answerability"]))
        return metrics

    def _predict(self, model, device, window_ids: list[int]) -> tuple[QuestionAggregator, dict[int, float]]:
        """Post-processed predictions of the windows, and each window's loss {window: loss}."""
        # longest windows first so batches hold windows of similar length (less padding)
        order = sorted(window_ids, key=lambda w: -len(self.windows.input_ids[w]))
        dataset = WindowDataset(self.windows, with_labels=False)
        aggregator = QuestionAggregator()
        losses: dict[int, float] = {}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for begin in range(0, len(order), self.batch_size):
                    batch_ids = order[begin : begin + self.batch_size]
                    batch = self.collate([dataset[w] for w in batch_ids])
                    out = model(**{k: v.to(device) for k, v in batch.items()})
                    real_mask = batch["attention_mask"].bool()
                    start_logits, end_logits = out.start_logits.float().cpu(), out.end_logits.float().cpu()  # fp32 under bf16 too
                    self._fold(aggregator, batch_ids, real_mask, start_logits, end_logits)
                    labels = [torch.tensor([getattr(self.windows, side)[w] for w in batch_ids]) for side in ("start", "end")]
                    width = real_mask.shape[1]
                    batch_losses = window_losses(start_logits[:, :width], end_logits[:, :width], real_mask, *labels)
                    losses.update(zip(batch_ids, batch_losses.tolist()))
        finally:
            model.train(was_training)
        return aggregator, losses

    def _fold(self, aggregator, batch_ids, real_mask, start_logits, end_logits) -> None:
        width = real_mask.shape[1]
        context_mask = torch.zeros_like(real_mask)
        for i, w in enumerate(batch_ids):
            offsets = self.windows.offsets[w]
            context_mask[i, : len(offsets)] = torch.from_numpy(offsets[:, 0] >= 0)
        cls_index = torch.tensor([self.windows.cls_index[w] for w in batch_ids], dtype=torch.long)
        best = best_spans_in_windows(
            start_logits[:, :width], end_logits[:, :width], context_mask, real_mask, cls_index,
            int(self.task.n_best_size), int(self.task.max_answer_length),
        )
        for i, w in enumerate(batch_ids):
            e = self.windows.example_index[w]
            aggregator.add_window(
                self.examples.ids[e], self.examples.contexts[e], self.windows.offsets[w],
                int(best.start[i]), int(best.end[i]), float(best.score[i]), float(best.null_score[i]),
            )


def answerability_diagnostics(windows: Windows, examples: SquadExamples, losses: dict[int, float],
                              references: dict, score_diffs: dict, threshold: float) -> dict:
    """What shows whether a run learns to answer (qa_postprocess.py, "Answerability diagnostics").

    ``loss``: the mean per-window loss (:func:`window_losses`) over the evaluated windows, over
    all of them, the CLS-labelled ones (``cls_windows``) and the span-labelled ones
    (``span_windows``); the CLS-labelled ones split further into windows of unanswerable questions
    (``cls_windows_unanswerable``) and windows of answerable questions whose answer lies outside
    them (``cls_windows_answer_elsewhere``); each with its window count (``*_count``).
    ``score_gap``: :func:`gap_summary` of the null-score difference over answerable
    (``has_answer``) and unanswerable (``no_answer``) questions. A run that learns answerability
    drives the gap down on answerable questions and keeps it up on unanswerable ones.
    """
    groups: dict[str, list[float]] = {"all": [], "cls_windows": [], "span_windows": [],
                                      "cls_windows_unanswerable": [], "cls_windows_answer_elsewhere": []}
    for w, loss in losses.items():
        groups["all"].append(loss)
        if windows.start[w] != windows.cls_index[w]:
            groups["span_windows"].append(loss)
            continue
        groups["cls_windows"].append(loss)
        answerable = bool(examples.answers[windows.example_index[w]]["text"])
        groups["cls_windows_answer_elsewhere" if answerable else "cls_windows_unanswerable"].append(loss)
    loss_split = {}
    for name, values in groups.items():
        loss_split[name] = float(np.mean(values)) if values else None
        loss_split[f"{name}_count"] = len(values)
    has_answer = [score_diffs[qid] for qid, golds in references.items() if golds]
    no_answer = [score_diffs[qid] for qid, golds in references.items() if not golds]
    return {"loss": loss_split, "score_gap": {"has_answer": gap_summary(has_answer, threshold),
                                               "no_answer": gap_summary(no_answer, threshold)}}


def answerability_line(diagnostics: dict) -> str:
    """One log line of :func:`answerability_diagnostics` (the train log holds all of it)."""
    loss, gap = diagnostics["loss"], diagnostics["score_gap"]

    def number(value) -> str:
        return "-" if value is None else f"{value:.2f}"

    return (f"answerability: answered {number(gap['has_answer']['answered'])} % of answerable and "
            f"{number(gap['no_answer']['answered'])} % of unanswerable questions; median null-score gap "
            f"{number(gap['has_answer']['q50'])} vs {number(gap['no_answer']['q50'])}; dev loss of "
            f"CLS-labelled windows {number(loss['cls_windows'])}, span-labelled {number(loss['span_windows'])}")


# --------------------------------------------------------------------------------------------
# entry point


def full_train_windows(task_cfg, windows: int, questions: int, split_questions: int) -> int:
    """Training windows of the full-length run, which sets train.schedule=scaled's T_paper:
    ``task.paper_train_examples`` questions (the official training set, 130,319 for SQuAD 2.0;
    null: the train split read) at this run's windows per question. A train split that is a part
    of the official one (``train.max_train_samples``, or a local file of a few articles such as
    ../shared/data/squad) thus scales Table VI's step values, set for the paper's run on the
    whole official set, by the paper's run length, not by the part's (docs/reproducing.md)."""
    full_questions = task_cfg.get("paper_train_examples") or split_questions
    return round(windows * full_questions / max(1, questions))


def load_squad_task(task_cfg, data_cfg, train_cfg, tokenizer, protocol_cfg=None) -> TaskData:
    """SQuAD 2.0 TaskData: training windows with start/end labels, and the dev evaluator (under
    the fair protocol also the evaluator of the validation articles held out of train)."""
    raw = load_local(task_cfg, data_cfg.dir) if data_cfg.get("dir") else load_hub(task_cfg, data_cfg.get("cache_dir"))
    held_out = None
    if splitting.is_fair(protocol_cfg):
        raw["train"], held_out, split_info = carve_validation(raw["train"], protocol_cfg)
    train_examples = raw["train"].head(train_cfg.get("max_train_samples"))
    dev_all = raw["validation"]
    dev_examples = dev_all.head(train_cfg.get("max_eval_samples"))
    max_length = window_length(task_cfg, tokenizer)
    cache_dir = data_cfg.get("cache_dir")
    train_windows = cached_windows(train_examples, tokenizer, max_length, int(task_cfg.doc_stride), cache_dir)
    dev_windows = cached_windows(dev_examples, tokenizer, max_length, int(task_cfg.doc_stride), cache_dir)
    collate = make_collate(tokenizer.pad_token_id, train_cfg.get("pad_to_multiple_of"))
    evaluator = SquadEvaluator(dev_examples, dev_windows, task_cfg, int(train_cfg.eval_batch_size), collate,
                               dev_examples=len(dev_all))
    info = {
        "train_examples": len(train_examples),
        "train_features": len(train_windows),
        "full_train_size": full_train_windows(task_cfg, len(train_windows), len(train_examples), len(raw["train"])),
        "validation_examples": len(dev_examples),
        "validation_features": len(dev_windows),
        "train_no_answer_windows": sum(1 for s, c in zip(train_windows.start, train_windows.cls_index) if s == c),
    }
    if not data_cfg.get("dir"):
        info["hub_fingerprint"] = {split: examples.fingerprint for split, examples in raw.items()}
    validation = None
    if held_out is not None:  # every periodic evaluation scores all validation questions
        val_windows = cached_windows(held_out, tokenizer, max_length, int(task_cfg.doc_stride), cache_dir)
        whole = OmegaConf.merge(task_cfg, {"periodic_eval_max_examples": None})
        validation = SquadEvaluator(held_out, val_windows, whole, int(train_cfg.eval_batch_size), collate)
        info["validation_split"] = split_info
    return TaskData(
        train_dataset=WindowDataset(train_windows, with_labels=True),
        collate=collate,
        evaluate=evaluator,
        head="question_answering",
        num_labels=2,
        info=info,
        validation=validation,
    )


def carve_validation(train: SquadExamples, protocol_cfg) -> tuple[SquadExamples, SquadExamples, dict]:
    """(training part, validation part, the split's description): whole articles (data/split.py)."""
    titles = train.titles or ["(untitled)"] * len(train)
    try:
        size = splitting.validation_size(len(train), float(protocol_cfg.val_size), protocol_cfg.val_max)
        held = splitting.grouped_indices(titles, size, int(protocol_cfg.split_seed))
    except splitting.SplitError as err:
        raise SquadDataError(str(err)) from None
    kept = splitting.complement(held, len(train))
    info = splitting.describe(protocol_cfg, [train.ids[i] for i in held], len(kept))
    info["articles"] = sorted({titles[i] for i in held})
    rest = train.subset(kept)
    rest.fingerprint = train.fingerprint  # the file's identity (data.fingerprint), not the part's
    return rest, train.subset(held), info
