"""The fair protocol's sweeps (conf/sweep/lr_search*.yaml, fair_table1.yaml, mini_fair*.yaml): their
grids, that every job composes under the intended protocol, and the seeds kept apart."""

from __future__ import annotations

import pytest

from adarank.analysis.sweep_configs import compose_jobs, sweep_jobs

TABLE1_ARMS = 11
EXPECTED = {
    "lr_search_table1": (8 * TABLE1_ARMS * 6, "fair", {"0"}),
    "fair_table1": (8 * TABLE1_ARMS * 5, "fair", {"1", "2", "3", "4", "5"}),
    # + DoRA, rsLoRA, PiSSA, LoRA+, EVA, SoRA (issue 27)
    "lr_search_table1_extended": (8 * (TABLE1_ARMS + 6) * 6, "fair", {"0"}),
    "fair_table1_extended": (8 * (TABLE1_ARMS + 6) * 5, "fair", {"1", "2", "3", "4", "5"}),
    "mini_fair_search": (2 * 5 * 4, "fair", {"0"}),
    "mini_fair": (2 * 5 * 5, "fair", {"1", "2", "3", "4", "5"}),
    "mini_fair_paper": (2 * 5 * 3, "paper", {"0", "1", "2"}),
}
NEEDS_TABLE = {"fair_table1", "fair_table1_extended", "mini_fair"}


def jobs_of(name: str) -> list[list[str]]:
    return sweep_jobs(name, ["protocol.lr_table=t.yaml"] if name in NEEDS_TABLE else [])


def sample(jobs: list[list[str]], name: str, seed: str) -> list[list[str]]:
    """The jobs worth composing: one per (task, arm) of a mini sweep, one per arm of RTE in a table
    sweep, at one seed and the default LR (composing all 528 takes minutes)."""
    out = []
    for job in jobs:
        values = dict(item.split("=", 1) for item in job)
        if values["seed"] != seed or values.get("protocol.lr_scale", "1") != "1":
            continue
        if name.startswith("mini") or values.get("task") == "rte":
            out.append(job)
    return out


@pytest.mark.parametrize("name", EXPECTED)
def test_fair_sweeps_expand_to_their_grids_and_compose(name):
    count, protocol, seeds = EXPECTED[name]
    jobs = jobs_of(name)
    assert len(jobs) == count and len({tuple(sorted(j)) for j in jobs}) == count
    assert {dict(i.split("=", 1) for i in job)["seed"] for job in jobs} == seeds
    configs = compose_jobs(sample(jobs, name, min(seeds)))
    assert {cfg.protocol.name for cfg in configs} == {protocol}
    if name.startswith("mini"):
        assert {(cfg.model.name, cfg.task.max_seq_length, cfg.train.schedule) for cfg in configs} == {("minilm", 64, "scaled")}
        assert {cfg.task.name for cfg in configs} == {"mrpc", "stsb"}
        # one evaluation interval for both tasks: their runs share one setup in the tables
        assert len({cfg.train.eval_interval for cfg in configs}) == 1
    if name in NEEDS_TABLE:
        assert {cfg.protocol.lr_table for cfg in configs} == {"t.yaml"}


def test_the_lr_grids():
    scales = sorted({float(dict(i.split("=", 1) for i in job)["protocol.lr_scale"]) for job in sweep_jobs("lr_search", ["task=rte"])})
    assert scales == [0.125, 0.25, 0.5, 1.0, 2.0, 4.0]  # Table V's LR / 8 ... x 4, log-spaced
    assert len(sweep_jobs("lr_search", ["task=rte", "protocol.lr_scale=0.5,1"])) == 2  # the command line replaces it


def test_the_final_stages_require_an_lr_table():
    from adarank import protocol
    from adarank.checks import ConfigError

    for name in NEEDS_TABLE:
        [cfg] = compose_jobs(sweep_jobs(name)[:1])
        with pytest.raises(ConfigError, match="add protocol.lr_table=path/to/selected_lr.yaml"):
            protocol.check(cfg, None)
