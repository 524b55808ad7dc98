"""Training batches that a killed job can resume exactly, mid-epoch.

Epoch e visits the items in a permutation seeded by (seed, e), and each visit carries its own
augmentation seed, so neither depends on a global random state. The loader's `state_dict` (which
Lightning stores in its checkpoints and restores on resume) records how many batches of the epoch
were handed out; a resumed run skips exactly those, and sees the batches an uninterrupted run would.
Under DDP each process takes its own share of the permutation (Lightning's sampler injection is off:
`conf/trainer/default.yaml`), and evaluation loaders get a `DistributedSampler`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


def default_workers() -> int:
    """Loader worker processes when `data.num_workers` is null: half the CPU cores (the rest run the model), at most 8."""
    return min(8, (os.cpu_count() or 1) // 2)


def process_share() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) outside distributed training."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def evaluation_sampler(dataset: Dataset) -> Sampler | None:
    """In order; under DDP, each process's share (Lightning would inject this, but its injection is off)."""
    return DistributedSampler(dataset, shuffle=False) if process_share()[1] > 1 else None


class ResumableSampler(Sampler):
    """Yields `(index, augmentation seed)` for every item (this process's share of them under DDP), in a
    permutation seeded by (seed, `epoch`), passing over the first `skip` items; `ResumableLoader` sets both."""

    def __init__(self, n_items: int, seed: int):
        self.n_items, self.seed = n_items, seed
        self.epoch = self.skip = 0

    def __len__(self) -> int:
        return self.n_items // process_share()[1]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n_items, generator=generator)  # [N]
        seeds = torch.randint(2**31, (self.n_items,), generator=generator)  # [N]
        rank, world = process_share()
        share = slice(rank, len(self) * world, world)  # equal shares; the last N mod world items sit this epoch out
        yield from zip(order[share][self.skip:].tolist(), seeds[share][self.skip:].tolist())


class ResumableLoader(DataLoader):
    """A shuffling loader of full batches over `ResumableSampler`, with Lightning's `state_dict` /
    `load_state_dict` interface: the epoch and the batches of it already handed out. The loader counts its
    own epochs (a pass that ran to its end), not Lightning's: a run that `max_steps` stopped mid-epoch and a
    rerun extends goes on with the rest of that epoch, as one longer run would."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, **options):
        super().__init__(dataset, batch_size, sampler=ResumableSampler(len(dataset), seed), drop_last=True, **options)
        self.epoch = self.batches_done = 0

    def __iter__(self):
        if self.batches_done >= len(self):  # the last pass ran to its end: the next epoch, whole
            self.epoch, self.batches_done = self.epoch + 1, 0
        self.sampler.epoch, self.sampler.skip = self.epoch, self.batches_done * self.batch_size
        for batch in super().__iter__():
            self.batches_done += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]


class ReseededLoader(DataLoader):
    """A loader of an endless stream seeded by its `seed` attribute (data/cifar10_vqa.TrainingMosaics), with
    Lightning's `state_dict` / `load_state_dict`: the batches handed out. A resumed loader reseeds the stream from
    (`seed`, the batches handed out before), so a resumed run trains on fresh items, not the first run's again."""

    def __init__(self, dataset, seed: int, **options):
        super().__init__(dataset, **options)
        self.base_seed, self.batches = seed, 0
        self.dataset.seed = self.stream_seed()

    def stream_seed(self) -> int:
        return int(np.random.SeedSequence([self.base_seed, self.batches]).generate_state(1)[0])

    def __iter__(self):
        for batch in super().__iter__():
            self.batches += 1
            yield batch

    def state_dict(self) -> dict:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.batches = state["batches"]
        self.dataset.seed = self.stream_seed()
