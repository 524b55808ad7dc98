"""Device and dtype from the config, with one-line errors and the CPU half-precision warning."""

from __future__ import annotations

import logging

import torch

from vlm_eff.errors import ConfigError
from vlm_eff.knobs import DEVICES, DTYPES

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ConfigError(f"device={name!r} is unknown; allowed: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available here; use device=cpu or device=auto")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"dtype={name!r} is unknown; allowed: {', '.join(DTYPES)}")
    if name != "fp32" and device.type == "cpu":
        log.warning("dtype=%s on CPU: usually slower than fp32 on CPUs without native %s matrix units", name, name)
    return getattr(torch, DTYPES[name])


def device_label(device: torch.device) -> str:
    """'cpu', or 'cuda:<GPU name>' for the results table."""
    return f"cuda:{torch.cuda.get_device_name(device)}" if device.type == "cuda" else "cpu"
