"""make gpu-check's logic on the CPU (tools/gpu_check.py), so the GPU command cannot rot: every part
runs with --device cpu on the tiny model; plus the peak table and the FLOPs formula by hand."""

from __future__ import annotations

import json

import pytest

from adarank.tools.gpu_check import device_peak_tflops, main, model_flops_per_token


def test_the_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    code = main(["--device", "cpu", "--arms", "lora,bitfit", "--steps", "4", "--bench-preset", "tiny",
                 "--bench-steps", "2", "--bench-batch", "4", "--bench-seq-len", "16", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [r["arm"] for r in report["arms"]] == ["lora", "bitfit"]
    for row in report["arms"]:
        assert row["gap_device_vs_cpu"] == 0.0  # the CPU against itself
        assert 0 < row["gap_bf16_vs_fp32"] < 0.05 and row["bf16_finite"]
        assert row["syncs_max_ordinary"] == 0 and len(row["syncs_per_step"]) == 4
    bench = report["bench"]
    assert [r["method"] for r in bench["results"]] == ["lora", "adalora", "increlora", "triadapt-linear"]
    assert all(r["examples_per_s"] > 0 and r["fraction_of_peak"] is None for r in bench["results"])
    assert "not in the table of known devices" in bench["peak_note"]
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "| lora | 0.00e+00 |" in markdown and "Verdict: all checks passed" in markdown


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA H100 NVL", None), ("Tesla V100-SXM2-16GB", None),
])
def test_known_device_peaks(name, peak):
    assert device_peak_tflops(name) == peak


def test_model_flops_per_token_at_deberta_v3_base_dims():
    # per layer 4 x 768^2 + 2 x 768 x 3072 = 7,077,888 linear weights; x 12 layers = 84,934,656
    # 4 x 84,934,656 + 12 x 12 x 128 x 768 = 339,738,624 + 14,155,776
    assert model_flops_per_token(768, 12, 3072, 128) == 353_894_400


def test_a_failing_bench_keeps_parts_1_to_3_and_a_rerun_into_the_same_folder_works(tmp_path, monkeypatch):
    """On the first H200 the step-time bench hung and the whole report was lost; and a second run
    into the same --out found two run folders per arm. Now parts 1-3 are written before the bench,
    a bench error fails the verdict without hiding them, and each run starts from a clean folder."""
    import adarank.tools.gpu_check as gpu_check

    args = ["--device", "cpu", "--arms", "lora", "--steps", "4", "--out", str(tmp_path)]
    assert main([*args, "--no-bench"]) == 0

    def broken_bench(*_args, **_kwargs):
        raise RuntimeError("benchmark of lora failed")

    monkeypatch.setattr(gpu_check, "step_times", broken_bench)
    assert main(args) == 1  # the same folder again, now with a bench that fails
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [r["arm"] for r in report["arms"]] == ["lora"] and report["arms"][0]["syncs_max_ordinary"] == 0
    assert "benchmark of lora failed" in report["bench_error"] and report["verdict"] == "FAILED: step-time bench"
    assert "Step-time bench failed" in (tmp_path / "gpu_check.md").read_text()
