"""`python -m vlm_eff.report SWEEP_DIR [--no-wandb] [--token-maps N [--images PATH]]`: the report of a sweep, with
each job's token maps drawn by the visualize job."""

from __future__ import annotations

import argparse
from pathlib import Path

import vlm_eff.report
from vlm_eff.errors import ConfigError
from vlm_eff.report.summary import report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vlm_eff.report", description=vlm_eff.report.__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun dir, e.g. multirun/2026-11-24/10-00-00")
    parser.add_argument("--no-wandb", action="store_true", help="no summary W&B run")
    parser.add_argument("--token-maps", type=int, default=0, metavar="N",
                        help="add each job's token maps of N images (python -m vlm_eff.visualize)")
    parser.add_argument("--images", type=Path, default=None,
                        help="the images for --token-maps (a file or folder; default: the sweep's CIFAR-10 test images)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"error: sweep dir {args.sweep_dir} does not exist")
    if args.token_maps < 0:
        raise SystemExit(f"error: --token-maps={args.token_maps} must be an integer >= 0")
    try:
        maps = []
        if args.token_maps:
            from vlm_eff.jobs.visualize import sweep_token_maps  # torch and the models: only to draw maps

            maps = sweep_token_maps(args.sweep_dir, args.token_maps, args.images)
        print(report(args.sweep_dir, use_wandb=not args.no_wandb, maps=maps))
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
