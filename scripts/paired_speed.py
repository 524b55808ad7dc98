"""Each strategy's speed-up over the stock image encoder, timed in alternating pairs so that drift cancels.

profile.py times every strategy in its own process, a sweep's jobs minutes apart; on a shared CPU the
stock latency itself moves 10-20 % over a sweep, as much as the differences asked about. Here one
process builds the model once and, for each strategy, alternates forwards of the same batch: stock,
reduced, stock, reduced, ... (applying and removing a strategy is a class swap). The speed-up is the
median of the per-pair ratios; "of the bound" divides it by the FLOP ratio (torch.utils.flop_counter).

    python scripts/paired_speed.py --keep 0.5 model=siglip_b16
    python scripts/paired_speed.py --keep 1.0 --strategies cls_preserving,late_layer,evit,tome,pitome model=siglip_b16

Arguments after the options are Hydra overrides of conf/profile.yaml (model, data.batch_size, ...);
weights are random unless model.weights says otherwise (timing does not depend on them).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from vlm_eff.flops import flops_per_image
from vlm_eff.jobs.common import prepare
from vlm_eff.models import ImageEncoder
from vlm_eff.reduction import apply_config, remove_all

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = "naive,position_aware,cls_preserving,late_layer,evit,tome,pitome"


def profile_config(overrides: list[str]):
    """conf/profile.yaml composed with `overrides`, as profile.py would see them."""
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        return compose("profile", overrides)


def forward_ms(encoder: ImageEncoder, pixels: torch.Tensor) -> float:
    start = time.perf_counter()
    encoder(pixels)
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--strategies", default=STRATEGIES, help="comma-separated `pruning` configs")
    parser.add_argument("--pairs", type=int, default=8, help="timed stock/reduced pairs per strategy")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/profile.yaml (model=..., pruning.*=...)")
    args = parser.parse_args()

    base = profile_config(["model.weights=random", "device=cpu",  # pruning.* knobs go to each strategy
                           *[o for o in args.overrides if not o.startswith("pruning.")]])
    loaded = prepare(base).loaded
    encoder = ImageEncoder(loaded.model).eval()
    pixels = torch.randn(base.data.batch_size, 3, encoder.image_size, encoder.image_size,
                         generator=torch.Generator().manual_seed(0))  # [B, 3, H, W]
    print(f"{base.model.name} (random weights: timing only), cpu fp32, {torch.get_num_threads()} threads, "
          f"batch {base.data.batch_size}, {encoder.image_size} px, {args.pairs} pairs per strategy\n")
    print("| strategy | keep | score | stock ms (median) | reduced ms (median) | speed-up (median of pairs) "
          "| pair ratios min-max | FLOP ratio | of the bound |")
    print("|---|---|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        stock_flops = flops_per_image(encoder, pixels[:1])
        for name in args.strategies.split(","):
            cfg = profile_config([f"pruning={name}", f"pruning.keep={args.keep}", *args.overrides])
            strategy = apply_config(loaded.model, cfg.pruning, cfg.seed)
            ratio_flops = stock_flops / flops_per_image(encoder, pixels[:1])
            encoder(pixels)  # warm-up, reduced
            remove_all(loaded.model)
            encoder(pixels)  # warm-up, stock
            stock, reduced = [], []
            for _ in range(args.pairs):
                stock.append(forward_ms(encoder, pixels))
                strategy.apply(loaded.model)
                reduced.append(forward_ms(encoder, pixels))
                remove_all(loaded.model)
            ratios = [s / r for s, r in zip(stock, reduced)]
            speedup = statistics.median(ratios)
            print(f"| {name} | {args.keep:g} | {strategy.columns()['score']} | {statistics.median(stock):.1f} "
                  f"| {statistics.median(reduced):.1f} | {speedup:.3f}x | {min(ratios):.2f}-{max(ratios):.2f} "
                  f"| {ratio_flops:.3f}x | {speedup / ratio_flops:.3f} |", flush=True)


if __name__ == "__main__":
    main()
