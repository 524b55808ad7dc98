"""Wall-clock share of ToMe's merging in the image encoder, without a profiler attached.

`profile.py trace=true` measures every strategy's reduction steps with torch.profiler, whose
per-operator bookkeeping falls mostly on the many small operators of a merge; this times the
merges themselves with perf_counter (CPU: operators run synchronously), ViT-B/16 random init:

    python scripts/tome_merge_share.py --r 16 --batch 8 --rounds 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vlm_eff.models import ImageEncoder, random_model
from vlm_eff.reduction.merging import _MergingLayer, apply_tome

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--r", type=int, default=16, help="merges per layer (16: keep 0.5 on ViT-B/16)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 5 timed forwards each")
    args = parser.parse_args()

    cfg = OmegaConf.load(ROOT / "conf" / "model" / "clip_vit_b16.yaml")
    cfg.attn_implementation = "sdpa"
    torch.manual_seed(0)
    clip = random_model(cfg).eval()
    encoder = ImageEncoder(clip)
    apply_tome(clip, args.r)
    spent = [0.0]
    merge = _MergingLayer._merge

    def timed_merge(self, x):
        start = time.perf_counter()
        out = merge(self, x)
        spent[0] += time.perf_counter() - start
        return out

    _MergingLayer._merge = timed_merge  # this process only
    pixels = torch.randn(args.batch, 3, 224, 224)
    with torch.inference_mode():
        encoder(pixels)  # warm-up
        for round_ in range(1, args.rounds + 1):
            spent[0], start = 0.0, time.perf_counter()
            for _ in range(5):
                encoder(pixels)
            total = time.perf_counter() - start
            print(f"round {round_}: merging {spent[0] / 5 * 1e3:.1f} ms of {total / 5 * 1e3:.1f} ms per forward "
                  f"= {100 * spent[0] / total:.2f} % (ViT-B/16, r={args.r}, batch {args.batch}, "
                  f"{torch.get_num_threads()} threads)", flush=True)


if __name__ == "__main__":
    main()
