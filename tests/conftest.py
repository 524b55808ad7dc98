import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, *overrides: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 300):
    """Run an entry script as a user would: `python <script> overrides...` in `cwd`."""
    path = script if cwd == ROOT else str(ROOT / script)
    return subprocess.run(
        [sys.executable, path, *overrides], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "WANDB_MODE": "offline", **(env or {})},
    )  # fmt: skip


def model_config(name: str, attn_implementation: str = "sdpa"):
    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")
    if "defaults" in cfg:  # b32 / l14 inherit from b16
        base = OmegaConf.load(ROOT / "conf" / "model" / f"{cfg.defaults[0]}.yaml")
        cfg = OmegaConf.merge(base, {k: v for k, v in cfg.items() if k != "defaults"})
    cfg.attn_implementation = attn_implementation
    return cfg


@pytest.fixture
def tiny_clip():
    from vlm_eff.models import random_clip

    torch.manual_seed(0)
    return random_clip(model_config("clip_tiny")).eval()
