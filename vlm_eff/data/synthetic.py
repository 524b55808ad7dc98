"""Synthetic images for profiling: timing does not depend on pixel values."""

from __future__ import annotations

import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset


class SyntheticDataModule(LightningDataModule):
    """`n_batches` batches of seeded standard-normal pixels [3, image_size, image_size]."""

    def __init__(self, batch_size: int = 8, num_workers: int = 0, image_size: int = 224, n_batches: int = 13,
                 seed: int = 0, **unused):
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.image_size, self.n_batches, self.seed = image_size, n_batches, seed

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        shape = (self.batch_size * self.n_batches, 3, self.image_size, self.image_size)
        self.dataset = TensorDataset(torch.randn(shape, generator=generator))

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, num_workers=self.num_workers)
