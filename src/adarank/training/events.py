"""Rank-allocation events (growth, masking) reported when they happen, not after training.

Every method appends one dict per event to ``method.growth_log`` (methods/base.py). The loop calls
``LiveEvents.poll()`` after each optimizer step; each new event becomes one log line (terminal and
Hydra's train.log), one ``{"step", "growth"}`` line in train_log.jsonl and one tracker entry at the
event's step, so a run that crashes later still shows every event it had.
"""

from __future__ import annotations

from typing import Callable


def describe(event: dict) -> str:
    """``growth at step 300: k=9, 9 module(s) changed, total rank 102, budget left 474``."""
    kind = "masking" if "final" in event else "growth"  # AdaLoRA's masking events carry ``final``
    modules = event.get("modules") or []
    parts = [f"{kind} at step {event.get('step')}"]
    if event.get("k") is not None:
        parts.append(f"k={event['k']}")
    parts.append(f"{len(modules)} module(s) changed")
    if event.get("total_rank") is not None:
        parts.append(f"total rank {event['total_rank']}")
    left = budget_left(event)
    if left is not None:
        parts.append(f"budget left {left}")
    elif event.get("budget") is not None:
        parts.append(f"budget {event['budget']}")
    return ", ".join(parts)


def budget_left(event: dict):
    """Rank still to be allocated after a growth event, when the event says."""
    if "budget_after" in event:  # TriAdaptLoRA
        return event["budget_after"]
    if "budget_exhausted" in event and event.get("budget") is not None and event.get("total_rank") is not None:
        return event["budget"] - event["total_rank"]  # IncreLoRA: budget = the target total rank
    return None


class LiveEvents:
    """Emits the events a method has appended to its growth_log since the last poll."""

    def __init__(self, method, tracker, note: Callable[[str], None], write: Callable[[dict], None]):
        self.method, self.tracker, self.note, self.write = method, tracker, note, write
        self.seen = len(method.growth_log)  # a resumed run already reported the restored events

    def poll(self) -> None:
        events = self.method.growth_log
        for event in events[self.seen:]:
            self.note(describe(event))
            self.write({"step": event.get("step"), "growth": event})
            self.tracker.log_growth(event)
        self.seen = len(events)
