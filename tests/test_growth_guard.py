"""Rank-growing methods refuse multi-process data parallel before touching the model."""

import pytest
from torch import nn

from adarank.methods import method_class
from tests.conftest import compose


@pytest.mark.parametrize("method", ["increlora", "triadapt"])
def test_growth_methods_refuse_ddp(method, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = compose([f"method={method}", "model=tiny"])
    instance = method_class(method)(cfg.method, cfg.task, cfg.threshold, cfg.model)
    with pytest.raises(RuntimeError, match="multi-process data parallel"):
        instance.prepare(nn.Linear(2, 2))
