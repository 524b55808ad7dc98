"""What the entry scripts share: Hydra wiring and one-line errors for bad input, before and inside Hydra."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from pathlib import Path

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from vlm_eff.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"


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


def quiet_third_party() -> None:
    """Keep the summary on one screen: Lightning's banners and tips, deprecations inside Lightning and PEFT."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing. is deprecated.*")


def run(job_path: str, cfg: DictConfig) -> dict:
    """Import and run the job `module:function`; a ConfigError becomes `error: <message>` and exit 2."""
    quiet_third_party()
    module, function = job_path.split(":")
    job = getattr(importlib.import_module(module), function)  # torch etc. load after the cheap checks
    try:
        return job(cfg)
    except ConfigError as error:
        fail(str(error))
    except InstantiationException as error:  # a ConfigError raised in a `_target_`'s constructor
        if isinstance(error.__cause__, ConfigError):
            fail(str(error.__cause__))
        raise


def hydra_main(config_name: str, job_path: str) -> None:
    """The body of an entry script: `conf/<config_name>.yaml` composed by Hydra, then the job."""
    os.environ.setdefault("VLM_EFF_ROOT", str(ROOT))
    check_group_choices(sys.argv[1:])

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def main(cfg: DictConfig) -> None:
        run(job_path, cfg)

    main()
