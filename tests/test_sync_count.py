"""Host-device syncs per optimizer step (tools/sync_count.py): the counter itself, and every method
through the real training loop with no sync in an ordinary step (docs/performance.md)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from adarank.tools.sync_count import ARMS, SyncCounter, measure_arm, ordinary_steps


def test_the_counter_sees_reads_copies_and_data_dependent_shapes_of_device_tensors():
    device_tensor = torch.ones(3)  # made before counting: a parameter / activation of a CUDA run
    with SyncCounter("cpu") as counter:
        host = torch.tensor([1.0, 2.0])  # Python data: a host tensor in a CUDA run too
        steps = torch.randint(0, 5, (1,))  # a factory without device: drawn on the CPU
        float(host.sum()), host.tolist(), int(steps.item())  # host reads: no sync
        device_tensor.sum().item()  # read
        bool(device_tensor[0] > 0)  # read
        float(device_tensor[1]), int(device_tensor[2])  # 2 reads
        device_tensor.tolist(), device_tensor.cpu(), device_tensor.numpy()  # 3 copies back
        torch.nonzero(device_tensor), device_tensor[device_tensor > 0]  # 2 data-dependent sizes
        on_device = host.to("cpu")  # a blocking host-to-device copy
        on_device.sum().item()  # the copy lives on the device now: a read
        torch.tensor([3.0]).to("cpu", non_blocking=True)  # asynchronous (pinned on CUDA)
        torch.zeros(2, device="cpu").copy_(torch.tensor([1.0, 2.0]))  # a blocking copy_
        torch.tensor([1.0, 2.0], device="cpu")  # Python data straight to the device
    kinds = Counter(s.kind for s in counter.segments[0])
    assert kinds == {"read": 5, "d2h": 3, "shape": 2, "h2d": 3}
    assert all("test_sync_count.py" in s.where for s in counter.segments[0])  # where: this file
    assert torch.Tensor.item is not None and torch.Tensor.to.__name__ == "to"  # patches undone


def test_steps_are_the_training_loaders_batches_and_fetching_is_host_work():
    data = [{"x": torch.tensor([float(i)])} for i in range(6)]
    loader = torch.utils.data.DataLoader(data, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(0))
    evaluation = torch.utils.data.DataLoader(data, batch_size=3)
    weight = torch.ones(1)
    with SyncCounter("cpu") as counter:
        for step, batch in enumerate(loader):
            x = batch["x"].to("cpu", non_blocking=step != 1)  # step 2 copies the batch blocking
            (x * weight).sum()
            if step == 2:
                for eval_batch in evaluation:  # an evaluation inside step 3: no new step
                    (eval_batch["x"].to("cpu") * weight).sum().item()
    assert counter.per_step() == [0, 1, 4]  # step 3: 2 blocking copies, 2 reads


@pytest.mark.slow
def test_no_sync_in_an_ordinary_step_of_any_method(tiny_glue_dir, tmp_path):
    """Every method through adarank.run.run on the tiny model (24 steps, growth / masking inside):
    at most one sync (the target; measured: none) in every ordinary step, AdaLoRA's steps after
    its final mask included."""
    for arm in ARMS:
        result = measure_arm(arm, tiny_glue_dir, tmp_path / arm)
        assert result["status"] == "completed"
        assert result["ordinary_steps"], arm
        assert result["max_ordinary"] <= 1, (arm, result["where_ordinary"])
        assert result["max_ordinary"] == 0, (arm, result["where_ordinary"])
        if arm in ("adalora", "increlora", "triadapt-linear", "alora"):
            assert result["event_steps"], arm  # the window holds rank events
        if arm == "adalora":  # the final mask at step 18 (1-based), re-applied at every step after it
            assert result["event_steps"][-1] == 18
            after = [s for s in result["ordinary_steps"] if s > 18]
            assert after == [19, 21, 22, 23] and all(result["per_step"][s - 1] == 0 for s in after)
        # log steps without a rank event read the losses once (and the extra loss, when logged)
        for step in (10, 20):
            if step not in result["event_steps"]:
                assert result["per_step"][step - 1] <= 2, (arm, result["per_step"])


def test_a_sync_in_a_method_hook_is_counted(tiny_glue_dir, tmp_path, monkeypatch):
    """The counter is not blind: a hook that reads a parameter every step shows as 1 per step."""
    from adarank.methods.lora import LoRA

    def after_optimizer_step(self, ctx):
        float(next(p for p in ctx.model.parameters() if p.requires_grad).sum())

    monkeypatch.setattr(LoRA, "after_optimizer_step", after_optimizer_step)
    result = measure_arm("lora", tiny_glue_dir, tmp_path, extra=["train.max_steps=6"])
    assert result["max_ordinary"] == 1
    assert result["where_ordinary"][0][1:3] == ["read", "item/bool/float/int"]
    assert "test_sync_count.py" in result["where_ordinary"][0][3]


def test_ordinary_steps_leave_out_log_eval_event_and_checkpoint_steps():
    assert ordinary_steps(12, 5, 6, event_steps=[2], checkpoint_steps=[8]) == [2, 4, 7, 9, 11]
