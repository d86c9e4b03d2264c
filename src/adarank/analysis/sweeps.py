"""Preview a paper sweep (conf/sweep/<name>.yaml) without running it: the job list Hydra's basic
sweeper would launch for ``python train.py -m +sweep=<name> [overrides]``.

    python -m adarank.analysis.sweeps table1               # count and list the jobs
    python -m adarank.analysis.sweeps fig3 seed=0 --count   # just the count of a slice
    python -m adarank.analysis.sweeps table1 task=rte,mrpc +sweep/arm=lora,increlora  # comma slices
    python -m adarank.analysis.sweeps table1 --estimate --calibrate --save cal.json   # device-hours, measured here
    python -m adarank.analysis.sweeps table1 --estimate --calibration cal.json        # ... from a saved calibration

``--estimate`` prints the sweep's optimizer steps and device-hours (analysis/gpu_hours.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adarank.analysis.sweep_configs import sweep_jobs

SWEEPS = ("table1", "table2", "table3", "table4", "fig2", "fig3", "fig4", "fig5", "mini", "table1_extended", "mini_extended",
          "mini_squad", "lr_search", "lr_search_table1", "fair_table1", "lr_search_table1_extended", "fair_table1_extended",
          "mini_fair_search", "mini_fair", "mini_fair_paper")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="list the jobs of a paper sweep")
    parser.add_argument("sweep", choices=SWEEPS)
    parser.add_argument("overrides", nargs="*", help="extra overrides, as on the train.py command line")
    parser.add_argument("--count", action="store_true", help="print only the number of jobs")
    parser.add_argument("--estimate", action="store_true", help="print total optimizer steps and device-hours")
    parser.add_argument("--calibrate", action="store_true",
                        help="--estimate from short runs of each task x arm on this machine (~24 steps each)")
    parser.add_argument("--calibration", help="--estimate from a saved calibration JSON")
    parser.add_argument("--calibration-steps", type=int, default=None, help="steps per calibration run (default 24)")
    parser.add_argument("--save", help="write the calibration JSON here")
    args = parser.parse_args(argv)
    if (args.calibrate or args.calibration) and not args.estimate:
        parser.error("--calibrate / --calibration go with --estimate")
    if args.calibrate and args.calibration:
        parser.error("give either --calibrate or --calibration")
    jobs = sweep_jobs(args.sweep, args.overrides)
    if args.estimate:
        return _estimate(jobs, args)
    if not args.count:
        for number, job in enumerate(jobs):
            print(f"#{number}: {' '.join(job)}")
    print(f"{len(jobs)} jobs")
    return 0


def _estimate(jobs: list[list[str]], args) -> int:
    from adarank.analysis import gpu_hours

    if args.calibrate:
        steps = args.calibration_steps or gpu_hours.CALIBRATION_STEPS
        calibration = gpu_hours.calibrate(jobs, steps, log=lambda m: print(m, file=sys.stderr, flush=True))
        if args.save:
            Path(args.save).write_text(json.dumps(calibration, indent=1))
    elif args.calibration:
        calibration = gpu_hours.load_calibration(args.calibration)
    else:
        calibration = {}
    result = gpu_hours.estimate(jobs, calibration)
    print(gpu_hours.table(result))
    where = calibration.get("device") or "no calibration: give --calibrate or --calibration FILE"
    hours = "unknown (not every arm calibrated)" if result["hours"] is None else f"{result['hours']:.1f}"
    print(f"{result['jobs']} jobs, {result['steps']:,} optimizer steps, {hours} device-hours on {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
