"""Entry point: python train.py task=rte method=triadapt threshold=linear  (see README.md)."""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig

from adarank.checks import ConfigError
from adarank.run import run
from adarank.training.checkpoint import Interrupted


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg) -> float:
    logging.getLogger("adarank").setLevel(logging.INFO)
    try:
        metrics = run(cfg, overrides=list(HydraConfig.get().overrides.task))
    except ConfigError as err:
        raise SystemExit(f"configuration error: {err}") from None
    except Interrupted as stop:  # SIGINT: a checkpoint of the last finished step was written
        print(stop, file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    return metrics["best"][metrics["primary_metric"]]


if __name__ == "__main__":
    main()
