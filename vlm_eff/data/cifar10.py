"""CIFAR-10 and any class-per-folder image set, decoded once into a uint8 cache.

`root` may be: the official `cifar-10-batches-py` folder (or a folder holding it), an ImageFolder
tree (`<root>/{train,test}/<class>/*.jpg`, or one holding such a tree), or a `.tar.gz` of either,
extracted once into the cache. When `root` is missing and `download` is set, the official archive
is fetched from `url` and checked against its MD5 before use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from vlm_eff.atomic import atomic_target, replace_atomically
from vlm_eff.data.loading import ResumableLoader, default_workers, evaluation_sampler
from vlm_eff.data.preprocess import ImagePreprocess, NormalizeBatch, to_chw
from vlm_eff.errors import ConfigError

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, md5: str, target: Path) -> Path:
    """Fetch `url` to `target` (atomically), verifying its MD5."""
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s", url)
    with atomic_target(target) as tmp:
        with open(tmp, "wb") as f, urllib.request.urlopen(url, timeout=30) as response:
            shutil.copyfileobj(response, f)
        actual = md5sum(tmp)
        if actual != md5:
            raise ConfigError(f"download of {url} is corrupt: md5 {actual}, expected {md5}")
    return target


def extract(archive: Path, cache_dir: Path) -> Path:
    """Extract `archive` once into `cache_dir/extracted/<name>-<stamp>/`; returns that folder."""
    stat = archive.stat()
    stamp = hashlib.sha1(f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    target = cache_dir / "extracted" / f"{archive.name.split('.')[0]}-{stamp}"
    if not target.is_dir():
        log.info("extracting %s to %s", archive, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            try:
                os.replace(tmp, target)
            except OSError:
                if not target.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # a job running beside this one extracted it first
        except (tarfile.TarError, EOFError, zlib.error) as error:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ConfigError(f"{archive} is not a readable .tar.gz archive ({type(error).__name__}: "
                              f"{str(error).splitlines()[0]}); give the dataset folder or an intact archive") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def find_layout(folder: Path) -> tuple[str, Path]:
    """('batches', dir) for the official python batches, ('imagefolder', dir) for split folders."""
    for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        if (candidate / "batches.meta").is_file():
            return "batches", candidate
        if (candidate / "test").is_dir() or (candidate / "train").is_dir():
            return "imagefolder", candidate
    raise ConfigError(
        f"data.root={folder} holds neither cifar-10-batches-py files nor <split>/<class>/<image> folders"
    )


def read_batches(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The official python batches -> images [N, 32, 32, 3] uint8, labels [N], class names."""
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images.append(batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # [n, 32, 32, 3]
        labels.extend(batch[b"labels"])
    with open(folder / "batches.meta", "rb") as f:
        classes = [c.decode() for c in pickle.load(f, encoding="bytes")[b"label_names"]]
    return np.concatenate(images), np.asarray(labels, dtype=np.int64), classes


def read_image(path: Path) -> np.ndarray:
    """One image file as uint8 RGB [H, W, 3]; a file that is no image is a one-line error naming it."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise ConfigError(f"cannot read image {path}: {error}") from None


def read_imagefolder(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`<folder>/<split>/<class>/<image>` -> images [N, H, W, 3] uint8 (all one size), labels, classes."""
    split_dir = folder / split
    if not split_dir.is_dir():
        raise ConfigError(f"no {split!r} split in {folder}: expected {split_dir}/<class>/<image>")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            images.append(read_image(path))
            labels.append(label)
    if not images:
        raise ConfigError(f"no images under {split_dir}")
    if len({image.shape for image in images}) > 1:
        raise ConfigError(f"images under {split_dir} differ in size; resize them to one size first")
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def load_split(root: Path, split: str, cache_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode `split` of the dataset at `root` once; later calls read the uint8 cache."""
    folder = extract(root, cache_dir) if root.is_file() else root
    layout, folder = find_layout(folder)
    key = hashlib.sha1(f"{folder.resolve()}:{split}".encode()).hexdigest()[:12]
    cached = cache_dir / "decoded" / f"{folder.name}-{split}-{key}.npz"
    if cached.is_file():
        with np.load(cached) as data:
            return data["images"], data["labels"], list(data["classes"])
    images, labels, classes = (read_batches if layout == "batches" else read_imagefolder)(folder, split)
    replace_atomically(cached, lambda f: np.savez(f, images=images, labels=labels, classes=np.asarray(classes)))
    return images, labels, classes


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a seeded subset of `size` with classes as equal as possible (in original order)."""
    classes = np.unique(labels)
    if not 0 < size <= len(labels):
        raise ConfigError(f"data.subset={size} must be in 1..{len(labels)}")
    rng = np.random.default_rng(seed)
    per_class = [size // len(classes) + (i < size % len(classes)) for i in range(len(classes))]
    chosen = []
    for c, n in zip(classes, per_class):
        members = np.flatnonzero(labels == c)
        chosen.append(rng.choice(members, size=min(n, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


class ImageArrayDataset(Dataset):
    """uint8 images [N, H, W, 3] + labels -> (uint8 pixels [3, S, S] as `preprocess.resize` leaves them,
    label); the loader's `NormalizeBatch` finishes the preprocessing a batch at a time. Without
    augmentation the images come resized already (`resized_images`); with it (random crop with 4 px of
    padding, horizontal flip, drawn from the item's own seed when it comes as `(index, seed)`:
    `ResumableSampler`), each is augmented, then resized."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, preprocess: ImagePreprocess, augment: bool = False):
        self.images, self.labels, self.preprocess, self.augment = images, labels, preprocess, augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int | tuple[int, int]):
        index, seed = item if isinstance(item, tuple) else (item, None)
        image = self.images[index]  # [H, W, 3]
        if self.augment:
            image = random_crop_flip(image, np.random.default_rng(seed))
        if self.preprocess.resizes(*image.shape[:2]):
            image = self.preprocess.resize(image)  # [S, S, 3]
        return to_chw(image), int(self.labels[index])


def resized_images(images: np.ndarray, preprocess: ImagePreprocess, cache_dir: Path) -> np.ndarray:
    """`images` [N, H, W, 3] as `preprocess.resize` leaves them, uint8 [N, S, S, 3]: computed once per set
    of images and resolution, then read from the cache (memory-mapped)."""
    if not preprocess.resizes(*images.shape[1:3]):
        return images
    digest = hashlib.sha1(np.ascontiguousarray(images).data)
    digest.update(json.dumps(preprocess.to_config(), sort_keys=True).encode())
    path = cache_dir / "resized" / f"{len(images)}x{preprocess.output_size}-{digest.hexdigest()[:16]}.npy"
    if not path.is_file():
        log.info("resizing %d images to %d px once (cached in %s)", len(images), preprocess.output_size, path)
        with atomic_target(path, suffix=".npy") as tmp:
            size = preprocess.output_size
            resized = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(images), size, size, 3))
            for i, image in enumerate(images):  # one image at a time: never the whole set in memory
                resized[i] = preprocess.resize(image)
            resized.flush()
            del resized
    return np.load(path, mmap_mode="r")


def random_crop_flip(image: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """A random crop of the image padded by `pad` pixels (reflected), flipped horizontally half the time."""
    height, width, _ = image.shape
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    top, left = rng.integers(0, 2 * pad + 1, size=2)
    image = padded[top : top + height, left : left + width]
    return image[:, ::-1] if rng.random() < 0.5 else image


class ImageDataModule(LightningDataModule):
    """The loaders of a data module with `train_set` / `val_set` / `test_set` (those it has), `batch_size`,
    `num_workers` and `seed`: shuffled, full training batches that resume exactly (`ResumableLoader`);
    the others in order."""

    batch_size: int
    num_workers: int | None  # None: `default_workers()`
    seed: int
    preprocess: ImagePreprocess

    pin_memory: bool = False  # the jobs set it on CUDA (Lightning's copies to the GPU are non-blocking)

    def _options(self) -> dict:
        workers = default_workers() if self.num_workers is None else self.num_workers
        # a private generator: a loader's worker seeds are not drawn from the global random state, which a
        # resumed run restores from its checkpoint (`FineTuneModule`) and must find where it was left
        return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": self.pin_memory,
                "collate_fn": NormalizeBatch(self.preprocess), "generator": torch.Generator().manual_seed(self.seed)}

    def _loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, sampler=evaluation_sampler(dataset), **self._options())

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(self.train_set, self.batch_size, self.seed, **self._options())

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)


class ImageClassificationDataModule(ImageDataModule):
    """Test split for zero-shot evaluation; train (augmented) and a held-out validation part of the
    train split for fine-tuning. `class_names` overrides the names found in the data."""

    def __init__(self, root: str | None, preprocess: ImagePreprocess, batch_size: int = 256, num_workers: int | None = None,
                 subset: int | None = None, seed: int = 0, cache_dir: str = "~/.cache/vlm-eff",
                 class_names: list[str] | None = None, download: bool = False, url: str = CIFAR10_URL,
                 md5: str = CIFAR10_MD5, val_size: int = 5000, shots: int | None = None,
                 train_size: int | None = None, **unused):
        super().__init__()
        self.cache_dir = Path(cache_dir).expanduser()
        self.root = self.resolve_root(root, download, url, md5)
        self.preprocess, self.batch_size, self.num_workers = preprocess, batch_size, num_workers
        self.subset, self.seed, self.val_size, self.shots, self.train_size = subset, seed, val_size, shots, train_size
        self._class_names = list(class_names) if class_names else None
        self.class_names: list[str] = []

    def resolve_root(self, root: str | None, download_missing: bool, url: str, md5: str) -> Path:
        if root and Path(root).expanduser().exists():
            return Path(root).expanduser()
        if download_missing:
            archive = self.cache_dir / "downloads" / Path(url).name
            if not (archive.is_file() and md5sum(archive) == md5):
                try:
                    download(url, md5, archive)
                except OSError as error:
                    raise ConfigError(
                        f"data.root={root} does not exist and {url} cannot be fetched ({error}); "
                        f"set data.root to the dataset (a folder or its .tar.gz)"
                    ) from None
            return archive
        raise ConfigError(f"data.root={root} does not exist; set it to the dataset (a folder or its .tar.gz)")

    def _names(self, found: list[str]) -> list[str]:
        names = self._class_names or found
        if len(names) != len(found):
            raise ConfigError(f"data.class_names has {len(names)} names but the data has {len(found)} classes")
        return [name.replace("_", " ") for name in names]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "test"):
            images, labels, found = load_split(self.root, "test", self.cache_dir)
            if self.subset:
                keep = stratified_subset(labels, self.subset, self.seed)
                images, labels = images[keep], labels[keep]
            self.test_set = ImageArrayDataset(resized_images(images, self.preprocess, self.cache_dir), labels,
                                              self.preprocess)
            self.class_names = self._names(found)
        if stage in (None, "fit", "validate"):
            images, labels, found = load_split(self.root, "train", self.cache_dir)
            order = np.random.default_rng(self.seed).permutation(len(labels))
            val, train = order[: self.val_size], order[self.val_size :]
            if self.shots:
                per_class = stratified_subset(labels[train], self.shots * len(found), self.seed)
                train = train[per_class]
            if self.train_size is not None:  # the first of a seeded permutation: chosen without reading a label
                if self.shots or not 1 <= self.train_size <= len(train):
                    raise ConfigError(f"data.train_size={self.train_size} must be in 1..{len(train)} (the train split "
                                      f"less data.val_size) and cannot be combined with data.shots")
                train = np.sort(train[: self.train_size])
            self.train_set = ImageArrayDataset(images[train], labels[train], self.preprocess, augment=True)
            self.val_set = ImageArrayDataset(resized_images(images[np.sort(val)], self.preprocess, self.cache_dir),
                                             labels[np.sort(val)], self.preprocess)
            self.class_names = self._names(found)
