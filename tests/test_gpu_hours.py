"""Device-hours of a sweep before launch (python -m adarank.analysis.sweeps NAME --estimate,
analysis/gpu_hours.py): steps and evaluations by hand, a saved calibration, and a calibration run."""

from __future__ import annotations

import json
import math

import pytest

from adarank.analysis import gpu_hours
from adarank.analysis.sweep_configs import sweep_jobs
from adarank.analysis.sweeps import main


def test_steps_and_hours_of_a_slice_by_hand(tmp_path, capsys):
    """RTE: 2,490 examples / batch 32 = 78 steps x 50 epochs = 3,900 steps; evaluations every 100
    steps below 3,900 (38) plus the final one, each ceil(277 / 64) = 5 batches at a third of a step."""
    jobs = sweep_jobs("table1", ["task=rte", "+sweep/arm=lora", "seed=0,1"])
    calibration = {"device": "test", "entries": {"rte/lora/deberta_v3_base": {"step_seconds": 0.5}}}
    result = gpu_hours.estimate(jobs, calibration)
    assert result["jobs"] == 2 and result["steps"] == 2 * 3900
    assert result["rows"]["rte/lora/deberta_v3_base"]["eval_batches"] == 2 * 39 * 5
    assert result["hours"] == pytest.approx(2 * (3900 * 0.5 + 39 * 5 * 0.5 / 3) / 3600)
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(calibration))
    assert main(["table1", "task=rte", "+sweep/arm=lora", "seed=0,1", "--estimate", "--calibration", str(path)]) == 0
    assert "2 jobs, 7,800 optimizer steps, 1.1 device-hours on test" in capsys.readouterr().out


@pytest.mark.slow  # composes all 264 configs (about 2 minutes on a busy 2-core VM)
def test_the_whole_table1_counts_its_steps_and_says_what_is_not_calibrated():
    result = gpu_hours.estimate(sweep_jobs("table1"), {})
    assert result["jobs"] == 264
    assert result["steps"] == 33 * (85_904 + 50_520 + 6_700 + 79_597 + 16_370 + 3_900 + 3_450 + 4_500)
    assert result["hours"] is None and len(result["uncalibrated"]) == 8 * 11


def test_estimate_flags_need_estimate(capsys):
    with pytest.raises(SystemExit):
        main(["table1", "--calibrate"])


def test_calibration_runs_each_arm_once_and_grows_short_runs_to_fit_the_schedule(tiny_glue_dir):
    """A real calibration on the tiny model: one run per (task, arm) whatever the seeds, and
    IncreLoRA's scaled schedule, which does not fit 3 steps, gets the steps it asks for."""
    # the tiny data's full run is 100 steps (48 examples, 50 epochs): growth every 2 steps from step 2
    jobs = sweep_jobs("table1", ["task=rte", "+sweep/arm=lora,increlora", "seed=0,1", "model=tiny",
                                 f"data.dir={tiny_glue_dir}", "task.warmup_steps=0", "task.init_warmup=2",
                                 "task.incre_interval=2"])
    calibration = gpu_hours.calibrate(jobs, steps=3, log=lambda m: None)
    entries = calibration["entries"]
    assert sorted(entries) == ["rte/increlora-fixed/tiny", "rte/lora/tiny"] and not calibration["failed"]
    assert entries["rte/lora/tiny"]["steps"] == 3 and entries["rte/increlora-fixed/tiny"]["steps"] > 3
    assert all(e["step_seconds"] > 0 for e in entries.values())
    result = gpu_hours.estimate(jobs, calibration)
    assert result["hours"] > 0 and math.isfinite(result["hours"]) and result["jobs"] == 4
