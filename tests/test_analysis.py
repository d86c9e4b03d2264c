"""`make tables` on synthetic results trees with known values (no training)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from adarank.analysis import NoResultsError, build_report, load_runs, write_report
from adarank.analysis.paper import load_paper
from adarank.analysis import tables
from adarank.analysis.rank_pattern import WEIGHT_TYPES, module_position, rank_matrix, rank_value
from adarank.analysis.runs import BAD_FILE
from adarank.analysis.synthetic import demo_tree, fake_run, layered_pattern
from adarank.analysis.tables import AVG, to_latex, to_markdown

REPO = Path(__file__).resolve().parents[1]
GLUE = ["mnli", "sst2", "cola", "qqp", "qnli", "rte", "mrpc", "stsb"]


def cell(tidy: pd.DataFrame, row: str, column: str, setup: str = "paper setup") -> dict:
    match = tidy[(tidy["row"] == row) & (tidy["column"] == column) & (tidy["setup"] == setup)]
    assert len(match) == 1, (row, column, setup)
    rec = match.iloc[0].to_dict()
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}


# --- the paper's numbers -------------------------------------------------------------------------


def test_paper_averages_match_their_rows():
    """Every printed Avg. is the mean of its 8 cells (the paper truncates to 2 decimals), except the
    HAdapter row the paper quotes with an inconsistent average (noted in the data file)."""
    paper = load_paper()
    for table in ("table1", "table2", "table3"):
        for key, row in paper[table]["rows"].items():
            if not row["scores"]:  # an extra row of this harness (no paper numbers)
                continue
            mean = sum(row["scores"][t] for t in GLUE) / 8
            if "avg_note" in row:
                assert abs(mean - row["avg"]) > 0.1
            else:
                assert abs(mean - row["avg"]) < 0.011, (table, key, mean, row["avg"])


def test_paper_best_row_is_the_max_of_linear_and_nonlinear():
    rows = load_paper()["table1"]["rows"]
    for task in GLUE:
        expected = max(rows["triadapt_linear"]["scores"][task], rows["triadapt_nonlinear"]["scores"][task])
        assert rows["triadapt_best"]["scores"][task] == expected


# --- aggregation with known values ---------------------------------------------------------------


@pytest.fixture
def known_tree(tmp_path) -> Path:
    root = tmp_path / "raw"
    for seed, score in enumerate([80.0, 82.0, 84.0]):
        fake_run(root, "rte", "lora", seed, score)
    fake_run(root, "mrpc", "lora", 0, 88.0)  # one seed only
    for i, task in enumerate(GLUE):  # full fine-tuning on all 8 tasks, one seed: avg is known
        fake_run(root, task, "full", 0, 80.0 + i)
    for seed in range(3):
        fake_run(root, "rte", "triadapt", seed, 85.0, "linear")
        fake_run(root, "rte", "triadapt", seed, 86.0 + seed, "nonlinear")
        fake_run(root, "mrpc", "triadapt", seed, 90.0, "linear")
        fake_run(root, "mrpc", "triadapt", seed, 89.0, "nonlinear")
        fake_run(root, "rte", "triadapt", seed, 70.0, "nonlinear", overrides={"method.orth_reg": False})
        fake_run(root, "rte", "triadapt", seed, 71.0, "nonlinear", overrides={"method.norm": "none"})
        fake_run(root, "rte", "increlora", seed, 60.0 + seed, "fixed", overrides={"task.init_warmup": 400})
    # the same config as rte/triadapt-nonlinear/seed0 under another folder name: counted once
    fake_run(root, "rte", "triadapt", 0, 86.0, "nonlinear", variant="method.orth_reg=true")
    fake_run(root, "squad_v2", "lora", 0, 88.0, extra_best={"exact": 85.0})
    fake_run(root, "squad_v2", "lora", 1, 89.0, extra_best={"exact": 86.0})
    # an interrupted run: a folder without metrics.json
    (root / "rte" / "lora" / "seed7" / "default-deadbeef").mkdir(parents=True)
    (root / "rte" / "lora" / "seed7" / "default-deadbeef" / "config.yaml").write_text("seed: 7\n")
    return root


def test_mean_std_and_seed_count(known_tree):
    t1 = build_report(known_tree).tables["table1"]
    rte = cell(t1, "lora", "rte")
    assert rte["mean"] == pytest.approx(82.0)
    assert rte["std"] == pytest.approx(2.0)  # sample std of 80, 82, 84
    assert rte["n"] == 3
    assert rte["paper"] == pytest.approx(82.07)
    assert rte["diff"] == pytest.approx(82.0 - 82.07)
    mrpc = cell(t1, "lora", "mrpc")
    assert (mrpc["mean"], mrpc["std"], mrpc["n"]) == (88.0, None, 1)


def test_missing_cells_say_so(known_tree):
    report = build_report(known_tree)
    t1 = report.tables["table1"]
    missing = cell(t1, "bitfit", "rte")
    assert missing["n"] == 0 and missing["mean"] is None
    text = to_markdown(t1, "table1")
    assert "| BitFit " in text and "missing (0/3 seeds)" in text and "| 78.70 " in text  # ours, paper apart
    assert cell(t1, "lora", AVG)["mean"] is None  # 2 of 8 tasks: no average
    assert "missing (2/8 tasks)" in text


def test_average_is_the_mean_of_task_means(known_tree):
    t1 = build_report(known_tree).tables["table1"]
    avg = cell(t1, "full", AVG)
    assert avg["mean"] == pytest.approx(sum(80.0 + i for i in range(8)) / 8)
    assert avg["n"] == 8
    assert avg["paper"] == pytest.approx(88.24)


def test_best_of_linear_and_nonlinear(known_tree):
    t1 = build_report(known_tree).tables["table1"]
    rte = cell(t1, "triadapt_best", "rte")
    assert rte["picked"] == "triadapt_nonlinear"
    assert rte["mean"] == pytest.approx(87.0)  # nonlinear 86, 87, 88 (the duplicate counted once)
    assert rte["n"] == 3
    mrpc = cell(t1, "triadapt_best", "mrpc")
    assert mrpc["picked"] == "triadapt_linear" and mrpc["mean"] == pytest.approx(90.0)
    assert "[N]" in to_markdown(t1, "table1") and "[L]" in to_markdown(t1, "table1")


def test_ablation_runs_go_to_their_own_tables(known_tree):
    report = build_report(known_tree)
    t1, t2, t3 = (report.tables[n] for n in ("table1", "table2", "table3"))
    # Table I's nonlinear cell holds only default runs (not orth_reg=false / norm=none)
    assert cell(t1, "triadapt_nonlinear", "rte")["mean"] == pytest.approx(87.0)
    assert cell(t2, "orthogonal", "rte")["mean"] == pytest.approx(87.0)
    assert cell(t2, "non_orthogonal", "rte")["mean"] == pytest.approx(70.0)
    assert cell(t3, "norm_r", "rte")["mean"] == pytest.approx(87.0)
    assert cell(t3, "norm_none", "rte")["mean"] == pytest.approx(71.0)
    assert cell(t3, "norm_sqrt_r", "rte")["n"] == 0
    # a Figure 3 point is not a Table I IncreLoRA run
    assert cell(t1, "increlora", "rte")["n"] == 0


def test_squad_table(known_tree):
    t4 = build_report(known_tree).tables["table4"]
    assert cell(t4, "lora", "exact")["mean"] == pytest.approx(85.5)
    assert cell(t4, "lora", "f1")["mean"] == pytest.approx(88.5)
    assert cell(t4, "lora", "f1")["paper"] == pytest.approx(88.0)
    assert cell(t4, "full", "f1")["n"] == 0


def test_squad_runs_with_answerability_diagnostics_are_read_and_bad_leaves_refused(tmp_path, caplog):
    """A SQuAD evaluation nests its diagnostics (data/squad.py) in best / final: make tables reads
    such runs (it once skipped every real SQuAD run as "not a number") but still checks each leaf."""
    diagnostics = {"loss": {"cls_windows": 0.35, "cls_windows_count": 828, "span_windows": None},
                   "score_gap": {"has_answer": {"questions": 429, "answered": 0.0, "q50": 7.14}}}
    root = tmp_path / "raw"
    fake_run(root, "squad_v2", "lora", 0, 49.53, extra_best={"exact": 49.53, "answerability": diagnostics})
    assert cell(build_report(root).tables["table4"], "lora", "f1")["mean"] == pytest.approx(49.53)
    bad = {**diagnostics, "score_gap": {"has_answer": {"q50": "7.1"}}}
    fake_run(root, "squad_v2", "lora", 1, 50.0, extra_best={"exact": 50.0, "answerability": bad})
    assert list(load_runs(root)["seed"]) == [0]
    assert "best.answerability.score_gap.has_answer.q50 is '7.1', not a number" in caplog.text


def test_runs_without_metrics_are_ignored_and_duplicates_counted_once(known_tree):
    runs = load_runs(known_tree)
    assert 7 not in set(runs["seed"])
    nonlinear = runs[(runs["arm"] == "triadapt_nonlinear") & (runs["task"] == "rte") & ~runs["orth_reg_changed"]
                     & ~runs["norm_changed"]]
    assert sorted(nonlinear["seed"]) == [0, 1, 2]


def test_other_setups_are_reported_apart(tmp_path):
    root = tmp_path / "raw"
    fake_run(root, "rte", "lora", 0, 80.0)
    fake_run(root, "rte", "lora", 0, 60.0, model="minilm", overrides={"train.max_steps": 300})
    other = "model=minilm, train.max_steps=300"
    report = build_report(root)
    assert report.setups == ["paper setup"] and report.all_setups == ["paper setup", other]
    left = report.left_out[report.left_out["table"] == "table1"]
    assert len(left) == 1 and f"--setup '{other}'" in left["reason"].iloc[0]
    assert f"--setup '{other}'" in report.summary()
    t1 = build_report(root, setup="all").tables["table1"]
    assert cell(t1, "lora", "rte")["mean"] == 80.0
    assert cell(t1, "lora", "rte", setup=other)["mean"] == 60.0
    text = to_markdown(t1, "table1")
    assert text.index("Paper setup") < text.index("not comparable")
    other_part = text[text.index("not comparable"):]
    assert "### Paper" not in other_part and "### Δ" not in other_part  # the paper's numbers: paper setup only
    assert "### Paper" in text[:text.index("not comparable")]
    tex = to_latex(t1, "table1")
    assert tex.count("(ours $-$ paper)") == 1 and "$-$20" not in tex  # no Δ for the MiniLM run (60 - 82.07)
    assert cell(build_report(root, setup=other).tables["table1"], "lora", "rte", setup=other)["mean"] == 60.0
    # the csv keeps the published number beside every setup, but ours - paper only in the paper's
    assert cell(t1, "lora", "rte")["diff"] == pytest.approx(80.0 - 82.07)
    assert cell(t1, "lora", "rte", setup=other)["paper"] == pytest.approx(82.07)
    assert cell(t1, "lora", "rte", setup=other)["diff"] is None
    with pytest.raises(ValueError, match="the setups are"):
        build_report(root, setup="model=nothing")


def test_shrunk_growth_schedule_keeps_every_run(tmp_path):
    """A mini-sweep with task.init_warmup=5 task.incre_interval=5 on every run (issue 15 §1): LoRA
    ignores those keys, the growing arms take them as their setup's default; nothing is dropped."""
    root = tmp_path / "raw"
    shrunk = {"train.max_steps": 60, "task.init_warmup": 5, "task.incre_interval": 5}
    for seed in range(2):
        fake_run(root, "rte", "lora", seed, 70.0 + seed, model="minilm", overrides=shrunk)
        fake_run(root, "rte", "triadapt", seed, 72.0, "linear", model="minilm", overrides=shrunk)
        fake_run(root, "rte", "increlora", seed, 71.0, "fixed", model="minilm", overrides=shrunk)
        fake_run(root, "rte", "adalora", seed, 69.0, model="minilm", overrides=shrunk)
    report = build_report(root)
    assert report.all_setups == ["model=minilm, train.max_steps=60; growth schedule init_warmup=5, incre_interval=5"]
    t1 = report.tables["table1"]
    setup = report.setups[0]
    for row, mean in (("lora", 70.5), ("triadapt_linear", 72.0), ("increlora", 71.0), ("adalora", 69.0)):
        assert cell(t1, row, "rte", setup=setup)["mean"] == mean
    assert report.left_out.empty and not report.costs.empty
    assert "init_warmup=5" in to_markdown(t1, "table1")


