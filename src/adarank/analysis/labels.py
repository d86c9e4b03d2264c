"""Method-arm names as the tables print them, and their order (shared by the fair-protocol tables)."""

from __future__ import annotations

from adarank.analysis.costs import ARM_ORDER
from adarank.analysis.paper import load_paper


def arm_label(arm: str) -> str:
    """Table I's row label of an arm (``lora`` -> ``LoRA``); an arm the paper lacks keeps its name."""
    return load_paper()["table1"]["rows"].get(arm, {}).get("label", arm)


def arm_order(arm: str) -> int:
    """Table I's row order; arms it lacks (new methods) after them."""
    return ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER)
