"""notebooks/analysis.ipynb runs top to bottom headless on a small synthetic results tree."""

from __future__ import annotations

import json

import pytest

from adarank.analysis.synthetic import demo_tree, fake_run
from tests.conftest import REPO

NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"


def run_notebook(tmp_path, monkeypatch, results):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("ADARANK_RESULTS", str(results))
    monkeypatch.setenv("ADARANK_TABLES", str(tmp_path / "tables"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on any failing cell
    return notebook


def outputs(notebook) -> list[dict]:
    return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


@pytest.mark.slow
def test_notebook_executes_on_a_small_results_tree(tmp_path, monkeypatch):
    results = demo_tree(tmp_path / "raw")
    folder = fake_run(results, "rte", "dylora", 0, 80.0)  # DyLoRA evaluated at every rank
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["by_rank"] = {"1": {"accuracy": 70.0}, "2": {"accuracy": 75.5}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    notebook = run_notebook(tmp_path, monkeypatch, results)
    shown = outputs(notebook)
    text = "".join(out.get("text", "") for out in shown)
    markdown = "".join(out.get("data", {}).get("text/markdown", "") for out in shown)
    assert "table1:" in text
    assert any("image/png" in out.get("data", {}) for out in shown)
    assert "Table I" in markdown and "DyLoRA at every rank" in markdown and "75.50 (n=1)" in markdown
    assert "learning_curve_rte_paper.png`: RTE: dev accuracy" in markdown  # each figure with its caption
    assert (tmp_path / "tables" / "table1.md").is_file()


def test_notebook_uses_the_package_not_a_copy():
    source = NOTEBOOK.read_text()
    assert "from adarank.analysis import" in source
    assert "def " not in source  # no aggregation code pasted into the notebook
