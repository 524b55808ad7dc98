"""What every reduction strategy shares: the `Strategy` interface the jobs use, the class swap that
wraps a stock module without editing it (ToMe's trick), and the hook that passes a per-token
attention bias to a family's pooling head (SigLIP's probe attends over every token)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from vlm_eff.errors import ConfigError
from vlm_eff.knobs import check_keep

REDUCE_RANGE = "vlm_eff.reduce"  # every reduction step runs inside this profiler range


def kept_count(n_patches: int, keep: float) -> int:
    """Patch tokens kept out of `n_patches` at one step (the 1e-6 absorbs float error, e.g. 0.29 * 100)."""
    return max(1, math.floor(keep * n_patches + 1e-6))


def default_origins(batch: int, n_tokens: int, has_cls: bool, device: torch.device | None = None) -> torch.Tensor:
    """Origins of an unreduced sequence [CLS?] + patches -> [B, T] long: -1 for CLS, then 0..N-1."""
    return (torch.arange(n_tokens, device=device) - int(has_cls)).expand(batch, n_tokens)


def budget_knobs(cfg, default: tuple[float | None, int | None]) -> tuple[float | None, int | None]:
    """(keep, tokens) of a boundary or LLM-site `pruning` config: one of the two, or the method's `default`."""
    keep, tokens = cfg.get("keep"), cfg.get("tokens")
    if keep is not None and tokens is not None:
        raise ConfigError(f"pruning.keep={keep} and pruning.tokens={tokens} both set: give one (keep = the fraction "
                          "of the visual tokens kept, tokens = how many the language model receives)")
    if keep is None and tokens is None:
        return default
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        raise ConfigError(f"pruning.tokens={tokens!r} must be an integer >= 1 (visual tokens the LLM receives)")
    return (None if keep is None else check_keep(keep)), tokens


class EncoderSite:
    """What a strategy does at each step of a VLM request; the defaults are those of the encoder site: the
    tower is patched, what survives is handed over in spatial order through the layout's own feature
    selection (LLaVA's `default` drops token 0), and nothing happens after the projector or at prefill.
    Boundary and LLM-site strategies (reduction.VLM_STRATEGIES) also say what they need of a layout."""

    site = "encoder"
    hands_over = "spatial"  # or "as_selected": the strategy's own order, CLS included (VisionZip)
    positions = "compact"  # how the LLM numbers the kept visual tokens (pruning.positions; build_vlm sets it)
    origins_key: str | None = None  # where, on the tower's embeddings, the applied strategy records token origins
    patchless_tokens = False  # makes tokens that stand for no patch (a summary): a patch-grid layout cannot place them
    per_crop = False  # the budget counts the tokens of one crop (anyres layouts), not of the whole image
    tokens_counted = True  # `pruning.tokens` counts this model's visual tokens (SparseVLM: the paper's of 576)

    @classmethod
    def needs_tower(cls, cfg) -> bool:
        """Whether the strategy reads a dual-encoder tower (its attention): layouts with their own ViT cannot."""
        return False

    def apply_to_vlm(self, model: nn.Module, layout) -> None:
        self.apply(layout.vision(model))

    def token_origins(self, tower: nn.Module, tokens: torch.Tensor, has_cls: bool) -> torch.Tensor:
        """The patch each token of the (reduced) tower's output `tokens` [B, T, D] stands for -> [B, T] long: a kept
        patch its own index, a merged token the lowest index of its patches, CLS and summaries -1."""
        state = tower.embeddings.__dict__.get(self.origins_key) if self.origins_key else None
        origin = getattr(state, "origin", None)
        if origin is not None and origin.shape == tokens.shape[:2]:
            return origin
        return default_origins(tokens.shape[0], tokens.shape[1], has_cls, tokens.device)  # nothing reduced

    def remove_from_vlm(self, model: nn.Module, layout) -> None:
        self.remove(layout.vision(model))

    def before_visual(self, instructions: list | None) -> None:
        """A new request batch's instructions (generation.Instruction per row; None: not known), before the vision
        part runs (instruction-conditioned strategies read them)."""

    def after_projector(self, images: list) -> list:
        """Each image's visual tokens (vlms.ImageTokens) -> those the LLM receives."""
        return images

    def before_prefill(self, prompt) -> None:
        """A new request's prompt (generation.Prompt), before the language model runs."""


class Strategy(Protocol):
    """A token reduction, validated for one tower: applied to and removed from a model in place."""

    per_image: bool  # token counts differ per image (adaptive keep): the cost is sampled over images

    def apply(self, model: nn.Module) -> None: ...

    def remove(self, model: nn.Module) -> None: ...

    def tokens_per_layer(self, n_patches: int, n_layers: int, has_cls: bool) -> list[int]:
        """Tokens entering each encoder layer's attention (the last: what the last layer sees)."""
        ...

    def columns(self) -> dict:
        """The strategy columns of a result row: keep, layer, score."""
        ...


class NoReduction(EncoderSite):
    """The stock model (`pruning=none`)."""

    per_image = False

    def apply(self, model: nn.Module) -> None:
        pass

    def remove(self, model: nn.Module) -> None:
        pass

    def tokens_per_layer(self, n_patches: int, n_layers: int, has_cls: bool) -> list[int]:
        return [int(has_cls) + n_patches] * n_layers

    def columns(self) -> dict:
        return {"keep": 1.0, "layer": "", "score": ""}


_SWAPPED: dict[tuple[type, type], type] = {}


def swap_class(module: nn.Module, mixin: type, attr: str, state) -> None:
    """Give `module` the class `mixin + its class` (ToMe's trick: the stock forward stays reachable
    through super()), with `state` as `module.<attr>`; `restore_classes` undoes it."""
    base = module.__class__
    if (mixin, base) not in _SWAPPED:
        _SWAPPED[(mixin, base)] = type(f"{mixin.__name__.strip('_')}{base.__name__}", (mixin, base), {})
    module._original_class = base
    setattr(module, attr, state)
    module.__class__ = _SWAPPED[(mixin, base)]


def restore_classes(tower: nn.Module, tower_attr: str, attr: str) -> None:
    """Undo `swap_class` for the modules holding `attr`, and remove the hooks kept in `tower.<tower_attr>`."""
    _, handles = tower.__dict__.pop(tower_attr, (None, []))
    for handle in handles:
        handle.remove()
    for module in tower.modules():
        if attr in module.__dict__:
            module.__class__ = module.__dict__.pop("_original_class")
            delattr(module, attr)


def bias_pooling(attention: nn.MultiheadAttention | None, bias: Callable[[], torch.Tensor | None]) -> list:
    """Add `bias()` ([B, 1, 1, T] additive, or None) to the logits of a pooling head's attention
    (`nn.MultiheadAttention`, query = the probe) on every forward; returns the hook handles."""
    if attention is None:
        return []

    def hook(module: nn.MultiheadAttention, args, kwargs):
        token_bias = bias()
        if token_bias is None:
            return None
        B, T = token_bias.shape[0], token_bias.shape[-1]
        mask = token_bias.expand(B, module.num_heads, 1, T).reshape(B * module.num_heads, 1, T)  # [B * H, 1, T]
        return args, {**kwargs, "attn_mask": mask.to(args[0].dtype)}

    return [attention.register_forward_pre_hook(hook, with_kwargs=True)]
