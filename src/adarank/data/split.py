"""The fair protocol's validation split, carved from the training set (docs/fair-protocol.md).

Deterministic and independent of the run: it depends only on the training examples, their order
in the training file and ``protocol.split_seed``, never on the run's seed, so every run of a
sweep (all methods, all seeds, all learning rates) trains and selects on the same examples.

* Size: ``protocol.val_size`` examples (a fraction of the training set when < 1, a count when
  >= 1), at most ``protocol.val_max`` (default 10 %, at most 2,000).
* GLUE: stratified by label (STS-B: by its score rounded to an integer, 0-5), each stratum
  contributing in proportion to its size (largest remainders), its members drawn in a seeded
  random order, so the validation split has the training set's label distribution.
* SQuAD 2.0: whole articles (grouped, not stratified: questions of one article share their
  paragraphs, so an article split in two would leak answers from training into validation, and
  the official dev set is article-disjoint from train as well). Articles are taken in a seeded
  random order, each one only if it still fits under the target size; if none fits (a tiny
  training set of large articles), the first article in that order.

Pure functions of lists of labels or article names; the data modules apply the indices.
"""

from __future__ import annotations

import hashlib
import json
import math
import random


class SplitError(ValueError):
    """The validation split cannot be carved (too few training examples)."""


def is_fair(protocol_cfg) -> bool:
    return protocol_cfg is not None and protocol_cfg.get("name") == "fair"


def validation_size(num_examples: int, val_size: float, val_max: int | None) -> int:
    """Examples in the validation split: ``val_size`` x n (rounded) or ``val_size`` itself,
    capped by ``val_max``; at least 1 and leaving at least one training example."""
    size = round(val_size * num_examples) if val_size < 1 else int(val_size)
    if val_max:
        size = min(size, int(val_max))
    size = max(1, size)
    if size >= num_examples:
        raise SplitError(
            f"protocol.val_size={val_size:g} takes {size} of the {num_examples} training examples for "
            "validation and leaves none to train on; lower protocol.val_size"
        )
    return size


def stratified_indices(strata: list, size: int, seed: int) -> list[int]:
    """Sorted indices of ``size`` examples, each stratum (label) represented in proportion to its
    share of ``strata`` (largest-remainder rounding; ties go to the stratum that sorts first)."""
    members: dict = {}
    for index, stratum in enumerate(strata):
        members.setdefault(stratum, []).append(index)
    keys = sorted(members, key=str)
    exact = {key: size * len(members[key]) / len(strata) for key in keys}
    quota = {key: math.floor(exact[key]) for key in keys}
    by_remainder = sorted(keys, key=lambda key: (-(exact[key] - quota[key]), str(key)))
    for key in by_remainder[: size - sum(quota.values())]:
        quota[key] += 1
    rng = random.Random(seed)
    chosen = []
    for key in keys:
        pool = list(members[key])
        rng.shuffle(pool)
        chosen += pool[: quota[key]]
    return sorted(chosen)


def grouped_indices(groups: list, size: int, seed: int) -> list[int]:
    """Sorted indices of whole groups (SQuAD articles), taken in a seeded order while they fit
    under ``size`` examples (the first group when none fits)."""
    members: dict = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    order = sorted(members, key=str)
    random.Random(seed).shuffle(order)
    chosen: list[int] = []
    for group in order:
        if len(chosen) + len(members[group]) <= size:
            chosen += members[group]
    if not chosen:
        chosen = list(members[order[0]])
    if len(chosen) >= len(groups):
        raise SplitError("the validation split would take every article of the training set; lower protocol.val_size")
    return sorted(chosen)


def score_stratum(score: float) -> int:
    """STS-B's stratum: the similarity score rounded to an integer (0-5)."""
    return int(math.floor(float(score) + 0.5))


def complement(indices: list[int], total: int) -> list[int]:
    taken = set(indices)
    return [i for i in range(total) if i not in taken]


def ids_hash(ids: list) -> str:
    """sha256 of the validation split's ids (row numbers of the training file, or SQuAD question
    ids), sorted: two runs with the same hash and the same data fingerprint share the split."""
    return hashlib.sha256(json.dumps(sorted(map(str, ids))).encode()).hexdigest()


def describe(protocol_cfg, ids: list, num_train: int, strata: list | None = None) -> dict:
    """The split as metrics.json records it (``data.validation_split``)."""
    counts = {}
    for stratum in strata or []:
        counts[str(stratum)] = counts.get(str(stratum), 0) + 1
    return {
        "split_seed": int(protocol_cfg.split_seed),
        "val_size": protocol_cfg.val_size,
        "val_max": protocol_cfg.val_max,
        "examples": len(ids),  # held out for validation
        "train_examples": num_train,  # left to train on
        "ids_sha256": ids_hash(ids),
        **({"strata": dict(sorted(counts.items()))} if strata is not None else {}),
    }
