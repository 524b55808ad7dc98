"""Image-caption pairs for retrieval (`protocol=retrieval data=captions`), read from either:

- a Karpathy-split JSON (`dataset_flickr30k.json`, `dataset_coco.json`): `images[]` with `split`,
  `filename` (and COCO's `filepath`), `sentences[].raw`; only the images of `split` are used;
- a CSV with the columns `image,caption`, one row per caption (an image repeats on several rows).

Image paths are relative to `root` (a folder, or a `.tar.gz` extracted once into the cache). Items
are `(pixels, image index)`; `captions` and `caption_image` (the index of each caption's image) give
the text side.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from vlm_eff.data.cifar10 import ImageDataModule, extract
from vlm_eff.data.images import ImageFiles
from vlm_eff.data.preprocess import ImagePreprocess
from vlm_eff.errors import ConfigError


def read_karpathy(path: Path, split: str) -> dict[str, list[str]]:
    """Image path (relative) -> its captions, for the images of `split` in a Karpathy-split JSON."""
    try:
        images = json.loads(path.read_text(encoding="utf-8"))["images"]
        pairs = {}
        for image in images:
            if image["split"] == split:
                relative = os.path.normpath(Path(image.get("filepath", "")) / image["filename"])
                pairs.setdefault(relative, []).extend(sentence["raw"] for sentence in image["sentences"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ConfigError(f"data.captions={path} is not a Karpathy-split JSON ({type(error).__name__}: {error}); "
                          "expected images[] with split, filename and sentences[].raw") from None
    return pairs


def read_caption_csv(path: Path) -> dict[str, list[str]]:
    """Image path (relative) -> its captions, from a CSV with the columns image,caption."""
    pairs: dict[str, list[str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"image", "caption"} <= set(reader.fieldnames or ()):
            raise ConfigError(f"data.captions={path} needs the CSV columns image,caption; it has {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            if not row["image"] or not row["caption"]:
                raise ConfigError(f"data.captions={path} line {line}: empty image or caption")
            pairs.setdefault(os.path.normpath(row["image"]), []).append(row["caption"])
    return pairs


def read_captions(path: str | Path, split: str) -> dict[str, list[str]]:
    """The caption file as image path -> captions (`split` applies to a Karpathy JSON; a CSV is one split)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.captions={path} is not a file; give a Karpathy-split .json or an image,caption .csv")
    karpathy = path.suffix.lower() == ".json"
    pairs = read_karpathy(path, split) if karpathy else read_caption_csv(path)
    if not pairs:
        raise ConfigError(f"data.captions={path} has no captions" + (f" in split {split!r}" if karpathy else ""))
    bare = [image for image, captions in pairs.items() if not captions]
    if bare:
        raise ConfigError(f"data.captions={path}: {len(bare)} image(s) without a caption, first {bare[0]}; every image "
                          "needs one (it could never be found)")
    return pairs


class CaptionsDataModule(ImageDataModule):
    """The images and captions of one split for retrieval; evaluation only."""

    def __init__(self, root: str | None, captions: str | None, preprocess: ImagePreprocess, split: str = "test",
                 batch_size: int = 256, num_workers: int | None = None, cache_dir: str = "~/.cache/vlm-eff", seed: int = 0,
                 **unused):
        super().__init__()
        if not captions:
            raise ConfigError("data=captions needs data.captions=<a Karpathy-split .json or an image,caption .csv>")
        if not root or not Path(root).expanduser().exists():
            raise ConfigError(f"data.root={root} does not exist; set it to the folder the caption file's image paths "
                              "are relative to (or its .tar.gz)")
        self.root, self.captions_file = Path(root).expanduser(), Path(captions).expanduser()
        self.cache_dir, self.split = Path(cache_dir).expanduser(), split
        self.preprocess, self.batch_size, self.num_workers, self.seed = preprocess, batch_size, num_workers, seed
        self.class_names: list[str] = []  # retrieval has no classes
        self.captions: list[str] = []
        self.caption_image: list[int] = []

    def setup(self, stage: str | None = None) -> None:
        if stage != "test":
            raise ConfigError("data=captions is for retrieval with evaluate.py; it has no training split")
        pairs = read_captions(self.captions_file, self.split)
        folder = extract(self.root, self.cache_dir) if self.root.is_file() else self.root
        paths = [folder / relative for relative in pairs]
        missing = [path for path in paths if not path.is_file()]
        if missing:
            raise ConfigError(f"data.captions={self.captions_file} names {len(missing)} image(s) missing under "
                              f"data.root={self.root}, first {missing[0]}")
        self.captions = [caption for captions in pairs.values() for caption in captions]
        self.caption_image = [index for index, captions in enumerate(pairs.values()) for _ in captions]
        self.test_set = ImageFiles(paths, self.preprocess, labels=list(range(len(paths))))