def test_method_specific_settings_do_not_split_a_setup(tmp_path):
    """AdaLoRA's own schedule and the others' LR warm-up differ from the defaults in a mini-sweep:
    each matters to some methods only, so all runs stay in one setup whose label names them."""
    root = tmp_path / "raw"
    common = {"train.max_steps": 60}
    fake_run(root, "rte", "lora", 0, 70.0, model="minilm", overrides={**common, "task.warmup_steps": 1})
    fake_run(root, "rte", "adalora", 0, 69.0, model="minilm", overrides={**common, "task.adalora.init_warmup": 2})
    report = build_report(root)
    assert report.all_setups == [
        "model=minilm, train.max_steps=60; adalora: task.adalora.init_warmup=2; lora: task.warmup_steps=1"]
    t1 = report.tables["table1"]
    assert cell(t1, "lora", "rte", setup=report.setups[0])["mean"] == 70.0
    assert cell(t1, "adalora", "rte", setup=report.setups[0])["mean"] == 69.0
    # two AdaLoRA variants in one setup are not mixed: each gets a setup of its own
    fake_run(root, "rte", "adalora", 0, 60.0, model="minilm", overrides={**common, "task.adalora.init_warmup": 3})
    assert len(build_report(root).all_setups) == 3


def test_scaled_schedule_runs_compare_on_paper_values(tmp_path):
    """train.schedule=scaled changes task.init_warmup per run; metrics.json's schedule report gives
    the paper value the run is compared on."""
    import json

    root = tmp_path / "raw"
    folder = fake_run(root, "rte", "triadapt", 0, 75.0, "linear", model="minilm",
                      overrides={"train.schedule": "scaled", "task.init_warmup": 3})
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["schedule"] = {"mode": "scaled", "values": {"task.init_warmup": {"paper": 100, "scaled": 3}}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    runs = load_runs(root)
    assert runs["setup"].iloc[0] == "model=minilm, train.schedule=scaled"
    assert not runs["init_warmup_changed"].iloc[0] and runs["init_warmup"].iloc[0] == 100


def test_scaled_alora_run_stays_in_the_setup_of_its_sweep(tmp_path):
    """train.schedule=scaled derives ALoRA's method.k1_steps / k2_steps (null by default: K1, K2
    from the epochs); those derived values do not split ALoRA from the other arms of the command."""
    import json

    root = tmp_path / "raw"
    scaled = {"train.schedule": "scaled"}
    fake_run(root, "rte", "lora", 0, 70.0, model="minilm", overrides=scaled)
    folder = fake_run(root, "rte", "alora", 0, 71.0, model="minilm",
                      overrides={**scaled, "method.k1_steps": 3, "method.k2_steps": 2})
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["schedule"] = {"mode": "scaled", "values": {"method.k1_steps": {"paper": 78, "scaled": 3},
                                                        "method.k2_steps": {"paper": 156, "scaled": 2}}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    report = build_report(root)
    assert report.all_setups == ["model=minilm, train.schedule=scaled"]
    assert cell(report.tables["table1"], "alora", "rte", setup=report.setups[0])["mean"] == 71.0


def test_scaled_runs_of_different_length_per_task_form_one_setup(tmp_path):
    """The mini sweep runs MRPC 96 steps and STS-B 48, both scaled: one setup (one Table I with
    both columns), its label naming each task's length; a task run at two lengths splits."""
    root = tmp_path / "raw"
    for task, steps, score in (("mrpc", 96, 75.0), ("stsb", 48, 70.0)):
        fake_run(root, task, "lora", 0, score, model="minilm",
                 overrides={"train.schedule": "scaled", "train.max_steps": steps, "train.eval_interval": steps})
    label = ("model=minilm, train.eval_interval=train.max_steps, train.max_steps=per task (mrpc 96, stsb 48), "
             "train.schedule=scaled")
    assert build_report(root).all_setups == [label]
    t1 = build_report(root, setup=label).tables["table1"]
    assert cell(t1, "lora", "mrpc", setup=label)["mean"] == 75.0
    assert cell(t1, "lora", "stsb", setup=label)["mean"] == 70.0
    header = next(line for line in to_markdown(t1, "table1").splitlines() if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["Method", "MRPC", "STS-B"]  # no empty columns
    fake_run(root, "stsb", "lora", 1, 71.0, model="minilm",
             overrides={"train.schedule": "scaled", "train.max_steps": 60, "train.eval_interval": 60})
    assert sorted(build_report(root).all_setups) == [
        f"model=minilm, train.eval_interval=train.max_steps, train.max_steps={n}, train.schedule=scaled"
        for n in (48, 60, 96)]


def test_latex_is_escaped(known_tree):
    tex = to_latex(build_report(known_tree).tables["table1"], "table1")
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and "±" not in tex
    assert tex.isascii()  # prints under the default OT1 encoding (no "¡" for "<", no stray glyphs)
    assert r"p $<$ 0.05" in tex and "<" not in tex.replace("$<$", "")


def test_latex_escape_is_encoding_safe():
    from adarank.analysis.latex import escape

    assert escape('a < b > c "quoted" 5% x_1 #2 & {y} ~ ^') == (
        r"a $<$ b $>$ c ``quoted'' 5\% x\_1 \#2 \& \{y\} \textasciitilde{} \textasciicircum{}")
    assert escape("±1 † −2 – Δ é ✓") == r"$\pm$1 $\dagger$ $-$2 -- $\Delta$ e ?"
    assert escape("LoRA+ (λ = 16), EVA (ρ = 2)") == r"LoRA+ ($\lambda$ = 16), EVA ($\rho$ = 2)"


def test_best_mean_is_bold_and_significance_is_marked(known_tree):
    """RTE: TriAdaptLoRA's best row (Non-Linear, 86/87/88) against LoRA (80/82/84): Welch's
    t = 5 / sqrt(4/3 + 1/3) = 3.87 on ~2.9 degrees of freedom, p ~ 0.03 < 0.05. Linear (85, 85, 85)
    against the Non-Linear cell the best row took: t = 2 / sqrt(1/3) = 3.464 on 2 degrees of
    freedom, p = 1 - t / sqrt(2 + t^2) = 1 - 3.464 / sqrt(14) = 0.0742."""
    t1 = build_report(known_tree).tables["table1"]
    assert 0.01 < cell(t1, "lora", "rte")["p_value"] < 0.05
    assert cell(t1, "full", "rte")["p_value"] is None  # one seed: no test
    assert cell(t1, "triadapt_nonlinear", "rte")["p_value"] is None  # the cell the reference row took
    assert cell(t1, "triadapt_linear", "rte")["p_value"] == pytest.approx(1 - 12 ** 0.5 / 14 ** 0.5, rel=1e-6)
    text = to_markdown(t1, "table1")
    assert "| 82.00 ± 2.00† " in text and "**87.00 ± 1.00 [N]**" in text
    assert "Welch" in text and "### Paper" in text and "### Δ (ours − paper)" in text
    tex = to_latex(t1, "table1")
    assert tex.count(r"\begin{table*}") == 1 and r"\label{tab:table1}" in tex
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == 1 and r"\cline" not in tex
    assert r"\midrule" + "\n" + r"\bottomrule" not in tex  # one rule at the end, not two
    assert r"\resizebox" not in tex and (r"\footnotesize" in tex or r"\scriptsize" in tex)  # never scaled; 8 or 7 pt
    # one row per method: ours (bold where best), then (ours - paper) and the cell it took
    assert r"\textbf{87.00$\pm$1.0} \\ ($-$0.84) \\ {}[N]" in tex
    assert r"82.00$\pm$2.0$\dagger$ \\ ($-$0.07)" in tex
    caption = next(line for line in tex.splitlines() if line.startswith(r"\caption"))
    assert "Table I" not in caption and "DeBERTaV3-base" in caption  # LaTeX numbers the table itself


def test_cost_table(known_tree):
    costs = build_report(known_tree).costs
    row = costs[(costs["task"] == "rte") & (costs["arm"] == "lora")].iloc[0]
    assert row["seeds"] == 3 and row["wall_seconds"] == pytest.approx(100.0)
    assert {"trainable_params_end", "allocation_seconds", "total_rank"} <= set(costs.columns)


# --- files, figures, the CLI ---------------------------------------------------------------------


def test_write_report_files_and_figures(tmp_path):
    root = demo_tree(tmp_path / "raw")
    report = write_report(root, tmp_path / "tables")
    for name in ("table1", "table2", "table3", "table4", "costs"):
        for ext in ("md", "tex", "csv"):
            assert (tmp_path / "tables" / f"{name}.{ext}").stat().st_size > 0
    names = {p.name for p in report.figures}
    assert {"fig2_rank_pattern_rte_paper.png", "fig2_rank_pattern_mrpc_paper.png", "fig3_init_warmup_rte_paper.png",
            "learning_curve_rte_paper.png", "rank_over_time_rte_paper.png"} <= names
    from PIL import Image

    for path in report.figures:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
        assert path.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
        with Image.open(path) as image:  # one column (3.5 in) or the page (7 in) at 300 dpi, as printed
            assert round(image.info["dpi"][0]) == 300 and image.size[0] in (1050, 2100), (path.name, image.size)
    captions = (tmp_path / "tables" / "figures" / "captions.md").read_text()
    assert "## learning_curve_rte_paper" in captions and "LoRA 3" in captions  # seeds per line
    # one heading per figure, its name only: the formats are said once (docs/ publishes the PNGs)
    assert all(f"## {path.stem}\n" in captions for path in report.figures)
    assert "`<name>.pdf` (vector) for print" in captions


def test_figures_show_one_setup_each(tmp_path, monkeypatch):
    """SETUP=all with two setups: each setup gets its own figures (its id in the file name), and
    every figure draws runs of its setup only; the legend sits outside the plot."""
    from adarank.analysis import curves, figures

    root = tmp_path / "raw"
    pattern = layered_pattern(2, lambda layer, weight: 2 + layer)
    for seed in range(2):
        for model, score, extra in (("deberta_v3_base", 80.0, {}), ("minilm", 60.0, {"train.max_steps": 300})):
            for method, threshold in (("lora", None), ("triadapt", "linear")):
                fake_run(root, "rte", method, seed, score + seed, threshold, model=model, overrides=extra,
                         total_rank=12 if method == "triadapt" else None,
                         rank_pattern=pattern if method == "triadapt" else None)
    overlaps, outside = [], []
    save = figures.save

    def checked_save(fig, path):  # the legend's box and the axes' box must not intersect
        fig.canvas.draw()
        for legend in fig.legends:
            box = legend.get_window_extent()
            overlaps.extend(ax.get_window_extent().overlaps(box) for ax in fig.axes)
        drawn = fig.get_tightbbox()  # everything drawn (inches), titles included: nothing cut off
        width, height = fig.get_size_inches()
        if drawn.x0 < -0.01 or drawn.y0 < -0.01 or drawn.x1 > width + 0.01 or drawn.y1 > height + 0.01:
            outside.append((path.name, drawn.bounds))
        return save(fig, path)

    monkeypatch.setattr(curves, "save", checked_save)
    monkeypatch.setattr(figures, "save", checked_save)
    report = write_report(root, tmp_path / "tables", setup="all")
    setups = dict(zip(report.runs["run_dir"], report.runs["setup"]))
    assert len(set(setups.values())) == 2
    for drawn in report.drawn:
        assert {setups[run] for run in drawn.runs} == {drawn.setup}, drawn.path.name
        assert drawn.path.parent == tmp_path / "tables" / "figures" and drawn.path.is_file()  # not the staging folder
        assert drawn.path.stem.endswith("_" + (tables.setup_id(drawn.setup)))
    curves_drawn = [d for d in report.drawn if d.path.name.startswith("learning_curve_rte")]
    assert len(curves_drawn) == 2 and {len(d.runs) for d in curves_drawn} == {4}  # 2 arms x 2 seeds each
    names = {d.path.name for d in report.drawn}
    assert {"learning_curve_rte_paper.png", f"learning_curve_rte_{tables.setup_id('model=minilm, train.max_steps=300')}.png",
            "rank_over_time_rte_paper.png", "fig2_rank_pattern_rte_paper.png"} <= names
    assert overlaps and not any(overlaps) and outside == []


def test_heatmap_cells_are_vector(tmp_path):
    pymupdf = pytest.importorskip("pymupdf")
    root = tmp_path / "raw"
    fake_run(root, "rte", "triadapt", 0, 80.0, "linear", total_rank=48,
             rank_pattern=layered_pattern(12, lambda layer, weight: 1 + (layer + WEIGHT_TYPES.index(weight)) % 60))
    report = write_report(root, tmp_path / "tables")
    [heatmap] = [p for p in report.figures if p.name.startswith("fig2_")]
    with pymupdf.open(heatmap.with_suffix(".pdf")) as pdf:
        page = pdf[0]
        assert page.get_images() == []  # no bitmap: cells (and the colour bar) are vector paths
        assert len(page.get_drawings()) >= 72  # at least one path per cell
        assert round(page.rect.width / 72, 2) == 7.0


def test_cli_on_an_empty_tree_fails_clearly(tmp_path):
    (tmp_path / "raw").mkdir()
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_tables.py"), "--results", str(tmp_path / "raw"),
         "--out", str(tmp_path / "tables")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode != 0
    assert "no finished run" in out.stderr and "+sweep=table1" in out.stderr
    with pytest.raises(NoResultsError):
        load_runs(tmp_path / "does-not-exist")


def test_cli_writes_tables(known_tree, tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_tables.py"), "--results", str(known_tree),
         "--out", str(tmp_path / "tables")],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "table1:" in out.stdout
    assert "82.00 ± 2.00" in (tmp_path / "tables" / "table1.md").read_text()


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_tables_writes_to_out_without_setup(known_tree, tmp_path):
    """`make tables OUT=... PY=...` writes where it is told and needs no `make setup` when the
    given interpreter already imports adarank (no .venv is created)."""
    out = tmp_path / "tables"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(["make", "-C", str(REPO), "tables", f"PY={sys.executable}", f"RESULTS={known_tree}",
                             f"OUT={out}", "PAPER=column", "VENV=" + str(tmp_path / "no-venv")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "table1.tex").is_file() and "make setup" not in result.stdout
    assert not (tmp_path / "no-venv").exists()
    assert "& Ours & Paper" in (out / "table1.tex").read_text()  # PAPER=column reached the LaTeX


# --- rank patterns (Figure 2) --------------------------------------------------------------------


def test_curves_from_train_and_growth_logs(tmp_path):
    from adarank.analysis.curves import eval_points, rank_steps

    folder = fake_run(tmp_path, "rte", "triadapt", 0, 80.0, "linear", total_rank=144)
    points = eval_points(folder, "accuracy")
    assert list(points.index) == [50, 100, 150, 200] and points[50] == 76.0 and points[200] == 80.0
    steps, values, _ = rank_steps(folder)
    assert steps == [0, 60, 100, 140, 200] and values[0] == 72 and values[-1] == 144


@pytest.mark.parametrize(
    "name, expected",
    [
        ("deberta.encoder.layer.3.attention.self.query_proj", (3, "W_q")),
        ("base_model.model.deberta.encoder.layer.11.attention.self.value_proj", (11, "W_v")),
        ("deberta.encoder.layer.0.attention.output.dense", (0, "W_a")),
        ("deberta.encoder.layer.5.intermediate.dense", (5, "W_m")),
        ("deberta.encoder.layer.5.output.dense", (5, "W_o")),
        ("bert.encoder.layer.2.attention.self.key", (2, "W_k")),
        ("base_model.model.bert.encoder.layer.2.attention.self.key.lora_A", (2, "W_k")),
        ("deberta.encoder.rel_embeddings", None),
        ("pooler.dense", None),
    ],
)
def test_module_position(name, expected):
    assert module_position(name) == expected


def test_rank_matrix():
    pattern = layered_pattern(2, lambda layer, weight: layer + 1)
    pattern["classifier"] = 5
    matrix, unmatched = rank_matrix(pattern)
    assert matrix.shape == (2, 6) and matrix[0].tolist() == [1.0] * 6 and matrix[1].tolist() == [2.0] * 6
    assert unmatched == ["classifier"]
    assert rank_value([True, False, True]) == 2.0


@pytest.mark.parametrize("choices", [
    {"task": "rte", "method": "lora", "threshold": "none", "model": "deberta_v3_base"},
    {"task": "squad_v2", "method": "triadapt", "threshold": "linear", "model": "tiny"},
])
def test_fast_default_config_equals_hydra_composition(choices):
    from adarank.analysis.defaults import DefaultConfigs

    defaults = DefaultConfigs()
    composed = defaults._compose(choices)
    composed.pop("logger")
    assert defaults._build(choices) == composed


def test_triadapt_threshold_none_counts_as_linear(tmp_path):
    root = tmp_path / "raw"
    fake_run(root, "rte", "triadapt", 0, 80.0, "linear")
    runs = load_runs(root)
    assert list(runs["arm"]) == ["triadapt_linear"]


def test_left_out_runs_and_figure_notes_say_why(tmp_path):
    root = tmp_path / "raw"
    pattern = layered_pattern(2, lambda layer, weight: 4)
    fake_run(root, "rte", "lora", 0, 80.0)
    fake_run(root, "rte", "newmethod", 0, 81.0)  # no method of this harness: skipped as unreadable
    fake_run(root, "squad_v2", "bitfit", 0, 81.0)  # an arm Table IV has no row for
    fake_run(root, "rte", "triadapt", 0, 82.0, "linear", model="minilm", total_rank=48, rank_pattern=pattern)
    report = write_report(root, tmp_path / "tables")
    reasons = set(report.left_out.loc[report.left_out["table"] == "table1", "reason"])
    assert "no row for method arm bitfit" in set(report.left_out.loc[report.left_out["table"] == "table4", "reason"])
    assert BAD_FILE in set(report.left_out.loc[report.left_out["table"] == "all", "reason"])
    assert any(r.startswith("setup 'model=minilm'") for r in reasons)
    assert any("1 run(s) have rank patterns, 0 of them" in note for note in report.notes)
    assert "left out" in (tmp_path / "tables" / "table1.md").read_text()
    assert (tmp_path / "tables" / "left_out.csv").is_file()


def test_dylora_per_rank_table_is_mean_and_std_over_seeds(tmp_path):
    import json as _json

    from adarank.analysis.report import write_report

    for seed, scores in ((0, {"1": 60.0, "2": 70.0}), (1, {"1": 62.0, "2": 74.0})):
        folder = fake_run(tmp_path / "raw", "rte", "dylora", seed, scores["2"])
        metrics = _json.loads((folder / "metrics.json").read_text())
        metrics["by_rank"] = {rank: {"accuracy": value} for rank, value in scores.items()}
        (folder / "metrics.json").write_text(_json.dumps(metrics))
    fake_run(tmp_path / "raw", "rte", "lora", 0, 70.0)  # no by_rank: not in the table
    write_report(tmp_path / "raw", tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "dylora_ranks.csv")
    assert list(table["rank"]) == [1, 2] and list(table["n"]) == [2, 2]
    assert list(table["mean"]) == [61.0, 72.0]
    assert table["std"].tolist() == pytest.approx([2 ** 0.5, 8 ** 0.5])
    text = (tmp_path / "out" / "dylora_ranks.md").read_text()
    assert "61.00 ± 1.41 (n=2)" in text and "72.00 ± 2.83 (n=2)" in text
    tex = (tmp_path / "out" / "dylora_ranks.tex").read_text()
    assert r"61.00$\pm$1.4" in tex and r"\toprule" in tex
    # DyLoRA runs of a setup not shown: said so, not silently skipped
    folder = fake_run(tmp_path / "raw", "rte", "dylora", 0, 50.0, model="minilm")
    metrics = _json.loads((folder / "metrics.json").read_text())
    metrics["by_rank"] = {"1": {"accuracy": 40.0}}
    (folder / "metrics.json").write_text(_json.dumps(metrics))
    report = build_report(tmp_path / "raw")
    assert any(note.startswith("DyLoRA per-rank table: runs in setup 'model=minilm'") for note in report.notes)
    assert "DyLoRA per-rank table" in report.summary()


def test_full_fine_tunings_own_lr_does_not_split_it_from_the_other_arms():
    """method.lr is read by full fine-tuning only and task.lr by every other arm, so a sweep that
    gives full fine-tuning its own LR keeps all its arms in one setup (the mini sweep)."""
    from adarank.analysis.relevance import matters, shared

    assert matters("method.lr", "full") and not matters("method.lr", "lora")
    assert not matters("task.lr", "full") and matters("task.lr", "triadapt") and matters("task.lr", "bitfit")
    assert not shared("method.lr") and not shared("task.lr") and shared("train.max_steps")
