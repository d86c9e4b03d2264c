"""The fair protocol's analysis (issue 26 §2-3): LR selection on validation only, tables that never
mix the protocols, the protocol-effect table with Kendall's tau, budgets and Pareto fronts, and the
whole LR search -> selection -> 5-seed sweep through the real entrypoint."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from adarank import protocol
from adarank.analysis import figures, pareto, protocol_effect, select_lr, tables
from adarank.analysis.budgets import build_budgets
from adarank.analysis.runs import load_runs
from adarank.analysis.synthetic import fake_fair_run, fake_run
from adarank.analysis.tables import build_table
from tests.conftest import REPO

RTE_LR = 1.2e-3  # conf/task/rte.yaml


def search_tree(root: Path) -> Path:
    """An LR search on RTE: validation and test disagree on purpose (test would pick 0.5x)."""
    grid = {  # arm -> [(scale, validation, test)]
        "lora": [(0.5, 70.0, 80.0), (1.0, 75.0, 71.0), (2.0, 72.0, 79.0)],
        "adalora": [(0.5, 66.0, 60.0), (1.0, 66.0, 70.0), (2.0, 61.0, 75.0)],  # a tie: the smaller LR
    }
    for arm, points in grid.items():
        for scale, val, test in points:
            fake_fair_run(root, "rte", arm, 0, test, val, RTE_LR * scale, lr_scale=scale)
    return root


def test_the_selected_lr_is_the_validation_argmax_never_the_test_one(tmp_path):
    runs = load_runs(search_tree(tmp_path / "raw"))
    grid = select_lr.lr_grid(runs)
    assert select_lr.selected(grid) == {"rte": {"lora": pytest.approx(RTE_LR), "adalora": pytest.approx(RTE_LR * 0.5)}}
    assert len(grid) == 6 and set(grid["seeds"]) == {1}
    # the CLI writes a table protocol.lr_table reads back
    out = tmp_path / "tables"
    assert select_lr.main([str(tmp_path / "raw"), "--out", str(out)]) == 0
    table = protocol.read_lr_table(out / "selected_lr.yaml")
    assert table == {("rte", "lora"): pytest.approx(RTE_LR), ("rte", "adalora"): pytest.approx(RTE_LR * 0.5)}
    content = yaml.safe_load((out / "selected_lr.yaml").read_text())
    assert {round(lr, 8): val for lr, val in content["validation"]["rte"]["lora"].items()} == {
        round(RTE_LR * 0.5, 8): 70.0, round(RTE_LR, 8): 75.0, round(RTE_LR * 2, 8): 72.0}
    setup_id = tables.setup_id(grid["setup"].iloc[0])  # one figure per task of the searched setup, named by it
    assert (out / "figures" / f"lr_sensitivity_rte_{setup_id}.png").is_file()
    assert (out / "figures" / f"lr_sensitivity_rte_{setup_id}.pdf").is_file()
    assert "**0.0012**" in (out / "lr_search.md").read_text()
    # AdaLoRA's selected LR (x0.5) is the lowest searched, LoRA's (x1) inside the grid
    assert select_lr.at_grid_edge(grid) == {("rte", "adalora"): "lowest"}
    assert "At the edge of the searched grid" in (out / "lr_search.md").read_text()
    assert "AdaLoRA (lowest)." in (out / "lr_search.md").read_text()


def test_edge_runs_widen_the_grid_until_the_selected_lr_is_inside(tmp_path, capsys):
    """AdaLoRA's selected LR (x0.5) is the lowest searched: widen to x0.25. A diverged run at
    x0.25 counts as searched (no endless retry); a finished one that wins there asks for x0.125;
    LoRA (x1 of 0.5, 1, 2) is inside its grid throughout."""
    root = search_tree(tmp_path / "raw")
    runs = load_runs(root)
    assert select_lr.edge_runs(runs, select_lr.lr_grid(runs)) == [("rte", "adalora", 0.25)]
    assert select_lr.main([str(root), "--edge-runs"]) == 0
    assert capsys.readouterr().out == "rte adalora 0.25\n"
    assert not (tmp_path / "raw" / "selected_lr.yaml").exists()

    diverged = fake_fair_run(root, "rte", "adalora", 0, 50.0, 50.0, RTE_LR * 0.25, lr_scale=0.25)
    metrics = json.loads((diverged / "metrics.json").read_text())
    metrics.update(status="diverged", diverged={"step": 3, "loss": "nan", "last_finite_loss": 0.7})
    (diverged / "metrics.json").write_text(json.dumps(metrics))
    runs = load_runs(root)
    assert select_lr.edge_runs(runs, select_lr.lr_grid(runs)) == []

    shutil.rmtree(diverged)
    fake_fair_run(root, "rte", "adalora", 0, 60.0, 67.0, RTE_LR * 0.25, lr_scale=0.25)
    runs = load_runs(root)
    grid = select_lr.lr_grid(runs)
    assert select_lr.selected(grid)["rte"]["adalora"] == pytest.approx(RTE_LR * 0.25)
    assert select_lr.edge_runs(runs, grid) == [("rte", "adalora", 0.125)]


def test_runs_of_an_older_lr_table_never_join_a_cell(tmp_path):
    """Stage 3 ran LoRA seed 1 at the LR of a first selection; the grid was widened, the selection
    changed, seeds 2-3 ran at the new LR: the cell holds seeds 2-3 only, seed 1 is dropped."""
    root = tmp_path / "raw"
    old = fake_fair_run(root, "rte", "lora", 1, 70.0, 70.0, RTE_LR, source="table")
    os.utime(old / "metrics.json", (1_000_000, 1_000_000))
    for seed in (2, 3):
        fake_fair_run(root, "rte", "lora", seed, 75.0, 74.0, RTE_LR / 2, source="table")
    fake_fair_run(root, "rte", "adalora", 1, 65.0, 64.0, RTE_LR, source="table")  # another cell, untouched
    dropped = []
    runs = load_runs(root, dropped=dropped)
    assert sorted(runs.loc[runs["arm"] == "lora", "seed"]) == [2, 3] and (runs["arm"] == "adalora").sum() == 1
    assert dropped == [(str(old), "trained at the LR of an older LR table (the cell's newest run is at another LR)")]


def test_final_runs_are_not_search_runs_and_several_searches_need_a_setup(tmp_path):
    root = search_tree(tmp_path / "raw")
    fake_fair_run(root, "rte", "lora", 1, 77.0, 74.0, RTE_LR, source="table")  # a final-stage run
    assert len(select_lr.search_runs(load_runs(root))) == 6
    fake_fair_run(root, "rte", "lora", 0, 70.0, 70.0, RTE_LR, lr_scale=1.0, model="minilm")
    with pytest.raises(select_lr.SelectionError, match="several setups; choose one with --setup"):
        select_lr.lr_grid(load_runs(root))
    assert select_lr.main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2


def test_an_unfinished_scaled_search_is_one_setup(tmp_path):
    """A scaled LR search over two tasks of different lengths (make mini-fair: MRPC 288 steps, STS-B
    96) where STS-B has runs at x1 only so far: every run is labelled "per task (mrpc 288, stsb 96)"
    at every LR, and the selection sees one search (it saw two: x2's runs were labelled "288")."""
    root = tmp_path / "raw"
    lrs = {task: float(OmegaConf.load(REPO / "conf" / "task" / f"{task}.yaml").lr) for task in ("mrpc", "stsb")}
    for task, steps, scales in (("mrpc", 288, (1.0, 2.0)), ("stsb", 96, (1.0,))):
        lr = lrs[task]
        for scale in scales:
            fake_fair_run(root, task, "lora", 0, 70.0 + scale, 60.0 + scale, lr * scale, lr_scale=scale,
                          overrides={"train.schedule": "scaled", "train.max_steps": steps})
    runs = load_runs(root)
    assert runs["setup"].str.contains("train.max_steps=per task (mrpc 288, stsb 96)", regex=False).all()
    grid = select_lr.lr_grid(runs)
    assert len(grid) == 3  # validation 62 at x2 beats 61 at x1 on MRPC
    assert select_lr.selected(grid) == {"mrpc": {"lora": pytest.approx(2 * lrs["mrpc"])}, "stsb": {"lora": pytest.approx(lrs["stsb"])}}


def protocols_tree(root: Path) -> Path:
    """RTE and MRPC, three arms, paper runs (3 seeds) and fair runs at selected LRs (5 seeds)."""
    paper = {"lora": 80.0, "adalora": 78.0, "triadapt": 82.0}
    fair = {"lora": 79.0, "adalora": 81.0, "triadapt": 80.0}  # the ranking changes under the fair protocol
    for task in ("rte", "mrpc"):
        for arm, score in paper.items():
            threshold = "linear" if arm == "triadapt" else None
            for seed in range(3):
                fake_run(root, task, arm, seed, score + seed, threshold,
                         costs={"trainable": {"start": {"adapter": 10, "head": 5, "other": 0, "total": 15},
                                              "peak": {"adapter": 30, "head": 5, "other": 0, "total": 35},
                                              "end": {"adapter": 30, "head": 5, "other": 0, "total": 35}}})
            for seed in range(1, 6):
                fake_fair_run(root, task, arm, seed, fair[arm] + seed, 60.0, 2e-3, source="table", threshold=threshold)
    return root


def test_tables_never_mix_the_protocols(tmp_path):
    runs = load_runs(protocols_tree(tmp_path / "raw"))
    assert sorted(runs.groupby("setup")["protocol"].agg(lambda p: tuple(sorted(set(p)))).tolist()) == [("fair",), ("paper",)]
    fair_setup = next(s for s in set(runs["setup"]) if "protocol=fair" in s)
    assert "lr=selected on validation" in fair_setup
    table = build_table(runs, "table1")
    lora = table[(table["row"] == "lora") & (table["column"] == "rte")].set_index("setup")
    assert lora.loc["paper setup", ["mean", "n"]].tolist() == [81.0, 3]  # 80, 81, 82: the paper runs only
    assert lora.loc[fair_setup, ["mean", "n"]].tolist() == [82.0, 5]  # 80..84: the fair test scores only
    from adarank.analysis.tables import setup_heading

    assert "fair protocol: dev (test) score at the checkpoint chosen on a validation split" in setup_heading(fair_setup)
    assert "paper protocol: the best of the periodic dev evaluations" in setup_heading("paper setup")


def test_protocol_effect_ranks_changes_and_kendall_tau(tmp_path):
    effect = protocol_effect.build_effect(load_runs(protocols_tree(tmp_path / "raw")))
    rte = effect[effect["task"] == "rte"].set_index("arm")
    assert rte["paper_rank"].to_dict() == {"triadapt_linear": 1.0, "lora": 2.0, "adalora": 3.0}
    assert rte["fair_rank"].to_dict() == {"adalora": 1.0, "triadapt_linear": 2.0, "lora": 3.0}
    assert rte.loc["adalora", "change"] == pytest.approx(84.0 - 79.0)  # fair mean 81+3 vs paper 78+1
    # paper order T > L > A, fair A > T > L: of the 3 pairs only (T, L) keeps its order -> tau = (1 - 2) / 3
    assert rte["kendall_tau"].iloc[0] == pytest.approx(-1 / 3)
    assert (rte["paper_seeds"] == 3).all() and (rte["fair_seeds"] == 5).all()
    text = protocol_effect.effect_markdown(effect)
    assert "Kendall's τ = -0.33" in text and "| AdaLoRA" in text


def test_budgets_and_pareto_front(tmp_path):
    runs = load_runs(protocols_tree(tmp_path / "raw"))
    budgets = build_budgets(runs[runs["protocol"] == "paper"])
    row = budgets[(budgets["task"] == "rte") & (budgets["arm"] == "lora")].iloc[0]
    assert (row["seeds"], row["trainable_peak_total"], row["trainable_peak_adapter"], row["score"]) == (3, 35, 30, 81.0)
    points = pd.DataFrame({"cost": [1, 2, 3, 4], "score": [70.0, 69.0, 75.0, 75.0]}, index=list("abcd"))
    assert list(pareto.front(points, "cost").index) == ["a", "c"]  # b is beaten by the cheaper a, d ties c at more cost
    drawn = pareto.pareto_figures(runs, tmp_path / "figures")
    ids = {tables.setup_id(s) for s in set(runs["setup"])}
    assert len(ids) == 2  # one figure per (setup, task), the setup id in its name, its runs only
    assert sorted(d.path.name for d in drawn) == sorted(f"pareto_{task}_{i}.png" for task in ("mrpc", "rte") for i in ids)
    for d in drawn:
        assert set(runs.set_index("run_dir").loc[d.runs, "setup"]) == {d.setup} and figures.setup_sentence(d.setup) in d.caption


def test_make_tables_writes_the_fair_outputs(tmp_path):
    from adarank.analysis.report import write_report

    root = protocols_tree(tmp_path / "raw")
    search_tree(root)
    report = write_report(root, tmp_path / "tables", setup="all")
    names = {Path(p).name for p in report.files}
    assert {"selected_lr.yaml", "lr_search.md", "budgets.md", "protocol_effect.md"} <= names
    assert any(n.startswith("lr_sensitivity_rte_") for n in names) and any(n.startswith("pareto_rte_") for n in names)
    captions = (tmp_path / "tables" / "figures" / "captions.md").read_text()
    assert "## pareto_rte_" in captions and "## lr_sensitivity_rte_" in captions
    table1 = (tmp_path / "tables" / "table1.md").read_text()
    assert "fair protocol" in table1
    # both protocols in one file: the title and legend point to each setup's heading, never "best dev"
    assert table1.startswith("# Table I: DeBERTaV3-base fine-tuned on GLUE (dev; the protocol of each setup under")
    assert "best dev score" not in table1
    # a fair setup's periodic evaluations read the validation split: its learning curves say so
    curves = {d.setup: d.caption for d in report.drawn if d.path.name.startswith("learning_curve_rte_")}
    fair_setup = next(s for s in curves if "protocol=fair" in s)
    assert curves[fair_setup].startswith("RTE: validation accuracy against the optimizer step")
    assert curves["paper setup"].startswith("RTE: dev accuracy against the optimizer step")


def test_a_fair_tables_title_and_legend_name_its_score(tmp_path):
    runs = load_runs(protocols_tree(tmp_path / "raw"))
    fair_setup = next(s for s in set(runs["setup"]) if "protocol=fair" in s)
    text = tables.to_markdown(build_table(runs, "table1", [fair_setup]), "table1")
    assert text.startswith("# Table I: DeBERTaV3-base fine-tuned on GLUE (dev at the checkpoint chosen on validation)")
    assert "mean ± std over seeds of the score (dev at the checkpoint chosen on validation;" in text
    paper = tables.to_markdown(build_table(runs, "table1", ["paper setup"]), "table1")
    assert paper.startswith("# Table I: DeBERTaV3-base fine-tuned on GLUE (best periodic dev evaluation)")
    latex = tables.to_latex(build_table(runs, "table1", [fair_setup]), "table1")
    assert "score (dev at the checkpoint chosen on validation; std to one decimal" in latex
    # a fair cell is expected to hold 5 seeds (n=k only where it does not), a paper cell 3
    assert "| 82.00 ± 1.58 " in text and "(n=5)" not in text
    assert "(n=k) when fewer or more than 5 seeds" in text and "n=k: k seeds where not 5" in latex
    assert "| 81.00 ± 1.00 " in paper and "missing (0/3 seeds)" in paper


def test_a_mini_setups_table_prints_only_the_methods_it_ran(tmp_path):
    """Outside the paper's setup a row no run reached is named once, not printed as a row of
    "missing"; a cell missing in a printed row still says so. The paper's setup keeps every row
    (the paper's numbers stand beside them)."""
    root = tmp_path / "raw"
    for seed in range(1, 6):
        for task in ("rte", "mrpc"):
            fake_fair_run(root, task, "lora", seed, 80.0 + seed, 60.0, 2e-3, source="table")
        fake_fair_run(root, "rte", "adalora", seed, 78.0 + seed, 60.0, 2e-3, source="table")
    for seed in range(3):
        fake_run(root, "rte", "lora", seed, 80.0 + seed)
    runs = load_runs(root)
    fair_setup = next(s for s in set(runs["setup"]) if "protocol=fair" in s)
    text = tables.to_markdown(build_table(runs, "table1", [fair_setup]), "table1")
    printed = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert printed == ["Method", "LoRA", "AdaLoRA"]
    assert re.search(r"\| AdaLoRA +\| 81.00 ± 1.58 +\| missing \(0/5 seeds\) \|", text)
    assert "Not run in this setup: Full Fine-tuning, BitFit, HAdapter, IncreLoRA, TriAdaptLoRA (Fixed-k)," in text
    latex = tables.to_latex(build_table(runs, "table1", [fair_setup]), "table1")
    assert "AdaLoRA" in latex and "BitFit" not in latex and "IncreLoRA" not in latex
    paper = tables.to_markdown(build_table(runs, "table1", ["paper setup"]), "table1")
    assert "| BitFit " in paper and "missing (0/3 seeds)" in paper and "Not run in this setup" not in paper


@pytest.mark.slow
def test_lr_search_selection_and_the_five_seed_sweep_through_train_py(tmp_path, tiny_glue_dir):
    """+sweep=lr_search -> select_lr -> +sweep=fair_table1 (a slice), each through its real command."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO / "src")}
    tiny = ["model=tiny", f"data.dir={tiny_glue_dir}", "train.max_steps=3", "task.warmup_steps=0", "train.progress=off",
            f"results.root={tmp_path / 'raw'}"]

    def train_py(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, str(REPO / "train.py"), "-m", *args, *tiny,
                               f"hydra.sweep.dir={tmp_path / 'hydra' / str(len(list(tmp_path.glob('hydra/*'))))}"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert (proc.returncode == 0) == ok, proc.stderr[-3000:]
        return proc

    train_py("+sweep=lr_search", "task=rte", "method=lora", "protocol.lr_scale=0.5,2")
    train_py("+sweep=lr_search", "task=rte", "method=bitfit", "protocol.lr_scale=0.5,2")
    out = tmp_path / "tables"
    select = subprocess.run([sys.executable, "-m", "adarank.analysis.select_lr", str(tmp_path / "raw"), "--out", str(out)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert select.returncode == 0, select.stderr
    table = protocol.read_lr_table(out / "selected_lr.yaml")
    assert set(table) == {("rte", "lora"), ("rte", "bitfit")}
    # a pair the table lacks stops the whole sweep before any job, naming it
    refused = train_py("+sweep=fair_table1", f"protocol.lr_table={out / 'selected_lr.yaml'}", "task=rte",
                       "+sweep/arm=lora,adalora", ok=False)
    assert "no learning rate for 1 (task, arm) pair(s): rte/adalora" in refused.stderr
    assert not list((tmp_path / "raw" / "rte").glob("adalora"))
    train_py("+sweep=fair_table1", f"protocol.lr_table={out / 'selected_lr.yaml'}", "task=rte", "+sweep/arm=lora")
    runs = load_runs(tmp_path / "raw")
    final = runs[runs["lr_source"] == "table"]
    assert sorted(final["seed"]) == [1, 2, 3, 4, 5] and set(final["lr"]) == {table[("rte", "lora")]}
    assert set(final["setup"]) == {next(iter(set(final["setup"])))} and "lr=selected on validation" in final["setup"].iloc[0]


def test_a_method_has_one_colour_in_every_figure(tmp_path, monkeypatch):
    """Learning curves, Pareto fronts and the rest draw each method in the colour of its arm, not
    in the n-th colour of the figure's own method list (which differ between figures)."""
    import matplotlib.colors as mcolors

    from adarank.analysis import curves
    from adarank.analysis.costs import ARM_ORDER
    from adarank.analysis.labels import ARM_COLORS, arm_color

    assert len({arm_color(arm) for arm in ARM_ORDER}) == len(ARM_ORDER) <= len(ARM_COLORS)
    seen: dict[str, dict[str, str]] = {}

    def record(fig, path):
        colours = seen.setdefault(Path(path).name, {})
        for ax in fig.axes:
            for line in ax.get_lines():
                if not line.get_label().startswith("_"):
                    colours[line.get_label()] = mcolors.to_hex(line.get_color())
            for bars in ax.containers:
                colours[bars.get_label()] = mcolors.to_hex(bars.lines[0].get_color())
        return path

    monkeypatch.setattr(curves, "save", record)
    monkeypatch.setattr(figures, "save", record)  # pareto imports it when it draws
    runs = load_runs(protocols_tree(tmp_path / "raw"))
    paper = runs[runs["protocol"] == "paper"]
    curves.learning_curves(paper, tmp_path)
    pareto.pareto_figures(paper[paper["task"] == "rte"], tmp_path)
    # the Pareto figure lists the methods in another order than the learning curves did
    figures_of_lora = {name: c["LoRA"] for name, c in seen.items() if "LoRA" in c}
    assert len(figures_of_lora) >= 3  # two learning curves (RTE, MRPC) and the RTE Pareto figure
    assert set(figures_of_lora.values()) == {arm_color("lora")}
    assert {c["AdaLoRA"] for c in seen.values() if "AdaLoRA" in c} == {arm_color("adalora")} != {arm_color("lora")}
