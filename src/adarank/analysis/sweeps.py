"""Preview a paper sweep (conf/sweep/<name>.yaml) without running it: the job list Hydra's basic
sweeper would launch for ``python train.py -m +sweep=<name> [overrides]``.

    python -m adarank.analysis.sweeps table1               # count and list the jobs
    python -m adarank.analysis.sweeps fig3 seed=0 --count   # just the count of a slice
    python -m adarank.analysis.sweeps table1 task=rte,mrpc +sweep/arm=lora,increlora  # comma slices
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adarank.analysis.defaults import REPO_CONF

SWEEPS = ("table1", "table2", "table3", "table4", "fig2", "fig3", "fig4", "fig5", "mini", "mini_squad")


def sweep_jobs(name: str, overrides: list[str] = (), conf_dir: str | Path = REPO_CONF) -> list[list[str]]:
    """The override list of every job, in launch order (grid params first, command line last)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"+sweep={name}", *overrides]
    parser = OverridesParser.create()
    # a comma slice (task=rte,mrpc) is a sweep, which compose() refuses: the sweep file alone gives
    # the grid, and every override joins it below, as on the train.py -m command line
    fixed = [o.input_line for o in parser.parse_overrides(list(arguments)) if not o.is_sweep_override()]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="config", overrides=fixed, return_hydra_config=True)
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.params or {}).items()]
    parsed = parser.parse_overrides(params + list(arguments))
    (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return batch


def compose_jobs(jobs: list[list[str]], conf_dir: str | Path = REPO_CONF) -> list:
    """The config each job runs with (raises what Hydra raises for an invalid job)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return [compose(config_name="config", overrides=list(job)) for job in jobs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="list the jobs of a paper sweep")
    parser.add_argument("sweep", choices=SWEEPS)
    parser.add_argument("overrides", nargs="*", help="extra overrides, as on the train.py command line")
    parser.add_argument("--count", action="store_true", help="print only the number of jobs")
    args = parser.parse_args(argv)
    jobs = sweep_jobs(args.sweep, args.overrides)
    if not args.count:
        for number, job in enumerate(jobs):
            print(f"#{number}: {' '.join(job)}")
    print(f"{len(jobs)} jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
