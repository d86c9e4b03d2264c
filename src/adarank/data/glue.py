"""GLUE data: from the Hugging Face hub (``datasets``) or a local folder in the classic GLUE layout.

Local layout (what the original GLUE download script writes): ``<data.dir>/<TASK>/train.tsv`` and
``dev.tsv`` (MNLI: ``dev_matched.tsv`` and ``dev_mismatched.tsv``). Real GLUE files contain quote
characters inside sentences, a BOM (MRPC) and no header (CoLA), so they are read with quoting
disabled and ``utf-8-sig``; a row with too few fields is reported with its file and line.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from adarank.data.task_data import TaskData
from adarank.data import split as splitting
from adarank.metrics.glue import glue_metrics

csv.field_size_limit(1 << 24)


@dataclass(frozen=True)
class TsvLayout:
    """Where a task's fields sit in its GLUE TSV files."""

    header: bool
    text_columns: tuple  # column names (files with a header) or indices (no header)
    label_column: object
    label_names: tuple | None  # label strings in class-id order; None = integer ids / float scores
    files: dict  # split name -> file name


_DEV = {"validation": "dev.tsv"}
TSV_LAYOUTS = {
    "cola": TsvLayout(False, (3,), 1, None, _DEV),
    "sst2": TsvLayout(True, ("sentence",), "label", None, _DEV),
    "mrpc": TsvLayout(True, ("#1 String", "#2 String"), "Quality", None, _DEV),
    "stsb": TsvLayout(True, ("sentence1", "sentence2"), "score", None, _DEV),
    "qqp": TsvLayout(True, ("question1", "question2"), "is_duplicate", None, _DEV),
    "mnli": TsvLayout(
        True,
        ("sentence1", "sentence2"),
        "gold_label",
        ("entailment", "neutral", "contradiction"),
        {"validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv"},
    ),
    "qnli": TsvLayout(True, ("question", "sentence"), "label", ("entailment", "not_entailment"), _DEV),
    "rte": TsvLayout(True, ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), _DEV),
}
# the hub's field names per task (load_dataset("glue", name))
HUB_FIELDS = {
    "cola": ("sentence",),
    "sst2": ("sentence",),
    "mrpc": ("sentence1", "sentence2"),
    "stsb": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
}


class GlueDataError(ValueError):
    """Missing or malformed GLUE data."""


@dataclass
class Examples:
    texts: list  # list of tuples (sentence,) or (sentence_a, sentence_b)
    labels: list
    fingerprint: str | None = None  # the hub split's datasets fingerprint (data/fingerprint.py)


def local_files(task_cfg, data_dir: str) -> dict[str, str]:
    """Split name -> path of every file the task needs under ``data_dir`` (train + eval splits)."""
    layout = TSV_LAYOUTS[task_cfg.name]
    folder = os.path.join(data_dir, task_cfg.local_dir)
    files = {"train": os.path.join(folder, "train.tsv")}
    for split in task_cfg.eval_splits:
        files[split] = os.path.join(folder, layout.files[split])
    return files


def check_local_files(task_cfg, data_dir: str) -> None:
    if not os.path.isdir(data_dir):
        raise GlueDataError(f"data.dir={data_dir} does not exist")
    missing = [path for path in local_files(task_cfg, data_dir).values() if not os.path.isfile(path)]
    if missing:
        raise GlueDataError(
            f"data.dir={data_dir} lacks {', '.join(missing)}; expected the classic GLUE layout "
            f"{task_cfg.local_dir}/train.tsv and {task_cfg.local_dir}/dev.tsv"
        )


def read_tsv(path: str, layout: TsvLayout, num_labels: int | None = None) -> Examples:
    """Read one GLUE TSV file into texts and labels; every problem is a GlueDataError naming the
    file (and line): empty file, no example, bytes that are not UTF-8, a label outside the task's
    classes (``num_labels``) or an STS-B score outside [0, 5]."""
    _check_utf8(path)
    texts, labels = [], []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if layout.header:
            header = next(rows, None)
            if header is None:
                raise GlueDataError(f"{path} is empty; expected a header line and one example per line")
            try:
                text_idx = [header.index(c) for c in layout.text_columns]
                label_idx = len(header) - 1 if layout.label_column == "score" else header.index(layout.label_column)
            except ValueError as err:
                raise GlueDataError(f"{path}: header {header} lacks a column ({err})") from err
            width = len(header)
        else:
            text_idx, label_idx = list(layout.text_columns), layout.label_column
            width = max(text_idx + [label_idx]) + 1
        first_line = 2 if layout.header else 1
        for lineno, row in enumerate(rows, start=first_line):
            if not row:
                continue
            if len(row) < width:
                raise GlueDataError(f"{path}:{lineno}: expected {width} tab-separated fields, got {len(row)}")
            texts.append(tuple(row[i] for i in text_idx))
            labels.append(_parse_label(row[label_idx], layout, path, lineno, num_labels))
    if not texts:
        raise GlueDataError(f"{path} holds no example" + (" (only a header line)" if layout.header else ""))
    return Examples(texts, labels)


