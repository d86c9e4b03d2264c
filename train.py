"""Entry point: python train.py task=rte method=triadapt threshold=linear  (see README.md)."""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig

from adarank.gpu_slots import on_free_gpu
from adarank.jobs import run_job
from adarank.run import run
from adarank.training.checkpoint import Interrupted


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg) -> float | None:
    logging.getLogger("adarank").setLevel(logging.INFO)
    try:
        # one-line errors; in a multirun every job is recorded and the sweep goes on (adarank/jobs.py)
        # on a multi-GPU machine each job runs in a fresh process on a GPU of its own (adarank/gpu_slots.py)
        return run_job(on_free_gpu(run), cfg, HydraConfig.get())
    except Interrupted as stop:  # SIGINT: a checkpoint of the last finished step was written
        print(stop, file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except KeyboardInterrupt:  # a second Ctrl-C during that stop, or one before training started
        print("interrupted; rerun the same command to resume from the last checkpoint, if one was written",
              file=sys.stderr, flush=True)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
