"""Unlabelled images for label-free training (`objective=distill`): every image file under `root`, in any
folder layout (or a `.tar.gz` of one, extracted once into the cache). Items are `(pixels,)`: there is
no label to read, and no class names (so no zero-shot test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from vlm_eff.data.cifar10 import IMAGE_SUFFIXES, ImageDataModule, extract, random_crop_flip, read_image
from vlm_eff.data.preprocess import ImagePreprocess
from vlm_eff.errors import ConfigError


class ImageFiles(Dataset):
    """Image paths -> (preprocessed pixels [3, S, S],); optional augmentation (random crop with 4 px
    of padding, horizontal flip). A file that is no image is a one-line error naming it."""

    def __init__(self, paths: list[Path], preprocess: ImagePreprocess, augment: bool = False):
        self.paths, self.preprocess, self.augment = paths, preprocess, augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        pixels = read_image(self.paths[index])  # [H, W, 3]
        return (self.preprocess(random_crop_flip(pixels) if self.augment else pixels),)


class UnlabeledImagesDataModule(ImageDataModule):
    """Train and validation images, both drawn (seeded) from every image under `root`; `max_images`
    caps the training part."""

    def __init__(self, root: str | None, preprocess: ImagePreprocess, batch_size: int = 128, num_workers: int = 0,
                 max_images: int | None = None, val_size: int = 500, seed: int = 0,
                 cache_dir: str = "~/.cache/vlm-eff", augment: bool = True, **unused):
        super().__init__()
        if max_images is not None and max_images < 1 or val_size < 0:
            raise ConfigError(f"data.max_images={max_images} must be >= 1 (or null) and data.val_size={val_size} >= 0")
        if not root or not Path(root).expanduser().exists():
            raise ConfigError(f"data.root={root} does not exist; set it to a folder of images (any layout) or its .tar.gz")
        self.root, self.cache_dir = Path(root).expanduser(), Path(cache_dir).expanduser()
        self.preprocess, self.batch_size, self.num_workers = preprocess, batch_size, num_workers
        self.max_images, self.val_size, self.seed, self.augment = max_images, val_size, seed, augment
        self.class_names: list[str] = []  # none: these images have no labels

    def setup(self, stage: str | None = None) -> None:
        if stage == "test":
            raise ConfigError(f"data.root={self.root} holds unlabelled images: there is no test split to evaluate")
        folder = extract(self.root, self.cache_dir) if self.root.is_file() else self.root
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if len(paths) <= self.val_size:
            raise ConfigError(f"data.root={self.root} has {len(paths)} images ({', '.join(IMAGE_SUFFIXES)}); "
                              f"it needs more than data.val_size={self.val_size}")
        order = np.random.default_rng(self.seed).permutation(len(paths))
        val, train = order[: self.val_size], order[self.val_size :][: self.max_images]
        self.train_set = ImageFiles([paths[i] for i in sorted(train)], self.preprocess, augment=self.augment)
        self.val_set = ImageFiles([paths[i] for i in sorted(val)], self.preprocess)
