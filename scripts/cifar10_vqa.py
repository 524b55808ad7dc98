"""Write a 2x2 CIFAR-10 mosaic VQA set (position / presence / count questions, one-word answers, known
chance: 10 % / 50 % / 20 %) as PNGs plus LLaVA's question JSONL (vlm_eff.data.cifar10_vqa).

    python scripts/cifar10_vqa.py --archive ../shared/data/cifar10-jpeg.tar.gz --out DIR --questions 3000 --seed 0
    python evaluate.py protocol=vqa data=vqa data.root=DIR data.questions=DIR/questions.jsonl model=...

Without --out the set is built once into the cache (as `ensure_test_set` does) and its folder printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlm_eff.data.cifar10_vqa import (
    CHANCE,
    DEFAULT_QUESTIONS,
    DEFAULT_SEED,
    MANIFEST,
    QUESTION_FILE,
    build_set,
    default_cache_dir,
    ensure_test_set,
    summary,
    write_set,
)
from vlm_eff.errors import ConfigError


def report(out: Path, counts: dict) -> str:
    lines = [f"{out}: {sum(counts['kinds'].values())} questions"]
    for kind, n in counts["kinds"].items():
        answers = " ".join(f"{answer}={k}" for answer, k in counts["answers"][kind].items())
        lines.append(f"  {kind:<9} {n:>6}  (chance {CHANCE[kind]:.0%})  {answers}")
    lines.append(f"use: data=vqa data.root={out} data.questions={out / QUESTION_FILE}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, required=True,
                        help="CIFAR-10: the .tar.gz of the ImageFolder tree (or the official batches), or the folder")
    parser.add_argument("--out", type=Path, default=None,
                        help="the folder to write (new, empty, or an earlier set, which is replaced); default: "
                             "built once into the cache")
    parser.add_argument("--questions", type=int, default=DEFAULT_QUESTIONS, help=f"default {DEFAULT_QUESTIONS}")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"default {DEFAULT_SEED}")
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="the split the images come from (default test; evaluate on test only)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="extraction / decode cache (default $VLM_EFF_CACHE or ~/.cache/vlm-eff)")
    args = parser.parse_args()
    try:
        cache_dir = args.cache_dir.expanduser() if args.cache_dir else default_cache_dir()
        if args.out is None:
            out = ensure_test_set(args.archive, cache_dir, args.questions, args.seed, split=args.split)
            import json

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
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(report(out, counts))


if __name__ == "__main__":
    main()
