"""The jobs of a sweep (conf/sweep/<name>.yaml) and the config each one runs with, as Hydra's basic
sweeper would compose them for ``python train.py -m +sweep=<name> [overrides]``. Used by the
preview CLI (analysis/sweeps.py), the device-hour estimate (analysis/gpu_hours.py) and the tests."""

from __future__ import annotations

from pathlib import Path

from adarank.analysis.defaults import REPO_CONF


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
