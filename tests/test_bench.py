"""Smoke tests of the benchmark (``make bench``): it runs, takes turns, puts growth events in the
timed window and writes schema-valid JSON. Timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adarank.tools.bench import ROW_KEYS, SCHEMA_VERSION, BenchConfig, Turns, markdown_table, run_bench, write_report

REPO = Path(__file__).resolve().parents[1]


def check_schema(report: dict, methods: list[str], steps: int) -> None:
    assert report["schema_version"] == SCHEMA_VERSION
    assert report["config"]["steps"] == steps and report["machine"]["device"] in ("cpu", "cuda")
    assert [row["method"] for row in report["results"]] == methods
    for row in report["results"]:
        missing = [key for key in ROW_KEYS if key not in row]
        assert not missing, (row["method"], missing)
        assert row["steps_timed"] == steps == len(row["step_seconds"])
        assert row["min_step_s"] <= row["median_step_s"] and row["min_step_s"] > 0
        assert row["trainable_params_end"] >= row["trainable_params_start"] > 0
    json.dumps(report)  # plain JSON types only


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_runs_methods_side_by_side_with_growth_in_the_timed_window(tmp_path):
    methods = ["lora", "increlora", "triadapt-linear"]
    bc = BenchConfig(preset="tiny", batch=2, seq_len=16, steps=6, warmup=1, interval=2, methods=tuple(methods),
                     memory=False, ops=False)
    report = run_bench(bc, log=lambda _: None)
    check_schema(report, methods, steps=6)
    rows = {row["method"]: row for row in report["results"]}
    assert rows["lora"]["x_lora"] == 1.0 and rows["lora"]["events_timed"] == 0
    for grower in ("increlora", "triadapt-linear"):
        assert rows[grower]["events_timed"] >= 1  # growth happened among the timed steps
        assert rows[grower]["trainable_params_end"] > rows[grower]["trainable_params_start"]
        assert rows[grower]["allocation_s_total"] >= 0
    assert rows["lora"]["total_rank_end"] == 8 * report["adapted_modules"] == report["budget_total_rank"]
    path = write_report(report, tmp_path / "out" / "bench.json")
    assert json.loads(path.read_text())["results"][0]["method"] == "lora"
    table = markdown_table(report)
    assert table.count("\n") == 1 + len(methods) and "triadapt-linear" in table


def test_steady_mode_times_only_steps_at_the_final_rank():
    methods = ["lora", "triadapt-fixed", "triadapt-plain"]
    bc = BenchConfig(preset="tiny", batch=2, seq_len=16, steps=3, warmup=9, methods=tuple(methods), memory=False,
                     steady=True, ops=False)
    report = run_bench(bc, log=lambda _: None)
    check_schema(report, methods, steps=3)
    rows = {row["method"]: row for row in report["results"]}
    budget = report["budget_total_rank"]
    for label in ("triadapt-fixed", "triadapt-plain"):  # 7 events of Δr = 1 on every module, all in the warm-up
        assert rows[label]["events_timed"] == 0 and rows[label]["events_total"] == 7
        assert rows[label]["total_rank_end"] == budget
    # the same model either way: the plain storage only differs in how the blocks are stored
    assert rows["triadapt-plain"]["trainable_params_end"] == rows["triadapt-fixed"]["trainable_params_end"]


def test_plain_label_builds_the_straightforward_storage():
    from adarank.tools.bench import build_runner

    bc = BenchConfig(preset="tiny", batch=2, seq_len=16, steps=2, warmup=1, memory=False)
    plain, _ = build_runner(bc, "triadapt-plain", 0, torch.device("cpu"))
    fast, _ = build_runner(bc, "triadapt-fixed", 1, torch.device("cpu"))
    assert plain.method.fast is False and not hasattr(plain.model, "triadapt_blocks")
    assert fast.method.fast is True and hasattr(fast.model, "triadapt_blocks")


def test_per_rank_label_builds_increloras_official_layout():
    from adarank.tools.bench import build_runner

    bc = BenchConfig(preset="tiny", batch=2, seq_len=16, steps=2, warmup=1, memory=False)
    per_rank, _ = build_runner(bc, "increlora-per-rank", 0, torch.device("cpu"))
    blocks, _ = build_runner(bc, "increlora", 1, torch.device("cpu"))
    assert per_rank.method.rank_blocks is False and all(not l.rank_blocks for l in per_rank.method.layers.values())
    assert blocks.method.rank_blocks is True and all(l.rank_blocks for l in blocks.method.layers.values())


def test_op_counter_counts_per_phase_and_skips_views():
    from adarank.tools.op_count import OpCounter

    counter = OpCounter()
    x = torch.ones(3, 4)
    with counter:
        with counter.phase("forward"):
            y = (x @ x.T).view(-1)  # mm (a kernel) + t, view (views)
        y.sum()
    snap = counter.snapshot()
    assert snap["forward"] == {"ops": 3, "kernels": 1} and snap["other"] == {"ops": 1, "kernels": 1}
    assert snap["total"] == {"ops": 4, "kernels": 2}


def test_operator_counts_attribute_each_methods_overhead():
    from adarank.tools.bench import count_method_ops, ops_table

    cpu = torch.device("cpu")
    bc = BenchConfig(preset="tiny")
    rows = {label: {"method": label, **count_method_ops(bc, label, cpu)}
            for label in ("lora", "adalora", "increlora", "triadapt-fixed")}
    lora, ada, incre, tri = rows["lora"], rows["adalora"], rows["increlora"], rows["triadapt-fixed"]
    assert lora["kernels_step"] == lora["kernels_forward"] + lora["kernels_update"] > 0
    assert lora["kernels_hooks"] == lora["kernels_regulariser"] == 0 and lora["kernels_scoring_per_step"] is None
    assert incre["kernels_scoring_per_step"] > 0 and incre["kernels_hooks_per_event"] > 0  # scores, then grows
    assert ada["kernels_hooks"] > 0 and ada["kernels_regulariser"] > 0  # importance update / masking every step
    assert tri["kernels_hooks"] == 0 < tri["kernels_hooks_per_event"]  # nothing between growth events
    assert tri["ops_total_rank"] == incre["ops_total_rank"] == lora["ops_total_rank"]  # all at the final rank
    report = {"results": list(rows.values())}
    from adarank.tools.bench import add_kernel_deltas

    add_kernel_deltas(report["results"])
    assert rows["lora"]["extra_kernels_x_lora"] == 0
    assert ops_table(report).count("\n") == 1 + len(rows)


def test_whole_run_mode_scales_the_task_schedule_and_times_every_step():
    from adarank.tools.bench import whole_run_table
    from adarank.schedule_scaling import paper_steps, scaled_values

    methods = ["lora", "triadapt-fixed"]
    bc = BenchConfig(preset="tiny", batch=2, seq_len=8, steps=45, warmup=0, task="rte", methods=tuple(methods),
                     memory=False, ops=False, whole_run=True)
    report = run_bench(bc, log=lambda _: None)
    check_schema(report, methods, steps=45)
    rows = {row["method"]: row for row in report["results"]}
    tri = rows["triadapt-fixed"]
    # the RTE schedule of Table V (32 x 50 epochs over 2,490 examples = 3,900 steps) scaled to 45 steps
    from omegaconf import OmegaConf

    rte = OmegaConf.load(REPO / "conf" / "task" / "rte.yaml")
    cfg = OmegaConf.create({"task": rte, "method": {"name": "triadapt"}})
    expected = scaled_values(cfg, 45, paper_steps(2490, 32, 50))
    assert tri["schedule"]["init_warmup"] == expected["task.init_warmup"][1]
    assert tri["schedule"]["incre_interval"] == expected["task.incre_interval"][1]
    assert tri["schedule"]["top_h"] == rte.top_h and tri["events_timed"] >= 1  # the task's own top_h
    assert rows["lora"]["schedule"]["warmup_steps"] == expected["task.warmup_steps"][1]
    assert tri["total_step_s"] == pytest.approx(sum(tri["step_seconds"]))
    assert rows["lora"]["total_x_lora"] == 1.0 and tri["total_x_lora"] > 0
    assert whole_run_table(report).count("\n") == 1 + len(methods)


def test_turns_alternate_between_runners():
    turns, order = Turns(3), []
    import threading

    def work(i):
        for _ in range(2):
            turns.wait(i)
            order.append(i)
            turns.pass_on(i)
        turns.wait(i)
        turns.leave(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert order == [0, 1, 2, 0, 1, 2]


@pytest.mark.slow
def test_cli_writes_json_with_per_method_memory_from_fresh_processes(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--preset", "tiny", "--methods", "floor,lora",
         "--batch", "2", "--seq-len", "16", "--steps", "2", "--warmup", "1", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| floor |" in proc.stdout and "| lora |" in proc.stdout
    report = json.loads(out.read_text())
    check_schema(report, ["floor", "lora"], steps=2)
    for row in report["results"]:
        assert row["peak_memory_mb"] > 0 and row["memory_kind"] in ("cpu_rss_hwm", "cuda_max_allocated")
    assert report["results"][1]["x_floor"] is not None


@pytest.mark.parametrize("whole_run", [False, True])
def test_collate_runs_in_the_runner_thread_on_cuda_too(whole_run):
    """The turn-taking collate is the bench's step clock: on CUDA, where the harness loads batches
    in worker processes (train.num_workers=auto), a forked worker cannot synchronise CUDA and the
    turns waited forever (seen on an H200). Every bench config loads batches in-thread."""
    from adarank.tools.bench import METHODS, compose_cfg
    from adarank.training.batches import loader_workers

    bc = BenchConfig(preset="tiny", batch=2, seq_len=16, steps=60, warmup=1, interval=2, whole_run=whole_run,
                     task="rte", methods=tuple(METHODS), memory=False, ops=False)
    cuda = torch.device("cuda")  # composing needs no GPU: only the device's type is read
    for label in METHODS:
        cfg = compose_cfg(bc, label, cuda)[0]
        assert cfg.train.device == "cuda" and loader_workers(cfg.train.num_workers, cuda) == 0, label
