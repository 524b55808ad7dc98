"""Each strategy's speed-up over the stock model, timed in alternating stock / reduced pairs so that drift cancels.

profile.py times every strategy in its own process, a sweep's jobs minutes apart; on a shared CPU the stock
latency itself moves 10-20 % over a sweep, as much as the differences asked about. Here one process builds the
model once (random weights: timing only) and, for each strategy, alternates the same work: stock, reduced,
stock, reduced, ... (applying and removing a strategy is a class swap). The speed-up is the median of the
per-pair ratios; "of the bound" divides it by the FLOP ratio (torch.utils.flop_counter).

- A dual encoder: forwards of one image batch through the image encoder.
- A generative VLM: whole requests of one synthetic batch (an image and a fixed prompt, `--gen` greedy tokens);
  the speed-up is TTFT's and the bound the ratio of (vision + prefill) FLOPs; decode ms/token, the KV cache and
  the selection's own cost (ms, GFLOPs) are reported beside it.

    python scripts/paired_speed.py --keep 0.5 model=siglip_b16
    python scripts/paired_speed.py --keep 1.0 --strategies cls_preserving,late_layer,evit,tome,pitome model=siglip_b16
    python scripts/paired_speed.py --keep 0.5 model=llava_onevision_0_5b data.batch_size=1
    python scripts/paired_speed.py --strategies visionzip,fastv --tokens 64 model=llava_1_5_7b device=cuda dtype=bf16

Arguments after the options are Hydra overrides of conf/profile.yaml (model, data.batch_size, device, ...).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

from vlm_eff.errors import ConfigError
from vlm_eff.flops import flops_per_image
from vlm_eff.generation import Runner, reduced_runner
from vlm_eff.jobs.common import layout_for, prepare
from vlm_eff.jobs.requests import synthetic_requests
from vlm_eff.models import ImageEncoder
from vlm_eff.reduction import apply_config, build_vlm, remove_all
from vlm_eff.reduction.base import EncoderSite
from vlm_eff.runtime import device_label

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = {"encoder": "naive,position_aware,cls_preserving,late_layer,evit,tome,pitome",
              "vlm": "cls_preserving,late_layer,evit,tome,pitome"}
PAIRS = {"encoder": 8, "vlm": 3}


def profile_config(overrides: list[str]):
    """conf/profile.yaml composed with `overrides`, as profile.py would see them."""
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        return compose("profile", overrides)


def alternate(pairs: int, stock: Callable, reduced: Callable, apply: Callable, remove: Callable) -> tuple[list, list]:
    """`pairs` rounds of stock(), then reduced() with the strategy applied around it: a drift of the machine
    falls on both sides of each pair."""
    stock_runs, reduced_runs = [], []
    for _ in range(pairs):
        stock_runs.append(stock())
        apply()
        reduced_runs.append(reduced())
        remove()
    return stock_runs, reduced_runs


def encoder_pairs(args, base) -> None:
    """The image encoder of a dual encoder: forwards of one batch."""
    loaded = prepare(base).loaded
    encoder = ImageEncoder(loaded.model).eval()
    pixels = torch.randn(base.data.batch_size, 3, encoder.image_size, encoder.image_size,
                         generator=torch.Generator().manual_seed(0))  # [B, 3, H, W]

    def forward_ms() -> float:
        start = time.perf_counter()
        encoder(pixels)
        return (time.perf_counter() - start) * 1e3

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
            stock, reduced = alternate(args.pairs, forward_ms, forward_ms, lambda: strategy.apply(loaded.model),
                                       lambda: remove_all(loaded.model))
            ratios = [s / r for s, r in zip(stock, reduced)]
            speedup = statistics.median(ratios)
            print(f"| {name} | {args.keep:g} | {strategy.columns()['score']} | {statistics.median(stock):.1f} "
                  f"| {statistics.median(reduced):.1f} | {speedup:.3f}x | {min(ratios):.2f}-{max(ratios):.2f} "
                  f"| {ratio_flops:.3f}x | {speedup / ratio_flops:.3f} |", flush=True)


def request_pairs(args, base, base_overrides: list[str]) -> None:
    """A generative VLM: whole requests of one synthetic batch."""
    prepared = prepare(base)
    model = prepared.loaded.model.to(prepared.device, prepared.dtype).eval()
    layout = prepared.layout

    def on_device(request):
        return ([ids.to(prepared.device) for ids in request.rows],
                {k: v.to(prepared.device, prepared.dtype) if v.is_floating_point() else v.to(prepared.device)
                 for k, v in request.images.items()}, request.instructions)

    rows, images, instructions = on_device(synthetic_requests(base, model, 1)[0][0])
    single = on_device(synthetic_requests(profile_config([*base_overrides, "data.batch_size=1"]), model, 1)[0][0])

    def run(runner):
        return runner.generate(rows, images, args.gen, stop_at_eos=False, instructions=instructions)

    stock_runner = Runner(model)
    stock_flops = stock_runner.flops(*single)  # per request: one is enough
    stock_cost = stock_flops["vision"] + stock_flops["prefill"]
    print(f"{base.model.name} (random weights: timing only), {device_label(prepared.device)} {base.dtype}, "
          f"{torch.get_num_threads()} threads, batch {len(rows)}, {args.gen} tokens per request, "
          f"{args.pairs} pairs per strategy; stock: {stock_cost / 1e9:.1f} GFLOPs vision + prefill per request\n")
    print("| strategy | keep | visual tokens | stock TTFT ms | reduced TTFT ms | TTFT speed-up (median of pairs) "
          "| pair ratios min-max | FLOP ratio (vision + prefill) | of the bound | decode ms/token stock -> reduced "
          "| KV cache MiB stock -> reduced | the selection's own cost per batch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    run(stock_runner)  # warm-up, stock
    budget_label = args.keep if args.tokens is None else f"tokens={args.tokens}"
    for name in args.strategies.split(","):
        budget = [f"pruning.keep={args.keep}"] if args.tokens is None else ["pruning.keep=null", f"pruning.tokens={args.tokens}"]
        cfg = profile_config([f"pruning={name}", *budget, *args.overrides])
        try:
            strategy = build_vlm(cfg.pruning, layout, model.config, cfg.seed)
        except ConfigError as error:
            print(f"| {name} | {budget_label} | not on this layout: {error} |||||||||", flush=True)
            continue
        runner = reduced_runner(model, strategy, layout)
        flops = runner.flops(*single)
        run(runner)  # warm-up, reduced
        selection = selection_cost(strategy, lambda: run(runner), prepared.device)
        strategy.remove_from_vlm(model, layout)
        stock, reduced = alternate(args.pairs, lambda: run(stock_runner), lambda: run(runner),
                                   lambda: strategy.apply_to_vlm(model, layout),
                                   lambda: strategy.remove_from_vlm(model, layout))
        ratios = [s.ttft_s / r.ttft_s for s, r in zip(stock, reduced)]
        speedup, flop_ratio = statistics.median(ratios), stock_cost / (flops["vision"] + flops["prefill"])
        decode = [statistics.median([t for out in outs for t in out.decode_s]) * 1e3 for outs in (stock, reduced)]
        kv = [statistics.median([out.kv_cache_bytes for out in outs]) / 2**20 for outs in (stock, reduced)]
        ttft = [statistics.median([out.ttft_s for out in outs]) * 1e3 for outs in (stock, reduced)]
        print(f"| {name} | {budget_label} | {statistics.fmean(reduced[0].visual_tokens):.0f} of "
              f"{statistics.fmean(stock[0].visual_tokens):.0f} | {ttft[0]:.0f} | {ttft[1]:.0f} | {speedup:.3f}x "
              f"| {min(ratios):.2f}-{max(ratios):.2f} | {flop_ratio:.3f}x | {speedup / flop_ratio:.3f} "
              f"| {decode[0]:.1f} -> {decode[1]:.1f} | {kv[0]:.1f} -> {kv[1]:.1f} "
              f"| {selection[0]:.1f} ms, {selection[1]:.3f} GFLOPs |", flush=True)


SELECTIONS = ("select", "after_projector", "drop")  # where a strategy chooses: in the tower, after the projector, in the LLM


def selection_cost(strategy, request, device) -> tuple[float, float]:
    """(ms, GFLOPs) of the strategy's own selection in one request (its choosing step, wrapped on the instance:
    timed in one run, counted with torch's FLOP counter in another); the tower / LLM layers around it not counted."""
    spent = {"s": 0.0, "flops": 0.0}

    def timed(method):
        def wrapper(*args, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            result = method(*args, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            spent["s"] += time.perf_counter() - start
            return result
        return wrapper

    def counted(method):
        def wrapper(*args, **kwargs):
            with FlopCounterMode(display=False) as counter:
                result = method(*args, **kwargs)
            spent["flops"] += counter.get_total_flops()
            return result
        return wrapper

    names = [name for name in SELECTIONS if getattr(type(strategy), name, None) not in (None, getattr(EncoderSite, name, None))]
    for wrap in (timed, counted):
        for name in names:
            setattr(strategy, name, wrap(getattr(type(strategy), name).__get__(strategy)))
        request()
        for name in names:
            delattr(strategy, name)
    return 1e3 * spent["s"], spent["flops"] / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--tokens", type=int, default=None,
                        help="VLMs: visual tokens kept (boundary / LLM site), instead of --keep")
    parser.add_argument("--strategies", default=None, help="comma-separated `pruning` configs (default: every "
                        "encoder-site preset)")
    parser.add_argument("--pairs", type=int, default=None, help="timed stock/reduced pairs per strategy (default: "
                        "8 forwards, 3 VLM requests)")
    parser.add_argument("--gen", type=int, default=4, help="VLMs: greedy tokens per request (decode timed after the first)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/profile.yaml (model=..., pruning.*=...)")
    args = parser.parse_args()

    base_overrides = ["model.weights=random", *[o for o in args.overrides if not o.startswith("pruning.")]]
    base = profile_config(base_overrides)  # the model and data; pruning.* knobs go to each strategy
    kind = "encoder" if layout_for(base.model) is None else "vlm"
    args.strategies = args.strategies or STRATEGIES[kind]
    args.pairs = args.pairs or PAIRS[kind]
    if kind == "encoder":
        encoder_pairs(args, profile_config(["device=cpu", *base_overrides]))  # on the CPU unless told otherwise
    else:
        request_pairs(args, base, base_overrides)


if __name__ == "__main__":
    main()