def _check_utf8(path: str) -> None:
    with open(path, "rb") as handle:
        for lineno, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise GlueDataError(
                    f"{path}:{lineno}: not UTF-8 text (byte {line[err.start]:#04x} at column {err.start + 1})"
                ) from None


def _parse_label(raw: str, layout: TsvLayout, path: str, lineno: int, num_labels: int | None = None):
    try:
        if layout.label_names is not None:
            return layout.label_names.index(raw)
        if layout.label_column == "score":
            value = float(raw)
        else:
            value = int(raw)
    except ValueError as err:
        raise GlueDataError(f"{path}:{lineno}: unreadable label {raw!r}") from err
    if layout.label_column == "score":
        if not 0.0 <= value <= 5.0:  # also refuses nan
            raise GlueDataError(f"{path}:{lineno}: similarity score {raw!r} outside [0, 5]")
    elif num_labels is not None and not 0 <= value < num_labels:
        raise GlueDataError(f"{path}:{lineno}: label {raw!r} is not a class id of this task (0..{num_labels - 1})")
    return value


def load_local(task_cfg, data_dir: str) -> dict[str, Examples]:
    check_local_files(task_cfg, data_dir)
    layout = TSV_LAYOUTS[task_cfg.name]
    return {
        split: read_tsv(path, layout, int(task_cfg.num_labels) if task_cfg.num_labels > 1 else None)
        for split, path in local_files(task_cfg, data_dir).items()
    }


def load_hub(task_cfg, cache_dir=None) -> dict[str, Examples]:
    import datasets

    try:
        dataset = datasets.load_dataset("glue", task_cfg.hf_name, cache_dir=cache_dir)
    except Exception as err:  # ConnectionError, hub errors, offline mode: all mean "not reachable"
        raise GlueDataError(
            f"could not load GLUE {task_cfg.name} from the Hugging Face hub ({type(err).__name__}: "
            f"{err}). Without network, point data.dir at a local GLUE folder: "
            f"python train.py task={task_cfg.name} data.dir=/path/to/glue "
            f"(layout {task_cfg.local_dir}/train.tsv, {task_cfg.local_dir}/dev.tsv)"
        ) from err
    fields = HUB_FIELDS[task_cfg.name]
    out = {}
    for split in ["train", *task_cfg.eval_splits]:
        rows = dataset[split]
        out[split] = Examples(list(zip(*(rows[f] for f in fields))), list(rows["label"]), getattr(rows, "_fingerprint", None))
    return out


class FeatureDataset(torch.utils.data.Dataset):
    def __init__(self, features: list[dict]):
        self.features = features

    def __len__(self):
        return len(self.features)

    def __getitem__(self, index):
        return self.features[index]


def tokenize(examples: Examples, tokenizer, max_length: int, regression: bool) -> FeatureDataset:
    columns = list(zip(*examples.texts))
    encoded = tokenizer(*columns, truncation=True, max_length=max_length)
    label_type = float if regression else int
    features = [
        {**{key: encoded[key][i] for key in encoded.keys()}, "labels": label_type(label)}
        for i, label in enumerate(examples.labels)
    ]
    return FeatureDataset(features)


