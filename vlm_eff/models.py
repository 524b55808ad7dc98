"""Loading a dual encoder (any family in `towers.FAMILIES`) or a generative VLM (any layout in
`vlms.LAYOUTS`): from the Hugging Face cache (hub id), a local `save_pretrained` dir (its `config.json`
names the family or layout), or random init.

Random init builds the architecture from the model config's `architecture` block (its `model_type`
picks the family, CLIP when absent), which matches the published checkpoint exactly, so timing,
memory and FLOPs are valid while accuracy is not.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import AutoTokenizer
from transformers.utils import cached_file

from vlm_eff.data.preprocess import ImagePreprocess
from vlm_eff.errors import ConfigError
from vlm_eff.towers import FAMILIES, NAFLEX, Family, family_for, family_of
from vlm_eff.vlms import LAYOUTS, Layout

log = logging.getLogger(__name__)

WEIGHTS = ("auto", "pretrained", "random")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: no pretrained weights for {source}. Timing, throughput, memory and FLOPs are "
    "valid (they do not depend on weight values); any accuracy from this model is meaningless."
)


@dataclass
class LoadedModel:
    model: nn.Module  # a Hugging Face dual encoder (CLIPModel, SiglipModel)
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


def describe(model_type: str, where: str = "model") -> Family | Layout:
    """The dual-encoder family or the VLM layout of a config's `model_type`; anything else is a one-line error."""
    if model_type in LAYOUTS:
        return LAYOUTS[model_type]
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if model_type in NAFLEX:
        family_for(model_type, where)  # its own message: which SigLIP 2 checkpoints work
    raise ConfigError(f"{where} has model_type={model_type!r}; supported: {', '.join([*FAMILIES, *LAYOUTS])} "
                      f"(dual encoders: OpenAI CLIP, LAION, MetaCLIP, SigLIP, SigLIP 2; VLMs: LLaVA-1.5, "
                      f"LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL)")


def model_config(cfg: DictConfig):
    """The Hugging Face config of the model `cfg` names, read before any weights: `model.path`'s
    config.json (its `model_type` picks the family), else (and for random weights) the `architecture`
    block (CLIP unless it names a `model_type`). Bad or unsupported configs are one-line errors."""
    if cfg.get("path") and cfg.weights != "random":
        file = Path(cfg.path).expanduser() / "config.json"
        try:
            config = json.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError(f"model.path={cfg.path} holds no save_pretrained model (no config.json there)") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"model.path={cfg.path}: config.json is not valid JSON") from None
        if not isinstance(config, dict) or "model_type" not in config:
            raise ConfigError(f"model.path={cfg.path}: config.json names no model_type")
        return describe(config.pop("model_type"), f"model.path={cfg.path}").config_class.from_dict(config)
    return architecture_config(cfg)


def architecture_config(cfg: DictConfig):
    """The Hugging Face config of the `architecture` block (CLIP unless it names a `model_type`)."""
    arch = OmegaConf.to_container(cfg.architecture, resolve=True)
    return describe(arch.pop("model_type", "clip"), f"model={cfg.name}").config_class(**arch)


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _from_pretrained(family: Family | Layout, source: str, attn_implementation: str, local_files_only: bool) -> nn.Module:
    return family.model_class.from_pretrained(
        source, attn_implementation=attn_implementation, local_files_only=local_files_only
    )


def _pretrained(cfg: DictConfig, family: Family | Layout) -> LoadedModel | None:
    """The pretrained model, or None when it is neither on disk nor downloadable right now."""
    attn = cfg.attn_implementation
    if cfg.get("path"):
        path = Path(cfg.path).expanduser()
        if not any((path / name).is_file() for name in WEIGHT_FILES):
            raise ConfigError(f"model.path={cfg.path} has a config.json but no weights ({', '.join(WEIGHT_FILES)}); "
                              "point it at a complete save_pretrained dir, or use model.weights=random (timing only)")
        try:
            return LoadedModel(_from_pretrained(family, str(path), attn, True), "pretrained", str(cfg.path))
        except Exception as error:  # a truncated or corrupt weights file: whichever library notices it first
            raise ConfigError(f"model.path={cfg.path}: its weights cannot be loaded ({type(error).__name__}: "
                              f"{(str(error).strip().splitlines() or [''])[0][:200]}); the files may be truncated") from None
    if not cfg.get("hub_id"):
        return None
    try:  # the local Hugging Face cache first: instant, and the only option offline
        return LoadedModel(_from_pretrained(family, cfg.hub_id, attn, True), "pretrained", cfg.hub_id)
    except OSError:
        pass
    if not hub_reachable():
        return None
    log.info("downloading %s from the Hugging Face hub", cfg.hub_id)
    return LoadedModel(_from_pretrained(family, cfg.hub_id, attn, False), "pretrained", cfg.hub_id)


def random_model(cfg: DictConfig) -> nn.Module:
    """The architecture of `cfg.architecture` with freshly initialised weights (seeded by the caller)."""
    config = architecture_config(cfg)
    family = describe(config.model_type)
    config._attn_implementation = cfg.attn_implementation
    model = family.model_class(config)
    family.init_random(model)
    if cfg.get("init_logit_bias") is not None:  # a SigLIP trained on few classes: see tiny_siglip_cifar10.yaml
        with torch.no_grad():
            model.logit_bias.fill_(cfg.init_logit_bias)
    return model


