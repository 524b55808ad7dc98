"""The `pruning` config group -> `token_reduction.apply_patch` (strategy `none` leaves the model stock)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, ListConfig
from torch import nn

from vlm_eff.errors import ConfigError
from vlm_eff.token_reduction import Reduction, apply_patch

log = logging.getLogger(__name__)


def _knobs(cfg: DictConfig, seed: int) -> dict:
    layer = list(cfg.layer) if isinstance(cfg.layer, ListConfig) else cfg.layer
    return dict(keep=cfg.keep, layer=layer, score=cfg.score, keep_cls=cfg.keep_cls, summary=cfg.summary, seed=seed)


def check_pruning(cfg: DictConfig, n_layers: int) -> None:
    """Fail fast, before any model is loaded, on knobs that no `n_layers`-layer encoder accepts."""
    if cfg.name != "none":
        try:
            Reduction.create(n_layers, **_knobs(cfg, seed=0))
        except ValueError as error:
            raise ConfigError(str(error)) from None


def apply_pruning(model: nn.Module, cfg: DictConfig, seed: int = 0) -> Reduction | None:
    """Patch `model` as the `pruning` config says; None for the stock model."""
    if cfg.name == "none":
        if cfg.keep != 1.0:
            log.warning("pruning=none runs the stock model: pruning.keep=%s ignored", cfg.keep)
        return None
    try:
        return apply_patch(model, **_knobs(cfg, seed))
    except ValueError as error:
        raise ConfigError(str(error)) from None


def describe(reduction: Reduction | None) -> dict:
    """The strategy columns of a result row."""
    if reduction is None:
        return {"keep": 1.0, "layer": "", "score": ""}
    layers = reduction.layers
    return {"keep": reduction.keep, "layer": layers[0] if len(layers) == 1 else " ".join(map(str, layers)),
            "score": reduction.score}