def make_collate(tokenizer, pad_to_multiple_of: int | None = None):
    """Dynamic padding to the longest sequence of each batch (rounded up to a multiple of
    ``pad_to_multiple_of``, train.pad_to_multiple_of, when given)."""

    def collate(features: list[dict]) -> dict:
        return tokenizer.pad(features, padding="longest", pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")

    return collate


def split_prefix(task_cfg, split: str) -> str:
    """Metric-name prefix of an evaluation split: none for the reported (first) split."""
    if split == task_cfg.eval_splits[0]:
        return ""
    return split.replace("validation_", "") + "_"


def predict(model, dataset, collate, device, batch_size: int, regression: bool) -> np.ndarray:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    outputs = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            logits = model(**batch).logits.float()
            outputs.append(logits.squeeze(-1) if regression else logits.argmax(-1))
    model.train(was_training)
    return torch.cat(outputs).cpu().numpy()


def load_glue_task(task_cfg, data_cfg, train_cfg, tokenizer, protocol_cfg=None) -> TaskData:
    if task_cfg.name not in TSV_LAYOUTS:
        raise GlueDataError(f"unknown GLUE task {task_cfg.name!r}; choose one of {sorted(TSV_LAYOUTS)}")
    raw = load_local(task_cfg, data_cfg.dir) if data_cfg.dir else load_hub(task_cfg, data_cfg.cache_dir)
    regression = task_cfg.num_labels == 1
    held_out = None
    if splitting.is_fair(protocol_cfg):  # the fair protocol's validation split, carved from train first
        raw["train"], held_out, split_info = carve_validation(raw["train"], protocol_cfg, regression)
    full_train_size = len(raw["train"].labels)
    if train_cfg.max_train_samples:
        raw["train"] = Examples(raw["train"].texts[: train_cfg.max_train_samples], raw["train"].labels[: train_cfg.max_train_samples], raw["train"].fingerprint)
    eval_sets = {}
    for split in task_cfg.eval_splits:
        examples = raw[split]
        if train_cfg.max_eval_samples:
            examples = Examples(examples.texts[: train_cfg.max_eval_samples], examples.labels[: train_cfg.max_eval_samples])
        eval_sets[split] = tokenize(examples, tokenizer, task_cfg.max_seq_length, regression)
    train = tokenize(raw["train"], tokenizer, task_cfg.max_seq_length, regression)
    collate = make_collate(tokenizer, train_cfg.get("pad_to_multiple_of"))

    def evaluator(sets: dict) -> Callable[..., dict[str, float]]:
        """Metrics over ``{metric-name prefix: dataset}``."""

        def evaluate(model, device, final: bool = True) -> dict[str, float]:
            metrics = {}
            for prefix, dataset in sets.items():
                preds = predict(model, dataset, collate, device, train_cfg.eval_batch_size, regression)
                refs = [feature["labels"] for feature in dataset.features]
                for name, value in glue_metrics(task_cfg.name, preds, refs).items():
                    metrics[prefix + name] = value
            return metrics

        return evaluate

    evaluate = evaluator({split_prefix(task_cfg, split): dataset for split, dataset in eval_sets.items()})
    info = {
        "train_examples": len(train),
        "full_train_size": full_train_size,  # before max_train_samples: sets train.schedule=scaled's T_paper
        **{f"{s}_examples": len(d) for s, d in eval_sets.items()},
        **({} if data_cfg.dir else {"hub_fingerprint": {split: ex.fingerprint for split, ex in raw.items()}}),
    }
    # on exactly the examples the run scores (train.max_eval_samples may cap the dev set)
    dev_labels = [feature["labels"] for feature in eval_sets[task_cfg.eval_splits[0]].features]
    majority = _majority_baseline(task_cfg, dev_labels, regression)
    if majority is not None:
        info["majority_class_accuracy"] = majority
    info["trivial_baseline"] = trivial_baseline(task_cfg.name, dev_labels, regression)
    info["trivial_baseline_examples"] = len(dev_labels)  # the scored examples it was computed on
    validation = None
    if held_out is not None:
        validation = evaluator({"": tokenize(held_out, tokenizer, task_cfg.max_seq_length, regression)})
        info["validation_split"] = {**split_info, "trivial_baseline": trivial_baseline(task_cfg.name, held_out.labels, regression)}
    return TaskData(train, collate, evaluate, "sequence_classification", task_cfg.num_labels, info, validation)


def carve_validation(train: Examples, protocol_cfg, regression: bool) -> tuple[Examples, Examples, dict]:
    """(training part, validation part, the split's description): stratified by label (STS-B: by
    its score rounded to an integer), data/split.py. Ids: 0-based example rows of the train file."""
    strata = [splitting.score_stratum(y) for y in train.labels] if regression else list(train.labels)
    try:
        size = splitting.validation_size(len(strata), float(protocol_cfg.val_size), protocol_cfg.val_max)
    except splitting.SplitError as err:
        raise GlueDataError(str(err)) from None
    held = splitting.stratified_indices(strata, size, int(protocol_cfg.split_seed))
    kept = splitting.complement(held, len(strata))

    def part(indices):
        return Examples([train.texts[i] for i in indices], [train.labels[i] for i in indices], train.fingerprint)

    info = splitting.describe(protocol_cfg, held, len(kept), [strata[i] for i in held])
    return part(kept), part(held), info


def trivial_baseline(task: str, labels, regression: bool) -> dict[str, float]:
    """Every dev metric of a constant prediction on ``labels`` (the dev examples the run scores):
    the majority class (classification) or the mean score (STS-B, whose correlations are then 0).
    A run has learned something only above it."""
    if regression:
        constant = float(np.mean(labels))
    else:
        constant = int(np.bincount(np.asarray(labels, dtype=int)).argmax())
    return glue_metrics(task, [constant] * len(labels), labels)


def _majority_baseline(task_cfg, labels, regression: bool):
    if regression or not labels:
        return None
    counts = np.bincount(np.asarray(labels, dtype=int))
    return 100.0 * counts.max() / counts.sum()
