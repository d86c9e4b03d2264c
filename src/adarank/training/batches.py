"""The training batches: a DataLoader set up for the device, epoch by epoch, in the same order
whatever the number of loader workers.

``train.num_workers``: ``auto`` = 2 on CUDA (collating the next batches while the GPU computes),
0 on a CPU (the workers would take cores from the training itself); an integer sets it. With
workers they are persistent (started once, not at every epoch) and on CUDA the batches come in
pinned memory, so that the loop's ``.to(device, non_blocking=True)`` copies asynchronously
(from pageable memory that copy would wait for the GPU).

Same batches with and without workers. The order comes from the loader's ``generator`` (the
run's seed): each epoch torch draws the workers' base seed from it, then the permutation. With
persistent workers torch draws that seed only for the first epoch, so :meth:`TrainBatches.epoch`
draws it for the later ones, keeping the permutations, hence every batch and every number of
the run, equal to ``num_workers=0`` (tests/test_gpu_readiness.py).
"""

from __future__ import annotations

import torch

AUTO_CUDA_WORKERS = 2


def loader_workers(setting, device: torch.device) -> int:
    """``train.num_workers``: ``auto`` -> 2 on CUDA, 0 elsewhere; an integer as given."""
    if str(setting) == "auto":
        return AUTO_CUDA_WORKERS if device.type == "cuda" else 0
    return int(setting)


class TrainBatches:
    """The run's training DataLoader (shuffled by ``generator``) and its epochs."""

    def __init__(self, dataset, batch_size: int, generator: torch.Generator, collate, device: torch.device,
                 num_workers="auto"):
        workers = loader_workers(num_workers, device)
        self.generator = generator
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=collate,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=device.type == "cuda",
        )
        self._epochs = 0

    def epoch(self):
        """An iterator over the next epoch's batches."""
        if self._epochs and self.loader.persistent_workers:
            # what a fresh iterator draws first (the workers' base seed): see the module docstring
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        self._epochs += 1
        return iter(self.loader)
