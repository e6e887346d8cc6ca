"""Deterministic, resumable training data order.

The training data is one endless stream: epoch e is a permutation of the dataset drawn from
``seed + e``; stream position p is item ``perm_{p // n}[p % n]``. At micro-step k, process r of W
reads positions ``k*B*W + r*B ... + B - 1`` (B = per-process batch size). The random crop / flip /
rotation of position p is drawn from an RNG seeded with ``(seed, p)``. A run's data is therefore a
function of (seed, position) only: resuming at a saved position reproduces the uninterrupted run
exactly, with any number of loader workers.
"""
from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


@contextmanager
def seeded_item_rng(seed: int):
    """Seed python/numpy/torch-CPU RNGs for one item, restoring the caller's states afterwards."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.default_generator.manual_seed(seed)  # CPU only: must not touch accelerator RNGs
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class StreamDataset(Dataset):
    """Maps a stream position to (permuted item, per-position augmentation seed)."""

    def __init__(self, dataset: Dataset, seed: int):
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.dataset = dataset
        self.seed = int(seed)
        self._epoch, self._perm = -1, None

    def __len__(self) -> int:
        return len(self.dataset)

    def index_at(self, position: int) -> int:
        epoch, offset = divmod(int(position), len(self.dataset))
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._perm, self._epoch = torch.randperm(len(self.dataset), generator=generator), epoch
        return int(self._perm[offset])

    def __getitem__(self, position: int):
        item_seed = int(np.random.SeedSequence([self.seed, int(position)]).generate_state(1, np.uint64)[0] >> 1)
        with seeded_item_rng(item_seed):
            return self.dataset[self.index_at(position)]


class StreamPositions(Sampler):
    """Endless stream positions of one process, starting at a global position."""

    def __init__(self, start: int, batch_size: int, rank: int, world_size: int):
        self.start, self.batch_size, self.rank, self.world_size = int(start), batch_size, rank, world_size

    def __iter__(self):
        global_batch = self.batch_size * self.world_size
        if self.start % global_batch:
            raise ValueError(f"stream position {self.start} is not a multiple of the global batch "
                             f"{global_batch} (batch_size x processes)")
        position = self.start
        while True:
            first = position + self.rank * self.batch_size
            yield from range(first, first + self.batch_size)
            position += global_batch


def stream_loader(dataset: Dataset, *, seed: int, start: int, batch_size: int, rank: int,
                  world_size: int, num_workers: int) -> DataLoader:
    """An endless DataLoader over the deterministic stream, from global position ``start``."""
    return DataLoader(
        StreamDataset(dataset, seed),
        batch_size=batch_size,
        sampler=StreamPositions(start, batch_size, rank, world_size),
        num_workers=num_workers,
        persistent_workers=False,
        drop_last=True,
        # the loader draws a worker base seed when iterated: from its own generator, never from the
        # global RNG, whose state is part of the checkpoint (a resumed run creates a new iterator)
        generator=torch.Generator().manual_seed(seed),
    )
