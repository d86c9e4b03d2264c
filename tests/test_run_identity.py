"""A run's identity (the config hash in its folder name) must not move when the project adds a
config key: every run folder recorded so far stays valid and is skipped on rerun. The hashes below
were computed by the code that recorded the published runs (docs/mini); a new semantic key must be
registered in results.HASH_NEUTRAL_DEFAULTS with the value that reproduces the old computation."""

from __future__ import annotations

import pytest

from adarank import results
from tests.conftest import compose

RECORDED = {
    "88fdfa56": ["task=rte", "method=lora"],
    "69192214": ["task=rte", "method=triadapt", "threshold=linear"],
    "36a5fd76": ["task=mrpc", "method=adalora", "model=minilm"],
    "7143d5db": ["task=squad_v2", "method=increlora"],
    "5fbf20dd": ["task=stsb", "method=full", "model=minilm", "train.schedule=scaled", "train.max_steps=48"],
    # a job of the published mini sweep (+sweep=mini), spelled as its overrides
    "fb89b464": [
        "+sweep/mini_task=mrpc", "+sweep/arm=triadapt_linear", "model=minilm", "train.schedule=scaled",
        "task.max_seq_length=64", "train.eval_interval=96", "train.num_threads=1",
    ],
}


@pytest.mark.parametrize("expected", sorted(RECORDED))
def test_recorded_configs_keep_their_hash(expected):
    assert results.config_hash(compose(RECORDED[expected])) == expected


def test_a_neutral_key_at_its_neutral_value_leaves_the_hash_alone(monkeypatch):
    from omegaconf import OmegaConf

    cfg = compose(["task=rte", "method=lora"])
    OmegaConf.set_struct(cfg, False)
    before = results.config_hash(cfg)
    monkeypatch.setitem(results.HASH_NEUTRAL_DEFAULTS, "train.brand_new_key", "neutral")
    cfg.train.brand_new_key = "neutral"
    assert results.config_hash(cfg) == before
    cfg.train.brand_new_key = "other"
    assert results.config_hash(cfg) != before
