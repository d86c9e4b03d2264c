"""The paper's reported numbers (paper_numbers.yaml), with the source of every row."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

PAPER_FILE = Path(__file__).with_name("paper_numbers.yaml")


@lru_cache(maxsize=4)
def load_paper(path: str | Path = PAPER_FILE) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def glue_tasks() -> list[str]:
    return list(load_paper()["tasks"])


def task_label(task: str) -> str:
    return load_paper()["task_labels"].get(task, task)


def paper_cell(table: str, row: str, column: str) -> tuple[float | None, float | None]:
    """(score, std) the paper prints for a cell; (None, None) where it prints nothing."""
    spec = load_paper()[table]["rows"].get(row, {})
    score = (spec.get("scores") or {}).get(column)
    std = (spec.get("std") or {}).get(column)
    return score, std


def paper_avg(table: str, row: str) -> float | None:
    return load_paper()[table]["rows"].get(row, {}).get("avg")
