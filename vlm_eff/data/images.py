"""Image sets read from their files as they load (any sizes, any layout), so nothing is decoded up front:

- `UnlabeledImagesDataModule`: every image under `root` for label-free training (`objective=distill`);
  items `(pixels,)`: there is no label to read, and no class names (so no zero-shot test).
- `ClassFoldersDataModule`: a zero-shot test set as `<root>/<split>/<class>/<image>` (ImageNet's
  validation set as `val/<wnid>/*.JPEG`, ImageNet-V2 / -R / -A), items `(pixels, label)`.

`root` may also be a `.tar.gz` of the folder, extracted once into the cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from vlm_eff.data.cifar10 import (
    IMAGE_SUFFIXES,
    ImageDataModule,
    extract,
    random_crop_flip,
    read_image,
    stratified_subset,
)
from vlm_eff.data.preprocess import ImagePreprocess, to_chw
from vlm_eff.errors import ConfigError


def image_paths(folder: Path) -> list[Path]:
    """Every image file under `folder`, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageFiles(Dataset):
    """Image paths -> (uint8 pixels [3, S, S], resized as the model's processor does,), or (pixels, label)
    given `labels`, decoded and resized as they load (in the loader's workers); optional
    augmentation (random crop with 4 px of padding, horizontal flip). A file that is no image is a
    one-line error naming it."""

    def __init__(self, paths: list[Path], preprocess: ImagePreprocess, augment: bool = False,
                 labels: list[int] | None = None):
        self.paths, self.preprocess, self.augment, self.labels = paths, preprocess, augment, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int | tuple[int, int]):
        index, seed = item if isinstance(item, tuple) else (item, None)  # (index, seed): `ResumableSampler`
        image = read_image(self.paths[index])  # [H, W, 3]
        image = random_crop_flip(image, np.random.default_rng(seed)) if self.augment else image
        pixels = to_chw(self.preprocess.resize(image))  # uint8 [3, S, S]; the loader's `NormalizeBatch` normalises
        return (pixels,) if self.labels is None else (pixels, self.labels[index])


class UnlabeledImagesDataModule(ImageDataModule):
    """Train and validation images, both drawn (seeded) from every image under `root`; `max_images`
    caps the training part."""

    def __init__(self, root: str | None, preprocess: ImagePreprocess, batch_size: int = 128, num_workers: int | None = None,
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
        paths = image_paths(folder)
        if len(paths) <= self.val_size:
            raise ConfigError(f"data.root={self.root} has {len(paths)} images ({', '.join(IMAGE_SUFFIXES)}); "
                              f"it needs more than data.val_size={self.val_size}")
        order = np.random.default_rng(self.seed).permutation(len(paths))
        val, train = order[: self.val_size], order[self.val_size :][: self.max_images]
        self.train_set = ImageFiles([paths[i] for i in sorted(train)], self.preprocess, augment=self.augment)
        self.val_set = ImageFiles([paths[i] for i in sorted(val)], self.preprocess)


class ClassFoldersDataModule(ImageDataModule):
    """A zero-shot test set in class folders, `<root>/<split>/<class>/<image>` or `<root>/<class>/<image>`,
    labels in sorted folder order; `class_names` are the folder names (WordNet ids for ImageNet: the
    prompt set names them). `subset`: a stratified, seeded subset. Evaluation only: no train split."""

    def __init__(self, root: str | None, preprocess: ImagePreprocess, split: str = "val", batch_size: int = 256,
                 num_workers: int | None = None, subset: int | None = None, seed: int = 0,
                 cache_dir: str = "~/.cache/vlm-eff", name: str = "imagenet", **unused):
        super().__init__()
        if not root or not Path(root).expanduser().exists():
            raise ConfigError(f"data.root={root} does not exist; set it to the folder holding {split}/<class>/<image> "
                              "(or the class folders themselves, or its .tar.gz)")
        self.root, self.cache_dir, self.split, self.name = Path(root).expanduser(), Path(cache_dir).expanduser(), split, name
        self.preprocess, self.batch_size, self.num_workers = preprocess, batch_size, num_workers
        self.subset, self.seed = subset, seed
        self.class_names: list[str] = []

    def class_folders(self) -> list[Path]:
        folder = extract(self.root, self.cache_dir) if self.root.is_file() else self.root
        top = folder / self.split if (folder / self.split).is_dir() else folder
        classes = sorted(p for p in top.iterdir() if p.is_dir())
        if not classes:
            raise ConfigError(f"data.root={self.root} has no class folders (expected {self.split}/<class>/<image>)")
        return classes

    def setup(self, stage: str | None = None) -> None:
        if stage != "test":
            raise ConfigError(f"data={self.name} is a test set for evaluate.py; it has no training split")
        paths, labels = [], []
        folders = self.class_folders()
        for label, folder in enumerate(folders):
            found = image_paths(folder)
            paths += found
            labels += [label] * len(found)
        if not paths:
            raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders under {self.root}")
        if self.subset:
            keep = stratified_subset(np.asarray(labels), self.subset, self.seed)
            paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
        self.test_set = ImageFiles(paths, self.preprocess, labels=labels)
        self.class_names = [folder.name.replace("_", " ") for folder in folders]
