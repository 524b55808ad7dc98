"""Write a caption CSV (image,caption) for the shipped CIFAR-10 test images, to try the retrieval protocol
on data that is here: a SELF-TEST, not a benchmark. The captions are the CLIP paper's CIFAR-10 templates
filled with each image's class name, so a caption says nothing about its image beyond the class;
`--per-class` images of each class get `--captions` distinct templates each, all texts in a class distinct.

    python scripts/cifar10_captions.py ../shared/data/cifar10-jpeg.tar.gz outputs/cifar10_captions.csv
    python evaluate.py protocol=retrieval data=captions data.root=../shared/data/cifar10-jpeg.tar.gz \\
        data.captions=outputs/cifar10_captions.csv model=tiny_clip_cifar10
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import tarfile
from pathlib import Path

from omegaconf import OmegaConf

from vlm_eff.atomic import write_atomic

TEMPLATES = Path(__file__).resolve().parents[1] / "conf" / "prompts" / "cifar10_ensemble.yaml"


def test_images(root: Path) -> list[str]:
    """Paths of the test images (`.../test/<class>/<image>`), relative to `root` (a folder or a .tar.gz)."""
    if root.is_file():
        with tarfile.open(root) as tar:
            names = [member.name for member in tar.getmembers() if member.isfile()]
    else:
        names = [str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()]
    return sorted(name for name in names if "/test/" in f"/{name}" and name.lower().endswith((".jpg", ".png")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the CIFAR-10 image tree (test/<class>/<image>) or its .tar.gz")
    parser.add_argument("out", type=Path, help="the CSV to write")
    parser.add_argument("--per-class", type=int, default=3, help="images per class (default 3)")
    parser.add_argument("--captions", type=int, default=5, help="captions per image (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    templates = list(OmegaConf.load(TEMPLATES).templates)
    if args.per_class * args.captions > len(templates):
        parser.error(f"--per-class x --captions must be at most {len(templates)} (the templates), so that no two "
                     "images share a caption")
    by_class: dict[str, list[str]] = {}
    for name in test_images(args.root):
        by_class.setdefault(Path(name).parent.name, []).append(name)
    if not by_class:
        parser.error(f"no test/<class>/<image> files in {args.root}")
    rng, rows = random.Random(args.seed), io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["image", "caption"])
    for label, images in sorted(by_class.items()):
        chosen, texts = rng.sample(images, args.per_class), rng.sample(templates, args.per_class * args.captions)
        for i, image in enumerate(chosen):
            for template in texts[i * args.captions : (i + 1) * args.captions]:
                writer.writerow([image, template.format(label)])
    write_atomic(args.out, rows.getvalue())
    print(f"wrote {args.out}: {args.per_class * len(by_class)} images x {args.captions} captions (a self-test)")


if __name__ == "__main__":
    main()
