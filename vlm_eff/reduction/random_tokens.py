"""`random` (generative VLMs, boundary site, after the projector): a seeded uniform subset of each image's
projected visual tokens, kept in their order: the control every selection must beat (UniPruneBench found it a
strong baseline). One generator per request batch, seeded by `pruning.seed`, drawn image by image."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlm_eff.reduction.base import budget_knobs
from vlm_eff.reduction.boundary import AfterProjector


@dataclass
class RandomPruning(AfterProjector):
    seed: int = 0
    name = "random"
    generator: torch.Generator | None = None

    @classmethod
    def from_config(cls, cfg, layout, config) -> "RandomPruning":
        seed = cfg.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"pruning.seed={seed!r} must be an integer")
        return cls(*budget_knobs(cfg, (None, 64)), seed)

    def label(self) -> str:
        return f"random seed={self.seed}"

    def after_projector(self, images: list) -> list:
        self.generator = torch.Generator().manual_seed(self.seed)  # a request batch draws from a fresh generator
        return super().after_projector(images)

    def pick(self, embeds: torch.Tensor, n: int, b: int) -> torch.Tensor:
        return torch.randperm(len(embeds), generator=self.generator)[:n].sort().values.to(embeds.device)
