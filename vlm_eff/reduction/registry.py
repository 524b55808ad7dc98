"""The registry of every strategy, by site, and the builders that turn a `pruning` config into one: `build` for a
dual encoder's tower (STRATEGIES), `build_vlm` for a generative VLM (the encoder strategies on its tower, and
VLM_STRATEGIES at the boundary and in the language model). A new strategy is a module beside this one and one
entry in one of the two tables."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from vlm_eff.errors import ConfigError
from vlm_eff.knobs import POSITIONS, check_keep
from vlm_eff.reduction.base import NoReduction, Strategy, kept_count
from vlm_eff.reduction.boundary import DivPrune, VisionZip
from vlm_eff.reduction.cdpruner import CDPruner
from vlm_eff.reduction.dart import DART
from vlm_eff.reduction.dropping import Reduction, remove_patch
from vlm_eff.reduction.llm import LLMPruning
from vlm_eff.reduction.merging import PiToMe, ToMe, check_r, merges, merges_for_tokens, r_for_keep, remove_tome
from vlm_eff.reduction.random_tokens import RandomPruning
from vlm_eff.reduction.sparsevlm import SparseVLM
from vlm_eff.reduction.vispruner import VisPruner
from vlm_eff.towers import family_of

log = logging.getLogger(__name__)


def _plain(value):
    """A config list as a plain list (anything else as is)."""
    return list(value) if isinstance(value, ListConfig) else value


def _dropping(cfg: DictConfig, n_layers: int, has_cls: bool, seed: int, **_) -> Reduction:
    return Reduction.create(n_layers, keep=cfg.keep, layer=_plain(cfg.layer), score=cfg.score, keep_cls=cfg.keep_cls,
                            summary=cfg.summary, seed=seed, mass=cfg.mass, has_cls=has_cls)


def _merge_counts(cfg: DictConfig, n_layers: int, has_cls: bool, n_patches: int, width: int, mlp_width: int):
    """(r, keep): `pruning.r` as given, or the r whose FLOPs match `pruning.keep`."""
    keep = check_keep(cfg.keep)
    if cfg.r is not None:
        return _plain(cfg.r), None
    check_r(0, n_layers, cfg.schedule)
    return r_for_keep(keep, int(has_cls) + n_patches, n_layers, width, mlp_width, cfg.schedule, has_cls), keep


def _check_room(strategy: ToMe, cfg: DictConfig, n_patches: int, has_cls: bool) -> ToMe:
    """A given `pruning.r` (or its schedule) asking a layer for more merges than half the patch tokens is an
    error; one that later layers cannot make in full, as the tokens run out, is capped there (as ToMe
    does), with a warning. An r chosen from `keep` is ToMe's to cap."""
    if cfg.r is None:
        return strategy
    given, most = _plain(cfg.r), n_patches // 2
    if max(strategy.r) > most:
        asked = f"pruning.r={given}" + ("" if cfg.schedule == "constant" else f" with schedule={cfg.schedule}")
        raise ConfigError(f"{asked} asks a layer for {max(strategy.r)} merges, more than half of the {n_patches} patch "
                          f"tokens; allowed at most {most} per layer")
    tokens = strategy.tokens_per_layer(n_patches, len(strategy.r), has_cls)
    made = [merges(n, t, has_cls) for n, t in zip(strategy.r, tokens)]
    if made != list(strategy.r):
        log.warning("pruning.r=%s is capped where the tokens run out: merges per layer %s", given, made)
    return strategy


def _tome(cfg: DictConfig, n_layers: int, has_cls: bool, n_patches: int, width: int, mlp_width: int, **_) -> ToMe:
    r, keep = _merge_counts(cfg, n_layers, has_cls, n_patches, width, mlp_width)
    return _check_room(ToMe.create(r, n_layers, cfg.prop_attn, keep, cfg.schedule, has_cls), cfg, n_patches, has_cls)


def _pitome(cfg: DictConfig, n_layers: int, has_cls: bool, n_patches: int, width: int, mlp_width: int, **_) -> PiToMe:
    r, keep = _merge_counts(cfg, n_layers, has_cls, n_patches, width, mlp_width)
    strategy = PiToMe.create(r, n_layers, cfg.prop_attn, keep, cfg.schedule, has_cls, _plain(cfg.margin), cfg.alpha)
    return _check_room(strategy, cfg, n_patches, has_cls)


def _stock(cfg: DictConfig, **_) -> NoReduction:
    if check_keep(cfg.keep) != 1.0:
        log.warning("pruning=none runs the stock model: pruning.keep=%s ignored", cfg.keep)
    if cfg.get("tokens") is not None:
        log.warning("pruning=none runs the stock model: pruning.tokens=%s ignored", cfg.tokens)
    return NoReduction()


DROPPING_PRESETS = ("naive", "position_aware", "cls_preserving", "late_layer", "evit")
MERGING = ("tome", "pitome")
STRATEGIES = {"none": _stock, **{name: _dropping for name in DROPPING_PRESETS}, "tome": _tome, "pitome": _pitome}


