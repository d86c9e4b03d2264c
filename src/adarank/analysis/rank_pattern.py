"""rank_pattern.json -> a layer x weight-type matrix (Figure 2).

Module names look like ``deberta.encoder.layer.3.attention.self.query_proj``, possibly behind peft
prefixes (``base_model.model.``) or with BERT names (``query`` instead of ``query_proj``). The
weight types follow the paper's names: W_q, W_k, W_v, W_a (attention output), W_m (intermediate),
W_o (layer output).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

WEIGHT_TYPES = ["W_q", "W_k", "W_v", "W_a", "W_m", "W_o"]
_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.(.+)$")
_TYPES = [
    (re.compile(r"attention\.self\.(query|q)(_proj)?$"), "W_q"),
    (re.compile(r"attention\.self\.(key|k)(_proj)?$"), "W_k"),
    (re.compile(r"attention\.self\.(value|v)(_proj)?$"), "W_v"),
    (re.compile(r"attention\.output\.dense$"), "W_a"),
    (re.compile(r"intermediate\.dense$"), "W_m"),
    (re.compile(r"^output\.dense$"), "W_o"),
]


def module_position(name: str) -> tuple[int, str] | None:
    """(layer index, weight type) of an adapted module name, or None when it is not one of the six."""
    name = re.sub(r"\.(lora_[AB]|lora_E|weight|base_layer)$", "", name)
    match = _LAYER.search(name)
    if not match:
        return None
    layer, rest = int(match.group(1)), match.group(2)
    for pattern, weight in _TYPES:
        if pattern.search(rest):
            return layer, weight
    return None


def rank_value(value) -> float:
    """A rank from rank_pattern.json: an int, or a per-rank keep mask (peft AdaLoRA style)."""
    if isinstance(value, (list, tuple)):
        return float(sum(bool(v) for v in value))
    return float(value)


def rank_matrix(pattern: dict) -> tuple[np.ndarray, list[str]]:
    """Matrix (layers x 6 weight types), NaN where no module was found; and the unmatched names."""
    cells: dict[tuple[int, str], float] = {}
    unmatched = []
    for name, value in pattern.items():
        position = module_position(name)
        if position is None:
            unmatched.append(name)
            continue
        cells[position] = cells.get(position, 0.0) + rank_value(value)
    layers = 1 + max((layer for layer, _ in cells), default=-1)
    matrix = np.full((layers, len(WEIGHT_TYPES)), np.nan)
    for (layer, weight), rank in cells.items():
        matrix[layer, WEIGHT_TYPES.index(weight)] = rank
    return matrix, unmatched


def load_rank_pattern(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / "rank_pattern.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())
