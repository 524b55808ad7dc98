"""Image preprocessing that equals the checkpoint's own Hugging Face image processor, read from its
`preprocessor_config.json`: Pillow resize (torch's bicubic differs), then rescale and mean/std
normalisation in torch.

    CLIP    (`CLIPImageProcessor`)    resize the shortest edge to `size`, center crop `crop_size`, CLIP mean/std
    SigLIP  (`SiglipImageProcessor`)  resize to a `size` x `size` square (no crop), mean/std 0.5
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

from vlm_eff.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESAMPLE = {2: Image.BILINEAR, 3: Image.BICUBIC}  # PIL codes as Hugging Face stores them


class ImagePreprocess:
    """uint8 HWC image (array or PIL) -> normalised float tensor [3, size, size]: the shortest edge
    resized to `size` and center-cropped to `crop_size`, or (crop_size=None) resized to a square."""

    def __init__(self, size: int = 224, crop_size: int | None = 224, mean=CLIP_MEAN, std=CLIP_STD,
                 resample: int = 3):
        self.size, self.crop_size, self.resample = size, crop_size, resample
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    @property
    def output_size(self) -> int:
        return self.crop_size or self.size

    @classmethod
    def from_config(cls, path: Path) -> "ImagePreprocess":
        """From a `preprocessor_config.json` (a file, or the directory holding it); one-line errors."""
        path = Path(path)
        file = path / "preprocessor_config.json" if path.is_dir() else path
        if not file.is_file():
            raise ConfigError(f"{file} is missing: the model's preprocessing (size, crop, mean/std) is read from it")
        try:
            config = json.loads(file.read_text())
            size = config["size"]
            if "shortest_edge" in size:
                crop = config["crop_size"] if config.get("do_center_crop", True) else None
                crop = crop["height"] if isinstance(crop, dict) else crop
                preprocess = cls(int(size["shortest_edge"]), crop and int(crop), config["image_mean"],
                                 config["image_std"], config.get("resample", 3))
            elif size["height"] == size["width"]:
                preprocess = cls(int(size["height"]), None, config["image_mean"], config["image_std"],
                                 config.get("resample", 3))
            else:
                raise ValueError("non-square size")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"{file} is malformed ({type(error).__name__}: {error}); expected a Hugging Face "
                              "image processor config with size, image_mean and image_std") from None
        if preprocess.resample not in RESAMPLE:
            raise ConfigError(f"{file}: resample={preprocess.resample} is unsupported; allowed: 2 (bilinear), 3 (bicubic)")
        return preprocess

    def at_size(self, image_size: int) -> "ImagePreprocess":
        """The same preprocessing for another input resolution (crop and resize scaled together)."""
        if image_size == self.output_size:
            return self
        size = image_size if self.crop_size is None else round(self.size * image_size / self.crop_size)
        crop = None if self.crop_size is None else image_size
        return ImagePreprocess(size, crop, self.mean.flatten().tolist(), self.std.flatten().tolist(), self.resample)

    def to_config(self) -> dict:
        """The Hugging Face image processor config this preprocessing equals."""
        common = {"do_resize": True, "resample": self.resample, "do_rescale": True, "rescale_factor": 1 / 255,
                  "do_normalize": True, "image_mean": self.mean.flatten().tolist(),
                  "image_std": self.std.flatten().tolist(), "do_convert_rgb": True}
        if self.crop_size is None:
            return {**common, "size": {"height": self.size, "width": self.size},
                    "image_processor_type": "SiglipImageProcessor"}
        return {**common, "size": {"shortest_edge": self.size}, "do_center_crop": True,
                "crop_size": {"height": self.crop_size, "width": self.crop_size},
                "image_processor_type": "CLIPImageProcessor"}

    def resizes(self, height: int, width: int) -> bool:
        """Whether an image of this size is resized or cropped at all (a 32 px CIFAR image at 32 px is not)."""
        return (height, width) != (self.output_size, self.output_size)

    def resize(self, image) -> np.ndarray:
        """The geometric part, exactly as the Hugging Face processor does it (Pillow): uint8 [S, S, 3]."""
        image = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        image = image.convert("RGB")
        resample = RESAMPLE[self.resample]
        width, height = image.size
        if self.crop_size is None:
            if (width, height) != (self.size, self.size):
                image = image.resize((self.size, self.size), resample)
        else:
            short, long = min(width, height), max(width, height)
            if short != self.size:
                new_long = int(self.size * long / short)
                size = (self.size, new_long) if width <= height else (new_long, self.size)
                image = image.resize(size, resample)
                width, height = image.size
            top, left = (height - self.crop_size) // 2, (width - self.crop_size) // 2
            if (width, height) != (self.crop_size, self.crop_size):
                image = image.crop((left, top, left + self.crop_size, top + self.crop_size))
        return np.asarray(image, dtype=np.uint8)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [..., 3, S, S] -> rescaled, mean/std-normalised float32 (a whole batch at once)."""
        return (pixels.float() / 255 - self.mean) / self.std

    def __call__(self, image) -> torch.Tensor:
        pixels = torch.from_numpy(self.resize(image).copy()).permute(2, 0, 1)  # [3, S, S]
        return self.normalize(pixels)


def to_chw(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] (a read-only memory map's rows too: copied) -> uint8 tensor [3, H, W]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


class NormalizeBatch:
    """A loader's `collate_fn`: stacks items whose first field is uint8 pixels [3, S, S] and normalises the
    batch in one operation (per-item work stays at decoding and resizing, which the workers do)."""

    def __init__(self, preprocess: ImagePreprocess):
        self.preprocess = preprocess

    def __call__(self, items: list[tuple]) -> list:
        batch = default_collate(items)
        batch[0] = self.preprocess.normalize(batch[0])  # [B, 3, S, S]
        return batch
