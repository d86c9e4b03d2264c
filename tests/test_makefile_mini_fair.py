"""`make mini-fair`'s control flow (Makefile; docs/fair-protocol.md): LR search, then the grid widened
round by round until `select_lr --edge-runs` prints nothing, then the selection, the 5-seed stage, the
paper-protocol stage and the tables, in that order; a failed widening run, a failed `--edge-runs` or
edges left after 8 rounds stop it before the later stages. The Makefile is run for real by `make`,
with the virtual environment's python replaced by a script that records each call and plays
`select_lr --edge-runs`' answers from files, so nothing trains here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")

FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for the venv's python: records its arguments; `select_lr --edge-runs` prints the next
# scripted round (edges<N>.txt, nothing once they run out) or fails when fail_select exists; an edge
# run fails when fail_edge exists
here="$(dirname "$0")/../.."
printf '%s\\n' "$*" >> "$here/calls.log"
case "$*" in
  *--edge-runs*)
    if [ -f "$here/fail_select" ]; then exit 2; fi
    n=$(( $(cat "$here/round" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$here/round"
    if [ -f "$here/edges$n.txt" ]; then cat "$here/edges$n.txt"; fi ;;
  *protocol.lr_scale=*)
    if [ -f "$here/fail_edge" ]; then exit 1; fi ;;
esac
exit 0
"""


def _fake_setup(tmp_path: Path) -> None:
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    (tmp_path / "venv" / ".installed").touch()  # newer than pyproject.toml: `make setup` has nothing to do
    (tmp_path / "mf").mkdir()


def _make_mini_fair(tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "mini-fair", f"VENV={tmp_path / 'venv'}",
         f"MINI_FAIR={tmp_path / 'mf'}", "GLUE_DIR=/glue"],
        capture_output=True, text=True, timeout=120)


def _calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls.log").read_text().splitlines()


def _stage(call: str) -> str:
    """A short name for one recorded call."""
    if "--edge-runs" in call:
        return "edge-runs?"
    if "protocol.lr_scale=" in call:
        return "widen " + " ".join(part.split("=")[1] for part in call.split()
                                   if part.startswith(("+sweep/mini_fair_task=", "+sweep/arm=", "protocol.lr_scale=")))
    for marker, name in (("select_lr", "select"), ("+sweep=mini_fair_search", "search"),
                         ("+sweep=mini_fair_paper", "paper"), ("+sweep=mini_fair ", "five seeds"),
                         ("make_tables.py", "tables")):
        if marker in call + " ":
            return name
    return call


def test_widens_until_no_edge_is_left_then_runs_the_later_stages(tmp_path):
    _fake_setup(tmp_path)
    (tmp_path / "edges1.txt").write_text("mrpc lora 0.5\nstsb full 16\n")
    (tmp_path / "edges2.txt").write_text("mrpc lora 0.25\n")
    result = _make_mini_fair(tmp_path)
    assert result.returncode == 0, result.stderr
    calls = _calls(tmp_path)
    stages = [_stage(c) for c in calls]
    # the two runs of round 1 go two at a time (xargs -P 2): their order is free
    assert stages[:2] == ["search", "edge-runs?"]
    assert sorted(stages[2:4]) == ["widen mrpc lora 0.5", "widen stsb full 16"]
    assert stages[4:] == ["edge-runs?", "widen mrpc lora 0.25", "edge-runs?",
                          "select", "five seeds", "paper", "tables"]
    widening = next(c for c in calls if "protocol.lr_scale=0.25" in c)
    assert f"results.root={tmp_path}/mf/raw" in widening and "data.dir=/glue" in widening
    assert f"hydra.sweep.dir={tmp_path}/mf/hydra/edge/mrpc-lora-0.25" in widening
    five_seeds = next(c for c in calls if _stage(c) == "five seeds")
    assert f"protocol.lr_table={tmp_path}/mf/selected_lr.yaml" in five_seeds
    assert f"--out {tmp_path}/mf" in next(c for c in calls if _stage(c) == "select")


def test_no_edge_means_no_widening(tmp_path):
    _fake_setup(tmp_path)
    result = _make_mini_fair(tmp_path)
    assert result.returncode == 0, result.stderr
    assert [_stage(c) for c in _calls(tmp_path)] == ["search", "edge-runs?", "select", "five seeds", "paper", "tables"]


def test_edges_left_after_eight_rounds_stop_before_the_selection(tmp_path):
    _fake_setup(tmp_path)
    for n in range(1, 12):
        (tmp_path / f"edges{n}.txt").write_text("mrpc adalora 64\n")
    result = _make_mini_fair(tmp_path)
    assert result.returncode != 0
    assert "edges left after 8 rounds" in result.stderr
    stages = [_stage(c) for c in _calls(tmp_path)]
    assert stages.count("widen mrpc adalora 64") == 8 and stages.count("edge-runs?") == 9
    assert "select" not in stages and "five seeds" not in stages


def test_a_failed_widening_run_stops_before_the_selection(tmp_path):
    _fake_setup(tmp_path)
    (tmp_path / "edges1.txt").write_text("stsb lora 0.25\n")
    (tmp_path / "fail_edge").touch()
    result = _make_mini_fair(tmp_path)
    assert result.returncode != 0
    assert [_stage(c) for c in _calls(tmp_path)] == ["search", "edge-runs?", "widen stsb lora 0.25"]


def test_a_failed_edge_check_stops_before_the_selection(tmp_path):
    _fake_setup(tmp_path)
    (tmp_path / "fail_select").touch()
    result = _make_mini_fair(tmp_path)
    assert result.returncode != 0
    assert [_stage(c) for c in _calls(tmp_path)] == ["search", "edge-runs?"]
