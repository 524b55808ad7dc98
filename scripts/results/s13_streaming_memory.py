"""docs/RESULTS.md 13.1: evaluate.py protocol=vqa streams its questions, so memory does not grow with their number.

    python scripts/results/s13_streaming_memory.py ../shared/data/cifar10-jpeg.tar.gz [--questions 1000 8000] [--out DIR]

Writes question files of N questions (LLaVA's format) over 200 real CIFAR-10 test images, saves llava_tiny (random
weights) with a processor, runs `python evaluate.py protocol=vqa data=vqa ...` on each, alone, and prints each run's
peak resident set size (the largest of its processes: the run and its loader workers, from wait4) and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from vlm_eff.data.cifar10 import load_split  # noqa: E402
from vlm_eff.data.cifar10_vqa import default_cache_dir  # noqa: E402
from vlm_eff.models import random_model  # noqa: E402
from vlm_eff.tiny_vlm import save_with_clip_processor  # noqa: E402

IMAGES = 200


def peak_rss_mib(args: list[str]) -> tuple[float, float]:
    """Run `python <args>` in the project folder; (peak RSS of its largest process in MiB, wall seconds)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               env={**os.environ, "WANDB_MODE": "offline"})
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: python {' '.join(args)} failed (exit {os.waitstatus_to_exitcode(status)})")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, help="the CIFAR-10 archive or folder")
    parser.add_argument("--questions", type=int, nargs="+", default=[1000, 8000])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "streaming_memory")
    args = parser.parse_args()

    images, labels, classes = load_split(args.archive.expanduser(), "test", default_cache_dir())
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    for i in range(IMAGES):
        Image.fromarray(images[i]).save(args.out / "images" / f"{i}.png")
    torch.manual_seed(0)
    model = random_model(OmegaConf.load(ROOT / "conf" / "model" / "llava_tiny.yaml")).eval()
    save_with_clip_processor(model, args.out / "llava_tiny")

    results = []
    for n in args.questions:
        questions = args.out / f"questions_{n}.jsonl"
        questions.write_text("".join(json.dumps({"question_id": i, "image": f"{i % IMAGES}.png",
                                                 "text": "What is in the image?",
                                                 "answer": classes[labels[i % IMAGES]]}) + "\n" for i in range(n)))
        rss, seconds = peak_rss_mib([
            "evaluate.py", "protocol=vqa", "model=llava_tiny", f"model.path={args.out / 'llava_tiny'}",
            "model.weights=pretrained", "data=vqa", f"data.root={args.out / 'images'}", f"data.questions={questions}",
            "logger=none", f"hydra.run.dir={args.out / f'run_{n}'}", "resume=false"])
        results.append({"questions": n, "peak_rss_mib": round(rss, 1), "wall_s": round(seconds, 1)})
        print(f"{n:>6} questions: peak RSS {rss:.1f} MiB, {seconds:.0f} s", flush=True)
    first, last = results[0], results[-1]
    print(f"peak RSS ratio {last['questions']} / {first['questions']} questions: "
          f"{last['peak_rss_mib'] / first['peak_rss_mib']:.3f}")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
