"""CLIP image preprocessing that equals `CLIPImageProcessor`: Pillow bicubic resize of the shortest
edge (torch's bicubic differs), center crop, then rescale and CLIP mean/std normalisation in torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipPreprocess:
    """uint8 HWC image (array or PIL) -> normalised float tensor [3, crop, crop]."""

    def __init__(self, shortest_edge: int = 224, crop_size: int = 224, mean=CLIP_MEAN, std=CLIP_STD):
        self.shortest_edge, self.crop_size = shortest_edge, crop_size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    @classmethod
    def from_config(cls, path: Path) -> "ClipPreprocess":
        """From a `preprocessor_config.json` (a file, or the directory holding it)."""
        path = Path(path)
        config = json.loads((path / "preprocessor_config.json" if path.is_dir() else path).read_text())
        size, crop = config["size"], config["crop_size"]
        shortest = size["shortest_edge"] if isinstance(size, dict) else size
        crop = crop["height"] if isinstance(crop, dict) else crop
        return cls(shortest, crop, config["image_mean"], config["image_std"])

    def __call__(self, image) -> torch.Tensor:
        image = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        image = image.convert("RGB")
        width, height = image.size
        short, long = min(width, height), max(width, height)
        if short != self.shortest_edge:
            new_long = int(self.shortest_edge * long / short)
            size = (self.shortest_edge, new_long) if width <= height else (new_long, self.shortest_edge)
            image = image.resize(size, Image.BICUBIC)
            width, height = image.size
        top, left = (height - self.crop_size) // 2, (width - self.crop_size) // 2
        if (width, height) != (self.crop_size, self.crop_size):
            image = image.crop((left, top, left + self.crop_size, top + self.crop_size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)  # [3, H, W]
        return (pixels.float() / 255 - self.mean) / self.std
