"""Figures over training time, from files every run writes:

* learning curves (``train_log.jsonl``'s evaluation lines): the metric of the periodic evaluations
  (dev; under the fair protocol the validation split held out of train) against the optimizer
  step, per method arm the mean over seeds with a min..max band, one figure per task;
* rank over time (``growth_log.jsonl``): the total rank against the step, a step line per growing
  or masking arm (its lowest seed), starting from the initial total rank, with the budget dashed.

Both take the runs of one setup (the preferred one of those given) at the default
hyperparameters, like Table I; seeds per line are in the caption, the legend sits below the plot.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from adarank.analysis.figures import (
    ARM_LABELS,
    STYLE,
    Drawn,
    file_name,
    in_preferred_setup,
    legend_below,
    line_figure,
    save,
    setup_sentence,
    title_tag,
)
from adarank.analysis.labels import arm_color, arm_order
from adarank.analysis.paper import load_paper, task_label
from adarank.analysis.runs import periodic_split
from adarank.analysis.tables import axes_unchanged

RANK_ARMS = ["triadapt_linear", "triadapt_nonlinear", "triadapt_fixed", "increlora", "adalora", "sora"]


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    return out


def eval_points(run_dir: str | Path, metric: str) -> pd.Series:
    """{step: metric} of one run's evaluations (periodic and final; dev under the paper protocol,
    the validation split under the fair one)."""
    points = {}
    for record in read_jsonl(Path(run_dir) / "train_log.jsonl"):
        value = (record.get("eval") or {}).get(metric)
        if value is not None:
            points[int(record["step"])] = float(value)
    return pd.Series(points, dtype=float).sort_index()


def label(arm: str) -> str:
    rows = load_paper()["table1"]["rows"]
    return ARM_LABELS.get(arm) or rows.get(arm, {}).get("label", arm)


def learning_curves(runs: pd.DataFrame, out_dir: Path) -> list[Drawn]:
    setup, picked = in_preferred_setup(runs[axes_unchanged(runs)])
    written = []
    for task in sorted(set(picked["task"])):
        curves, drawn = {}, []
        by_arm = picked[picked["task"] == task].groupby("arm")
        for arm, part in sorted(by_arm, key=lambda item: arm_order(item[0])):  # the tables' row order
            series = {run["run_dir"]: eval_points(run["run_dir"], run["primary_metric"]) for _, run in part.iterrows()}
            series = {folder: s for folder, s in series.items() if not s.empty}
            if series:
                curves[arm] = pd.concat(series.values(), axis=1)  # steps x seeds (NaN where a seed lacks a step)
                drawn += list(series)
        if not curves or max(len(frame) for frame in curves.values()) < 2:
            continue  # one evaluation per run (train.eval_interval = the run's length): no curve to draw
        metric = picked.loc[picked["task"] == task, "primary_metric"].iloc[0]
        split = periodic_split(setup)  # fair protocol: the validation split, never dev
        path = out_dir / file_name(f"learning_curve_{task}", setup)
        with plt.rc_context(STYLE):
            fig, ax = line_figure(len(curves))
            for arm, frame in curves.items():
                steps = frame.index.to_numpy(dtype=float)
                line = ax.plot(steps, frame.mean(axis=1), label=label(arm), color=arm_color(arm),
                               marker="o" if len(steps) <= 12 else None)[0]
                if frame.shape[1] > 1:
                    ax.fill_between(steps, frame.min(axis=1), frame.max(axis=1), color=line.get_color(), alpha=0.2)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(f"{split} {metric}")
            ax.set_title(f"{task_label(task)}: {split} {metric} during training{title_tag(setup)}")
            legend_below(fig, ax)
            save(fig, path)
        seeds = ", ".join(f"{label(arm)} {frame.shape[1]}" for arm, frame in curves.items())
        caption = (f"{task_label(task)}: {split} {metric} against the optimizer step, mean over seeds (band: min..max; "
                   f"seeds: {seeds}). " + setup_sentence(setup))
        written.append(Drawn(path, setup, caption, drawn))
    return written


def rank_steps(run_dir: str | Path) -> tuple[list[int], list[float], float | None]:
    """Steps and total ranks (initial rank at step 0, then after every event) and the budget."""
    run_dir = Path(run_dir)
    events = read_jsonl(run_dir / "growth_log.jsonl")
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return [], [], None
    rank = metrics.get("rank") or {}
    initial = rank.get("init_total_rank")
    if initial is None:
        init_rank = ((metrics.get("config") or {}).get("method") or {}).get("init_rank")
        modules = rank.get("adapted_modules")
        initial = init_rank * modules if init_rank is not None and modules is not None else None
    steps = [0] if initial is not None else []
    values = [float(initial)] if initial is not None else []
    for event in events:
        if event.get("total_rank") is not None:
            steps.append(int(event.get("step", 0)))
            values.append(float(event["total_rank"]))
    final_step = ((metrics.get("costs") or {}).get("optimizer_steps"))
    if values and final_step:
        steps.append(int(final_step))
        values.append(values[-1])
    return steps, values, rank.get("target_total_rank")


def rank_over_time(runs: pd.DataFrame, out_dir: Path) -> list[Drawn]:
    setup, picked = in_preferred_setup(runs[runs["arm"].isin(RANK_ARMS) & axes_unchanged(runs)])
    written = []
    for task in sorted(set(picked["task"])):
        lines = []
        for arm in RANK_ARMS:
            part = picked[(picked["task"] == task) & (picked["arm"] == arm)].sort_values("seed")
            for _, run in part.iterrows():
                steps, values, budget = rank_steps(run["run_dir"])
                if len(steps) > 1:
                    lines.append((arm, int(run["seed"]), steps, values, budget, run["run_dir"]))
                    break
        if not lines:
            continue
        path = out_dir / file_name(f"rank_over_time_{task}", setup)
        budgets = sorted({float(line[4]) for line in lines if line[4]})
        with plt.rc_context(STYLE):
            fig, ax = line_figure(len(lines) + bool(budgets))
            for arm, seed, steps, values, _, _ in lines:
                ax.step(steps, values, where="post", label=label(arm), color=arm_color(arm))
            for budget in budgets:
                ax.axhline(budget, color="grey", linestyle="--", linewidth=0.8)
            if budgets:
                ax.plot([], [], color="grey", linestyle="--", linewidth=0.8, label="budget (target total rank)")
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("total rank")
            ax.set_ylim(bottom=0)
            ax.set_title(f"{task_label(task)}: total rank during training{title_tag(setup)}")
            legend_below(fig, ax)
            save(fig, path)
        seeds = ", ".join(f"{label(arm)} seed {seed}" for arm, seed, *_ in lines)
        caption = (f"{task_label(task)}: total rank against the optimizer step, from the initial rank, one run per "
                   f"method ({seeds}); dashed: the budget. " + setup_sentence(setup))
        written.append(Drawn(path, setup, caption, [line[5] for line in lines]))
    return written
