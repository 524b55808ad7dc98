"""LightningDataModules for the `data` config group."""

from vlm_eff.data.synthetic import SyntheticDataModule

__all__ = ["SyntheticDataModule"]