def build(cfg: DictConfig, vision_config, has_cls: bool, seed: int = 0, image_size: int | None = None) -> Strategy:
    """The strategy the `pruning` config describes, validated for a tower of `vision_config` (a Hugging
    Face vision config, or a dict of its fields) at `image_size`; bad knobs are one-line ConfigErrors."""
    get = vision_config.get if isinstance(vision_config, dict) else lambda key: getattr(vision_config, key)
    builder = STRATEGIES.get(cfg.name)
    if builder is None:
        raise ConfigError(f"pruning={cfg.name!r} is unknown; allowed: {', '.join(STRATEGIES)}")
    size, patch = image_size or get("image_size"), get("patch_size")
    try:
        return builder(cfg, n_layers=get("num_hidden_layers"), has_cls=has_cls, seed=seed,
                       n_patches=(size // patch) ** 2, width=get("hidden_size"), mlp_width=get("intermediate_size"))
    except ValueError as error:
        raise ConfigError(str(error)) from None


# The boundary and LLM-site strategies of generative VLMs: name -> the class whose `from_config` builds it (a new
# method is a module under reduction/ and one entry here).
VLM_STRATEGIES = {"visionzip": VisionZip, "divprune": DivPrune, "random": RandomPruning, "vispruner": VisPruner,
                  "cdpruner": CDPruner, "fastv": LLMPruning, "pyramiddrop": LLMPruning, "dart": DART,
                  "sparsevlm": SparseVLM}


def needs_tower(cfg: DictConfig) -> bool:
    """Whether the `pruning` config acts in (or reads) a dual-encoder vision tower: every encoder-site strategy,
    and the boundary ones that read the tower's attention."""
    site = VLM_STRATEGIES.get(cfg.name)
    return cfg.name != "none" and (site is None or site.needs_tower(cfg))


def build_vlm(cfg: DictConfig, layout, config, seed: int = 0) -> Strategy:
    """The `pruning` config's strategy for a generative VLM (`layout` from vlms.py, `config` the VLM's
    Hugging Face config): encoder strategies validated for the tower's layers up to the feature layer,
    boundary and LLM-site ones (VLM_STRATEGIES) with their budgets, each numbering its kept tokens as
    `pruning.positions` says; generation.reduced_runner applies it. What the layout cannot take is a one-line
    ConfigError."""
    positions = cfg.get("positions", "compact")
    if positions not in POSITIONS:
        raise ConfigError(f"pruning.positions={positions!r} is unknown; allowed: {', '.join(POSITIONS)}")
    strategy = _build_for_layout(cfg, layout, config, seed)
    if layout.patch_grid and strategy.patchless_tokens:
        raise ConfigError(f"pruning.summary={cfg.summary} cannot be placed on {layout.title}'s packed crop grid (a "
                          "summary token has no patch); use summary=none (cls_preserving, late_layer), tome or pitome")
    strategy.positions = positions  # the instance's own, over the class default
    return strategy


def _build_for_layout(cfg: DictConfig, layout, config, seed: int) -> Strategy:
    family = layout.tower_family(config)
    if family is None and needs_tower(cfg):
        allowed = ["none", *(name for name in VLM_STRATEGIES if not needs_tower(OmegaConf.create({"name": name}))),
                   "cdpruner with pruning.relevance=llm"]
        raise ConfigError(f"pruning={cfg.name}: {layout.name}'s own ViT (2-D RoPE over packed images, a 2x2 "
                          "PatchMerger) takes no encoder-site strategy and exposes no CLS or attention to read; "
                          f"allowed here: {', '.join(allowed)}")
    tokens, count = cfg.get("tokens"), layout.visual_token_count(config)
    if family is not None and cfg.name in VLM_STRATEGIES and VLM_STRATEGIES[cfg.name].per_crop:
        vision = config.vision_config
        count = (vision.image_size // vision.patch_size) ** 2  # the budget is per crop
    counted = cfg.name not in VLM_STRATEGIES or VLM_STRATEGIES[cfg.name].tokens_counted
    if isinstance(tokens, int) and count is not None and tokens > count and counted:
        raise ConfigError(f"pruning.tokens={tokens} is more than the {count} visual tokens of an image here; "
                          f"allowed 1..{count}")
    if cfg.name in VLM_STRATEGIES:
        try:
            return VLM_STRATEGIES[cfg.name].from_config(cfg, layout, config)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    if family is None:
        return _stock(cfg)
    if cfg.get("mass") is not None:
        raise ConfigError(f"pruning.mass={cfg.mass} (adaptive keep) gives each image its own token count, which a "
                          "VLM batch cannot hand over yet; use a fixed pruning.keep")
    vision = layout.encoder_config(config)
    if cfg.get("score") == "pool_attn" and not family.has_cls and not vision.get("vision_use_head", True):
        raise ConfigError(f"pruning.score=pool_attn needs the tower's pooling head, which {layout.name}'s SigLIP tower "
                          "does not have; use l2 or random")
    if cfg.name in MERGING and cfg.r is None:  # keep = the share of the visual tokens the LLM receives
        n_patches = (vision["image_size"] // vision["patch_size"]) ** 2
        keep = check_keep(cfg.keep)
        cfg = OmegaConf.merge(cfg, {"r": merges_for_tokens(n_patches, kept_count(n_patches, keep),
                                                           vision["num_hidden_layers"], family.has_cls)})
        strategy = build(cfg, vision, family.has_cls, seed)
        strategy.keep = keep
        strategy.label = f"{cfg.name}_{kept_count(n_patches, keep)}of{n_patches}" + strategy.label.partition(
            f"_r{'-'.join(map(str, strategy.r))}")[2]  # merges spread to leave that many; knobs after it stay
        return strategy
    return build(cfg, vision, family.has_cls, seed)


def remove_all(model: nn.Module) -> None:
    """The stock model again, whichever strategy was applied."""
    remove_patch(model)
    remove_tome(model)


def apply_config(model: nn.Module, cfg: DictConfig, seed: int = 0, image_size: int | None = None) -> Strategy:
    """Build the `pruning` config's strategy for `model` (any family) and apply it in place."""
    family = family_of(model)
    strategy = build(cfg, family.vision(model).config, family.has_cls, seed, image_size)
    strategy.apply(model)
    return strategy
