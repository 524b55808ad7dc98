"""Loading CLIP: from the Hugging Face cache (hub id), a local `save_pretrained` dir, or random init.

Random init builds the architecture from the model config's `architecture` block, which matches the
published checkpoint exactly, so timing, memory and FLOPs are valid while accuracy is not.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import AutoTokenizer, CLIPConfig, CLIPModel

from vlm_eff.data.preprocess import ClipPreprocess
from vlm_eff.errors import ConfigError

log = logging.getLogger(__name__)

WEIGHTS = ("auto", "pretrained", "random")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: no pretrained weights for {source}. Timing, throughput, memory and FLOPs are "
    "valid (they do not depend on weight values); any accuracy from this model is meaningless."
)


@dataclass
class LoadedCLIP:
    model: CLIPModel
    weights: str  # "pretrained" or "random"
    source: str  # hub id, local path, or "random init"


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect; False at once when HF_HUB_OFFLINE is set."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _from_pretrained(source: str, attn_implementation: str, local_files_only: bool) -> CLIPModel:
    return CLIPModel.from_pretrained(
        source, attn_implementation=attn_implementation, local_files_only=local_files_only
    )


def _pretrained(cfg: DictConfig) -> LoadedCLIP | None:
    """The pretrained model, or None when it is neither on disk nor downloadable right now."""
    attn = cfg.attn_implementation
    if cfg.get("path"):
        path = Path(cfg.path).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.path={cfg.path} holds no save_pretrained model (no config.json there)")
        return LoadedCLIP(_from_pretrained(str(path), attn, True), "pretrained", str(path))
    if not cfg.get("hub_id"):
        return None
    try:  # the local Hugging Face cache first: instant, and the only option offline
        return LoadedCLIP(_from_pretrained(cfg.hub_id, attn, True), "pretrained", cfg.hub_id)
    except OSError:
        pass
    if not hub_reachable():
        return None
    log.info("downloading %s from the Hugging Face hub", cfg.hub_id)
    return LoadedCLIP(_from_pretrained(cfg.hub_id, attn, False), "pretrained", cfg.hub_id)


def random_clip(cfg: DictConfig) -> CLIPModel:
    """The architecture of `cfg.architecture` with freshly initialised weights (seeded by the caller)."""
    arch = OmegaConf.to_container(cfg.architecture, resolve=True)
    config = CLIPConfig(**arch)
    config._attn_implementation = cfg.attn_implementation
    return CLIPModel(config)


def load_clip(cfg: DictConfig) -> LoadedCLIP:
    """Load CLIP as `cfg.weights` says: pretrained (missing is an error), random, or auto (pretrained
    when available, else random with a loud warning)."""
    if cfg.weights not in WEIGHTS:
        raise ConfigError(f"model.weights={cfg.weights!r} is unknown; allowed: {', '.join(WEIGHTS)}")
    if cfg.attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(
            f"model.attn_implementation={cfg.attn_implementation!r} is unknown; allowed: {', '.join(ATTN_IMPLEMENTATIONS)}"
        )
    source = cfg.get("path") or cfg.get("hub_id") or f"model={cfg.name}"
    if cfg.weights != "random":
        loaded = _pretrained(cfg)
        if loaded is not None:
            return loaded
        if cfg.weights == "pretrained":
            raise ConfigError(
                f"no pretrained weights for {source}: not in the Hugging Face cache and the hub is unreachable. "
                f"Fixes: go online once to download it, set model.path=<a save_pretrained dir>, "
                f"or use model.weights=random (timing only)"
            )
        log.warning(RANDOM_WEIGHTS_WARNING.format(source=source))
    return LoadedCLIP(random_clip(cfg), "random", "random init")


def load_tokenizer(cfg: DictConfig):
    """The tokenizer at `model.tokenizer`, else beside the weights (`model.path` or the hub id, cached)."""
    source = cfg.get("tokenizer") or cfg.get("path") or cfg.get("hub_id")
    if not source:
        raise ConfigError(f"model={cfg.name} names no tokenizer: set model.tokenizer=<a tokenizer dir or hub id>")
    try:
        return AutoTokenizer.from_pretrained(str(source), local_files_only=not hub_reachable())
    except OSError:
        raise ConfigError(
            f"no tokenizer at {source} (not on disk or in the Hugging Face cache, hub unreachable); "
            f"set model.tokenizer=<a local tokenizer dir>"
        ) from None


def load_preprocess(cfg: DictConfig, image_size: int) -> ClipPreprocess:
    """The model's own `preprocessor_config.json` when `model.path` has one, else CLIP's standard
    preprocessing at `image_size` (what every OpenAI CLIP checkpoint publishes)."""
    path = Path(cfg.path).expanduser() if cfg.get("path") else None
    if path is not None and (path / "preprocessor_config.json").is_file():
        preprocess = ClipPreprocess.from_config(path)
        if preprocess.crop_size == image_size:
            return preprocess
    return ClipPreprocess(shortest_edge=image_size, crop_size=image_size)


class ImageEncoder(nn.Module):
    """CLIP's image path, pixels [B, 3, H, W] -> projected embedding [B, P]: the vision tower
    (token reduction, if patched in, happens inside it) and `visual_projection`."""

    def __init__(self, clip: CLIPModel, image_size: int | None = None):
        super().__init__()
        self.clip = clip
        vision = clip.config.vision_config
        self.image_size = image_size or vision.image_size
        self.patch_size = vision.patch_size
        self.interpolate_pos_encoding = self.image_size != vision.image_size

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.clip.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=self.interpolate_pos_encoding
        ).pooler_output  # [B, D]
        return self.clip.visual_projection(pooled)  # [B, P]
