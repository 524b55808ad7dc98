"""What the entry scripts share: one-line errors for bad input, before and inside Hydra."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from vlm_eff.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def check_group_choices(argv: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Exit with one line for `group=name` overrides naming no `conf/group/name.yaml`
    (Hydra's own message spans a screen); comma lists of `-m` sweeps are checked item by item."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        group = conf_dir / key
        if not sep or "." in key or key.startswith("hydra") or not group.is_dir():
            continue
        allowed = sorted(p.stem for p in group.glob("*.yaml"))
        for choice in value.split(","):
            if choice not in allowed:
                fail(f"unknown {key} {choice!r}; allowed: {', '.join(allowed)}")


def run(job: Callable[[DictConfig], dict], cfg: DictConfig) -> dict:
    """Run `job`; a ConfigError becomes `error: <message>` on stderr and exit status 2."""
    try:
        return job(cfg)
    except ConfigError as error:
        fail(str(error))
