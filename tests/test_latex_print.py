"""The LaTeX tables print as they come: Tables I-IV, the cost table and DyLoRA's per-rank table,
built from a complete synthetic tree, compiled with pdflatex in a two-column 10 pt article; every
font in the PDF is at least 7 pt and nothing runs over the text width or off the page.

Needs a TeX engine (Debian: ``apt-get install texlive-latex-recommended``) and PyMuPDF (the dev
extra); skipped with the reason otherwise."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from adarank.analysis import build_report, costs, dylora_ranks, tables
from adarank.analysis.synthetic import fake_run, full_tree

pytestmark = pytest.mark.skipif(shutil.which("pdflatex") is None,
                                reason="no TeX engine (pdflatex); Debian: apt-get install texlive-latex-recommended")

DOCUMENT = r"""\documentclass[10pt,twocolumn]{article}
\usepackage{booktabs}
\begin{document}
\input{%s}
\end{document}
"""
SMALLEST = 7 * 72 / 72.27  # 7 TeX points in PDF points (big points)


def compile_tex(tex: Path) -> tuple[Path, str]:
    """(the PDF, the log) of ``tex`` inside the two-column article."""
    folder = tex.parent / f"build_{tex.stem}"
    folder.mkdir()
    (folder / "doc.tex").write_text(DOCUMENT % tex.resolve())
    out = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=folder,
                         capture_output=True, text=True, timeout=120)
    log = (folder / "doc.log").read_text(errors="replace")
    assert out.returncode == 0, log[-2000:]
    return folder / "doc.pdf", log


def font_sizes(pdf: Path) -> dict[float, list[str]]:
    """{font size in PDF points: texts} of every text span in the PDF."""
    pymupdf = pytest.importorskip("pymupdf")
    sizes: dict[float, list[str]] = {}
    with pymupdf.open(pdf) as doc:
        for page in doc:
            for block in page.get_text("dict")["blocks"]:
                for line in block.get("lines", []):
                    for span in line["spans"]:
                        if span["text"].strip():
                            sizes.setdefault(round(span["size"], 2), []).append(span["text"])
    return sizes


def check_prints(tex: Path) -> dict:
    pdf, log = compile_tex(tex)
    problems = re.findall(r"Overfull \\hbox \((.*?) too wide\)", log) + re.findall(r"Float too large for page by (.*?)\n", log)
    sizes = font_sizes(pdf)
    assert not problems, (tex.name, problems)
    assert min(sizes) >= SMALLEST - 0.01, (tex.name, min(sizes), sizes[min(sizes)][:5])
    return sizes


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    root = full_tree(tmp_path_factory.mktemp("full") / "raw")
    for seed in range(3):  # DyLoRA at every rank 1..8 on two tasks
        for task in ("rte", "mrpc"):
            folder = fake_run(root, task, "dylora", seed + 10, 70.0 + seed)
            metrics = json.loads((folder / "metrics.json").read_text())
            metrics["by_rank"] = {str(r): {"accuracy": 60.0 + r + seed} for r in range(1, 9)}
            (folder / "metrics.json").write_text(json.dumps(metrics))
    return build_report(root)


@pytest.mark.parametrize("paper", ["delta", "column", "none"])
def test_tables_i_to_iv_print_at_7_pt_or_more(full_report, tmp_path, paper):
    for name, tidy in full_report.tables.items():
        tex = tmp_path / f"{name}.tex"
        tex.write_text(tables.to_latex(tidy, name, paper))
        sizes = check_prints(tex)
        body = [s for s in sizes if s < 9]  # the caption is 10 pt
        assert body and max(body) <= 8 * 72 / 72.27 + 0.01  # never scaled up either
        text = tex.read_text()
        assert text.isascii() and r"\resizebox" not in text
        assert "?" not in text  # no character lost to the OT1 fallback (LoRA+'s λ, EVA's ρ)


def test_cost_and_per_rank_tables_print(full_report, tmp_path):
    tex = tmp_path / "costs.tex"
    tex.write_text(costs.costs_latex(full_report.costs))  # 8 tasks x 11 methods: continued over floats
    check_prints(tex)
    assert tex.read_text().count(r"\begin{table*}") >= 2
    tex = tmp_path / "dylora_ranks.tex"
    tex.write_text(dylora_ranks.to_latex(full_report.dylora_ranks))
    check_prints(tex)


def test_a_small_table_of_another_setup_stays_in_one_column(tmp_path):
    """A one-task mini sweep: the narrow table goes into one column (table, not table*), at its
    natural size (never enlarged), its caption names the model, and no paper numbers appear."""
    root = tmp_path / "raw"
    for seed in range(3):
        for method in ("lora", "adalora"):
            fake_run(root, "mrpc", method, seed, 70.0 + seed, model="minilm", overrides={"train.max_steps": 96})
    report = build_report(root)
    tex = tmp_path / "table1.tex"
    tex.write_text(tables.to_latex(report.tables["table1"], "table1"))
    sizes = check_prints(tex)
    text = tex.read_text()
    assert r"\begin{table}[t]" in text and r"\begin{table*}" not in text
    assert "MiniLM" in text and "DeBERTaV3" not in text.split(r"\caption{")[1].split("}")[0]
    assert "Paper" not in text and "89.46" not in text  # no paper number of MRPC's Full FT row
    assert max(s for s in sizes if s < 9.5) <= 8 * 72 / 72.27 + 0.01
