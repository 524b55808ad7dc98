"""The `pruning` config group -> `token_reduction.apply_patch`, or `tome.apply_tome` for `pruning=tome`
(strategy `none` leaves the model stock)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, ListConfig
from torch import nn

from vlm_eff.errors import ConfigError
from vlm_eff.token_reduction import Reduction, apply_patch, remove_patch, tokens_per_layer, vision_tower
from vlm_eff.tome import ToMeState, apply_tome, check_r, r_for_keep, remove_tome, tome_tokens_per_layer

log = logging.getLogger(__name__)


def _plain(value):
    """A config list as a plain list (anything else as is)."""
    return list(value) if isinstance(value, ListConfig) else value


def _knobs(cfg: DictConfig, seed: int) -> dict:
    return dict(keep=cfg.keep, layer=_plain(cfg.layer), score=cfg.score, keep_cls=cfg.keep_cls,
                summary=cfg.summary, seed=seed, mass=cfg.mass)


def check_pruning(cfg: DictConfig, n_layers: int) -> None:
    """Fail fast, before any model is loaded, on knobs that no `n_layers`-layer encoder accepts."""
    try:
        if cfg.name == "tome":
            Reduction.create(n_layers, keep=cfg.keep)  # keep in (0, 1]
            check_r(0 if cfg.r is None else _plain(cfg.r), n_layers, cfg.schedule)
        elif cfg.name != "none":
            Reduction.create(n_layers, **_knobs(cfg, seed=0))
    except ValueError as error:
        raise ConfigError(str(error)) from None


def apply_pruning(model: nn.Module, cfg: DictConfig, seed: int = 0,
                  image_size: int | None = None) -> Reduction | ToMeState | None:
    """Patch `model` as the `pruning` config says (`image_size`: the input resolution, if not the
    model's own: ToMe's r depends on the token count); None for the stock model."""
    if cfg.name == "none":
        if cfg.keep != 1.0:
            log.warning("pruning=none runs the stock model: pruning.keep=%s ignored", cfg.keep)
        return None
    if cfg.name == "tome":
        vision = vision_tower(model).config
        n_tokens = 1 + ((image_size or vision.image_size) // vision.patch_size) ** 2
        try:
            r = _plain(cfg.r) if cfg.r is not None else r_for_keep(
                cfg.keep, n_tokens, vision.num_hidden_layers, vision.hidden_size, vision.intermediate_size,
                cfg.schedule)
            return apply_tome(model, r, cfg.prop_attn, keep=cfg.keep if cfg.r is None else None, schedule=cfg.schedule)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    try:
        return apply_patch(model, **_knobs(cfg, seed))
    except ValueError as error:
        raise ConfigError(str(error)) from None


def remove_pruning(model: nn.Module) -> None:
    """The stock model again, whichever strategy was applied."""
    remove_patch(model)
    remove_tome(model)


def tokens_at_layers(reduction: Reduction | ToMeState | None, n_patches: int, n_layers: int) -> list[int]:
    """Tokens entering each encoder layer's attention."""
    if isinstance(reduction, ToMeState):
        return tome_tokens_per_layer(reduction.r, 1 + n_patches)
    return tokens_per_layer(reduction, n_patches, n_layers)


def describe(reduction: Reduction | ToMeState | None) -> dict:
    """The strategy columns of a result row (ToMe: its merges per layer as the score, e.g. `tome_r16`,
    `tome_r16_decreasing`)."""
    if reduction is None:
        return {"keep": 1.0, "layer": "", "score": ""}
    if isinstance(reduction, ToMeState):
        return {"keep": "" if reduction.keep is None else reduction.keep, "layer": "all",
                "score": reduction.label}
    layers = reduction.layers
    score = reduction.score if reduction.mass is None else f"{reduction.score} mass={reduction.mass}"
    return {"keep": reduction.keep, "layer": layers[0] if len(layers) == 1 else " ".join(map(str, layers)),
            "score": score}
