"""Write the project's two CIFAR-10 datasets to files, for the protocols that read files:

    python -m vlm_eff.data.write cifar10_vqa --archive ../shared/data/cifar10-jpeg.tar.gz --out DIR --questions 3000
    python evaluate.py protocol=vqa data=vqa data.root=DIR data.questions=DIR/questions.jsonl model=...

    python -m vlm_eff.data.write cifar10_captions ../shared/data/cifar10-jpeg.tar.gz outputs/cifar10_captions.csv
    python evaluate.py protocol=retrieval data=captions data.root=../shared/data/cifar10-jpeg.tar.gz \\
        data.captions=outputs/cifar10_captions.csv model=tiny_clip_cifar10

cifar10_vqa: the 2x2 mosaic VQA set (position / presence / count questions, one-word answers, known chance:
10 % / 50 % / 20 %; vlm_eff/data/cifar10_vqa.py) as PNGs plus LLaVA's question JSONL; without --out it is built
once into the cache (as data=cifar10_vqa does) and its folder printed.
cifar10_captions: a caption CSV (image,caption) for the CIFAR-10 test images, a SELF-TEST of the retrieval protocol,
not a benchmark: the CLIP paper's CIFAR-10 templates filled with each image's class name, so a caption says nothing
about its image beyond the class; `--per-class` images of each class get `--captions` distinct templates each, all
texts in a class distinct."""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
import tarfile
from pathlib import Path

from omegaconf import OmegaConf

from vlm_eff.atomic import write_atomic
from vlm_eff.cli import CONF_DIR
from vlm_eff.errors import ConfigError

TEMPLATES = CONF_DIR / "prompts" / "cifar10_ensemble.yaml"


def write_vqa(args: argparse.Namespace) -> str:
    """The mosaic VQA set to args.out (or the cache); its counts per kind and answer, with chance."""
    from vlm_eff.data.cifar10_vqa import (
        CHANCE,
        MANIFEST,
        QUESTION_FILE,
        build_set,
        default_cache_dir,
        ensure_test_set,
        summary,
        write_set,
    )

    cache_dir = args.cache_dir.expanduser() if args.cache_dir else default_cache_dir()
    if args.out is None:
        out = ensure_test_set(args.archive, cache_dir, args.questions, args.seed, split=args.split)
        counts = json.loads((out / MANIFEST).read_text())
    else:
        from vlm_eff.data.cifar10 import load_split

        if not args.archive.expanduser().exists():
            raise ConfigError(f"--archive {args.archive} does not exist")
        images, labels, classes = load_split(args.archive.expanduser(), args.split, cache_dir)
        mosaics, questions = build_set(images, labels, classes, args.questions, args.seed)
        manifest = {"source": str(args.archive.expanduser().resolve()), "split": args.split, "seed": args.seed}
        out = write_set(args.out, mosaics, questions, manifest)
        counts = summary(questions)
    lines = [f"{out}: {sum(counts['kinds'].values())} questions"]
    for kind, n in counts["kinds"].items():
        answers = " ".join(f"{answer}={k}" for answer, k in counts["answers"][kind].items())
        lines.append(f"  {kind:<9} {n:>6}  (chance {CHANCE[kind]:.0%})  {answers}")
    lines.append(f"use: data=vqa data.root={out} data.questions={out / QUESTION_FILE}")
    return "\n".join(lines)


def cifar_test_images(root: Path) -> list[str]:
    """Paths of the test images (`.../test/<class>/<image>`), relative to `root` (a folder or a .tar.gz)."""
    if root.is_file():
        with tarfile.open(root) as tar:
            names = [member.name for member in tar.getmembers() if member.isfile()]
    else:
        names = [str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()]
    return sorted(name for name in names if "/test/" in f"/{name}" and name.lower().endswith((".jpg", ".png")))


def write_captions(args: argparse.Namespace) -> str:
    """The caption CSV to args.out; what was written."""
    if not args.root.exists():
        raise ConfigError(f"{args.root} does not exist: give the CIFAR-10 image tree or its .tar.gz")
    templates = list(OmegaConf.load(TEMPLATES).templates)
    if args.per_class * args.captions > len(templates):
        raise ConfigError(f"--per-class x --captions must be at most {len(templates)} (the templates), so that no "
                          "two images share a caption")
    by_class: dict[str, list[str]] = {}
    for name in cifar_test_images(args.root):
        by_class.setdefault(Path(name).parent.name, []).append(name)
    if not by_class:
        raise ConfigError(f"no test/<class>/<image> files in {args.root}")
    rng, rows = random.Random(args.seed), io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["image", "caption"])
    for label, images in sorted(by_class.items()):
        chosen, texts = rng.sample(images, args.per_class), rng.sample(templates, args.per_class * args.captions)
        for i, image in enumerate(chosen):
            for template in texts[i * args.captions : (i + 1) * args.captions]:
                writer.writerow([image, template.format(label)])
    write_atomic(args.out, rows.getvalue())
    return f"wrote {args.out}: {args.per_class * len(by_class)} images x {args.captions} captions (a self-test)"


def main(argv: list[str] | None = None) -> None:
    from vlm_eff.data.cifar10_vqa import DEFAULT_QUESTIONS, DEFAULT_SEED

    parser = argparse.ArgumentParser(prog="python -m vlm_eff.data.write", description=__doc__.split("\n\n")[0])
    sets = parser.add_subparsers(dest="dataset", required=True)
    vqa = sets.add_parser("cifar10_vqa", help="the 2x2 mosaic VQA set: PNGs + LLaVA's question JSONL")
    vqa.add_argument("--archive", type=Path, required=True,
                     help="CIFAR-10: the .tar.gz of the ImageFolder tree (or the official batches), or the folder")
    vqa.add_argument("--out", type=Path, default=None,
                     help="the folder to write (new, empty, or an earlier set, which is replaced); default: built "
                          "once into the cache")
    vqa.add_argument("--questions", type=int, default=DEFAULT_QUESTIONS, help=f"default {DEFAULT_QUESTIONS}")
    vqa.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"default {DEFAULT_SEED}")
    vqa.add_argument("--split", choices=("test", "train"), default="test",
                     help="the split the images come from (default test; evaluate on test only)")
    vqa.add_argument("--cache-dir", type=Path, default=None,
                     help="extraction / decode cache (default $VLM_EFF_CACHE or ~/.cache/vlm-eff)")
    vqa.set_defaults(write=write_vqa)
    captions = sets.add_parser("cifar10_captions", help="a caption CSV for the test images (a retrieval self-test)")
    captions.add_argument("root", type=Path, help="the CIFAR-10 image tree (test/<class>/<image>) or its .tar.gz")
    captions.add_argument("out", type=Path, help="the CSV to write")
    captions.add_argument("--per-class", type=int, default=3, help="images per class (default 3)")
    captions.add_argument("--captions", type=int, default=5, help="captions per image (default 5)")
    captions.add_argument("--seed", type=int, default=0)
    captions.set_defaults(write=write_captions)
    args = parser.parse_args(argv)
    try:
        print(args.write(args))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
