"""LightningModules wrapping CLIP."""

from __future__ import annotations

import torch
from pytorch_lightning import LightningModule

from vlm_eff.models import ImageEncoder


class ImageEncoderModule(LightningModule):
    """Runs CLIP's image path on each test batch: what profile.py times."""

    def __init__(self, encoder: ImageEncoder, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.encoder = encoder.to(dtype)
        self.input_dtype = dtype

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        (pixel_values,) = batch  # [B, 3, H, W]
        return self.encoder(pixel_values.to(self.input_dtype))  # [B, P]