def load_model(cfg: DictConfig, config=None) -> LoadedModel:
    """Load the model as `cfg.weights` says: pretrained (missing is an error), random, or auto (pretrained
    when available, else random with a loud warning). `config`: its `model_config`, when the caller has read it."""
    if cfg.weights not in WEIGHTS:
        raise ConfigError(f"model.weights={cfg.weights!r} is unknown; allowed: {', '.join(WEIGHTS)}")
    if cfg.attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(
            f"model.attn_implementation={cfg.attn_implementation!r} is unknown; allowed: {', '.join(ATTN_IMPLEMENTATIONS)}"
        )
    source = cfg.get("path") or cfg.get("hub_id") or f"model={cfg.name}"
    if cfg.weights != "random":
        loaded = _pretrained(cfg, describe((config or model_config(cfg)).model_type))
        if loaded is not None:
            return loaded
        if cfg.weights == "pretrained":
            raise ConfigError(
                f"no pretrained weights for {source}: not in the Hugging Face cache and the hub is unreachable. "
                f"Fixes: go online once to download it, set model.path=<a save_pretrained dir>, "
                f"or use model.weights=random (timing only)"
            )
        log.warning(RANDOM_WEIGHTS_WARNING.format(source=source))
    return LoadedModel(random_model(cfg), "random", "random init")


def model_label(cfg: DictConfig, weights: str) -> str:
    """The results' `model` column: the model config's name, or the checkpoint directory's name when
    weights came from `model.path` (which picks the family from its own config.json, whichever model
    config is selected)."""
    return Path(cfg.path).name if cfg.get("path") and weights != "random" else cfg.name


def training_of(cfg: DictConfig, weights: str) -> dict:
    """The results' `objective` and `train_steps` columns of a job on a model train.py exported (`model.path` with
    its training_summary.json): what it was trained with, e.g. `distill`, and for how many steps; else empty."""
    summary = Path(cfg.path).expanduser() / "training_summary.json" if cfg.get("path") and weights != "random" else None
    if summary is None or not summary.is_file():
        return {"objective": "", "train_steps": ""}
    recorded = json.loads(summary.read_text())
    return {"objective": str(recorded.get("objective", {}).get("name", "")), "train_steps": recorded.get("steps", "")}


def load_tokenizer(cfg: DictConfig):
    """The tokenizer at `model.tokenizer`, else beside the weights (`model.path` or the hub id, cached);
    `model.padding_side`, when set, overrides the side the tokenizer pads on."""
    source = cfg.get("tokenizer") or cfg.get("path") or cfg.get("hub_id")
    if not source:
        raise ConfigError(f"model={cfg.name} names no tokenizer: set model.tokenizer=<a tokenizer dir or hub id>")
    options = {"padding_side": cfg.padding_side} if cfg.get("padding_side") else {}
    try:
        return AutoTokenizer.from_pretrained(str(source), local_files_only=not hub_reachable(), **options)
    except OSError:
        raise ConfigError(
            f"no tokenizer at {source} (not on disk or in the Hugging Face cache, hub unreachable); "
            f"set model.tokenizer=<a local tokenizer dir>"
        ) from None


def load_processor(cfg: DictConfig):
    """The VLM's processor (tokenizer, image processor, chat template): `model.tokenizer`, else beside the
    weights (`model.path` or the hub id, cached)."""
    from transformers import AutoProcessor

    source = cfg.get("tokenizer") or cfg.get("path") or cfg.get("hub_id")
    if not source:
        raise ConfigError(f"protocol=vqa needs model={cfg.name}'s processor (tokenizer, image processor, chat "
                          "template): set model.path=<a save_pretrained dir with it> or model.tokenizer=<its dir>")
    try:
        return AutoProcessor.from_pretrained(str(source), local_files_only=not hub_reachable())
    except (OSError, ValueError) as error:
        raise ConfigError(f"no processor at {source} ({type(error).__name__}); set model.tokenizer=<a local "
                          "processor dir>") from None


def optional_processor(cfg: DictConfig):
    """The VLM's processor when it has one at hand, else None (a random-init architecture, say)."""
    try:
        processor = load_processor(cfg)
    except ConfigError:
        return None
    return processor if getattr(processor, "chat_template", None) else None


def load_preprocess(cfg: DictConfig, image_size: int) -> ImagePreprocess:
    """The checkpoint's own preprocessing at `image_size`: `model.path`'s `preprocessor_config.json`
    (missing or malformed: a one-line error), the hub checkpoint's (from the cache, or downloaded when
    online), else (and for random weights) the published values in the model config's `preprocess` block."""
    if cfg.get("path") and cfg.weights != "random":
        return ImagePreprocess.from_config(Path(cfg.path).expanduser()).at_size(image_size)
    if cfg.get("hub_id") and cfg.weights != "random":
        try:
            file = cached_file(cfg.hub_id, "preprocessor_config.json", local_files_only=not hub_reachable())
            if file:
                return ImagePreprocess.from_config(Path(file)).at_size(image_size)
        except OSError:
            pass
    published = OmegaConf.to_container(cfg.preprocess, resolve=True) if cfg.get("preprocess") else {}
    return ImagePreprocess(**published).at_size(image_size)


class ImageEncoder(nn.Module):
    """A dual encoder's image path, pixels [B, 3, H, W] -> the embedding compared with text [B, P]:
    the vision tower (token reduction, if patched in, happens inside it) and the family's pooling."""

    def __init__(self, model: nn.Module, image_size: int | None = None):
        super().__init__()
        self.model = model
        self.family = family_of(model)
        vision = model.config.vision_config
        self.image_size = image_size or vision.image_size
        self.patch_size = vision.patch_size
        self.interpolate_pos_encoding = self.image_size != vision.image_size

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.family.image_embedding(self.model, pixel_values, self.interpolate_pos_encoding)  # [B, P]
