"""LoRA adapters for CLIP and SigLIP through PEFT: which modules, how many parameters, save / load / merge.

Targets are named groups of modules, matched by one regex (PEFT full-matches module names, so a
plain `q_proj` would hit both towers):
- `vision_attn`: q/k/v/out projections of every vision-tower attention layer;
- `text_attn`: the same in the text tower;
- `projections`: `visual_projection` and `text_projection`, the seed's "cross-modal low-rank
  fusion" (a low-rank update of each tower's map into the shared space, W frozen);
- `llm_attn`: q/k/v/o of every decoder layer of a generative VLM's language model (label-free recovery).
SigLIP has no projection layers (`projections` is an error there). The adapted model stays a
`CLIPModel` / `SiglipModel` (PEFT injects the adapters in place), so token reduction and
the rest of vlm-eff work on it unchanged; apply LoRA before `apply_patch`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from vlm_eff.errors import ConfigError
from vlm_eff.towers import family_of

ATTENTION = r"encoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)"
TARGETS = {
    "vision_attn": rf"vision_model\.{ATTENTION}",
    "text_attn": rf"text_model\.{ATTENTION}",
    "projections": r"visual_projection|text_projection",
    "llm_attn": r"(?:.*\.)?language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",  # a VLM's LLM
}


def lora_config(rank: int, alpha: float, dropout: float, targets: list[str]) -> LoraConfig:
    """A PEFT `LoraConfig` for `targets` (names from TARGETS); bad values are one-line errors."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"lora.rank={rank!r} must be an integer >= 1")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ConfigError(f"lora.alpha={alpha!r} must be a number > 0")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"lora.dropout={dropout!r} must be in [0, 1)")
    if isinstance(targets, str) or not targets:
        raise ConfigError(f"lora.targets={targets!r} must be a non-empty list of: {', '.join(TARGETS)}")
    unknown = [target for target in targets if target not in TARGETS]
    if unknown:
        raise ConfigError(f"lora.targets: {', '.join(map(str, unknown))} unknown; allowed: {', '.join(TARGETS)}")
    pattern = "|".join(f"(?:{TARGETS[target]})" for target in dict.fromkeys(targets))
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, bias="none")


def expected_trainable(config: PretrainedConfig, rank: int, targets: list[str]) -> int:
    """LoRA parameters for `targets` at `rank`: r * (d_in + d_out) for every adapted Linear."""
    vision, text = config.vision_config, config.text_config
    per_target = {
        "vision_attn": lambda: vision.num_hidden_layers * 4 * rank * 2 * vision.hidden_size,
        "text_attn": lambda: text.num_hidden_layers * 4 * rank * 2 * text.hidden_size,
        "projections": lambda: rank * (vision.hidden_size + config.projection_dim)
        + rank * (text.hidden_size + config.projection_dim),  # CLIP only
    }
    return sum(per_target[target]() for target in dict.fromkeys(targets))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def add_lora(model: PreTrainedModel, cfg: DictConfig) -> PeftModel | None:
    """Adapters as the `lora` config says, injected into `model` in place: a saved adapter
    (`lora.checkpoint`, trainable), fresh ones, or None for `lora=none`."""
    if cfg.get("checkpoint"):
        return load_adapter(model, cfg.checkpoint, trainable=True)
    config = new_adapters(cfg)
    if config is None:
        return None
    if "projections" in cfg.targets and not family_of(model).has_projections:
        raise ConfigError(f"lora.targets=projections: a {family_of(model).name} model has no projection layers; "
                          f"allowed here: vision_attn, text_attn")
    return get_peft_model(model, config)


def check_adapter_dir(path: str | Path) -> Path:
    """`path` as a Path when it holds a saved adapter, else a one-line error."""
    path = Path(path).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise ConfigError(f"lora.checkpoint={path} holds no saved adapter (no adapter_config.json there)")
    return path


def new_adapters(cfg: DictConfig) -> LoraConfig | None:
    """The `lora` config checked before anything loads: its fresh adapters, or None (`lora=none`,
    or a saved adapter in `lora.checkpoint`, whose dir must hold one)."""
    if cfg.get("checkpoint"):
        check_adapter_dir(cfg.checkpoint)
        return None
    if cfg.name == "none":
        return None
    targets = list(cfg.targets) if isinstance(cfg.targets, ListConfig) else cfg.targets
    return lora_config(cfg.rank, cfg.alpha, cfg.dropout, targets)


def load_adapter(model: PreTrainedModel, path: str | Path, trainable: bool = False) -> PeftModel:
    """A saved adapter (a PEFT `save_pretrained` dir) injected into `model`; a mismatch is a one-line error."""
    path = check_adapter_dir(path)
    try:
        return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
    except (RuntimeError, ValueError, KeyError) as error:
        reason = [line.strip() for line in str(error).strip().splitlines()]
        raise ConfigError(
            f"lora.checkpoint={path} does not fit this model: {reason[-1] if reason else type(error).__name__}"
        ) from None


def merge(peft_model: PeftModel) -> PreTrainedModel:
    """Fold the adapters into the base weights (W + B A * alpha / r): the plain model again."""
    return peft_model.merge_and_unload()
