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


#: one colour per arm, in ARM_ORDER, so that a method has the same colour in every figure whichever
#: methods a figure shows: matplotlib's tab10 and Dark2 colours, the TriAdaptLoRA variants on strong
#: ones (pink, cyan, near-black), grey kept for arms outside ARM_ORDER (the figures draw their
#: reference lines in grey)
ARM_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",  # full .. IncreLoRA
              "#e377c2", "#17becf", "#222222",  # TriAdaptLoRA fixed, linear, nonlinear
              "#bcbd22", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#1b9e77",  # DyLoRA .. SoRA
              "#7f7f7f"]


def arm_color(arm: str) -> str:
    return ARM_COLORS[min(arm_order(arm), len(ARM_COLORS) - 1)]
