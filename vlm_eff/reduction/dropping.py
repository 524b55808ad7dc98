"""Token dropping for every tower family (towers.py): one mechanism, many presets (naive,
position_aware, cls_preserving, late_layer, evit, adaptive keep).

At each reduction step the `keep` fraction of *patch* tokens with the highest `score` is kept, in
their original spatial order; CLS (where the tower has one) may be kept at index 0 and a summary
token may stand for the rest. Towers without CLS (SigLIP) pool every remaining token, summaries
included, through their attention head. `apply_patch` wraps a stock model in place (ToMe-style
class swap, the stock forward code is untouched) and `remove_patch` restores it exactly.

Knobs (the README's "Token reduction" section has the presets):
    keep      fraction of patch tokens kept per step, in (0, 1]: k = max(1, floor(keep * N + 1e-6))
    layer     -1: raw patch embeddings (before positions and CLS); k >= 0: after k encoder layers
              (0 = the embeddings output, before pre_layrnorm); a list reduces at each; None = L // 2
    score     l2 (norm of the residual stream), cls_attn (attention from token 0, CLS or the summary that
              replaced it, in the layer just run, averaged over heads; layer >= 1; CLS towers only),
              pool_attn (the attention the pooled query pays to each token: cls_attn on CLS towers; on
              SigLIP the head's probe, with the head's own projections, on post_layernorm of the tokens;
              layer >= 1), random (seeded: the control)
    keep_cls  keep the original CLS token at index 0 (the pooler reads index 0); false needs summary=mean
              on CLS towers; nothing to keep on towers without CLS
    summary   none | mean (mean of all patch tokens at that point) | fused (score-weighted mean of the
              dropped tokens, EViT). Where CLS is dropped the summary takes index 0; where kept, it
              goes right after CLS. A later step folds the previous fused token into the new one.
    mass      None, or adaptive keep: each image keeps the fewest top-scoring patches holding this
              share of its patch score mass (at most the `keep` count); the batch is padded to the
              largest budget and the padding is masked out of every later attention (and the pooling head)

Over 350 lines on purpose: five presets and adaptive keep are one mechanism (score, keep, fuse, re-pad,
mask), and the class swap that applies it must see all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from vlm_eff.knobs import check_keep
from vlm_eff.reduction import trace
from vlm_eff.reduction.base import (
    REDUCE_RANGE,
    EncoderSite,
    bias_pooling,
    default_origins,
    kept_count,
    restore_classes,
    swap_class,
)
from vlm_eff.towers import family_of, vision_tower

SCORES = ("l2", "cls_attn", "pool_attn", "random")
SUMMARIES = ("none", "mean", "fused")


@dataclass
class Reduction(EncoderSite):
    """A validated point in the reduction space, for a tower with or without CLS (a `Strategy`)."""

    origins_key = "_reducer"

    @property
    def patchless_tokens(self) -> bool:
        return self.summary != "none"

    keep: float
    layers: tuple[int, ...]
    score: str
    keep_cls: bool
    summary: str
    seed: int = 0
    mass: float | None = None
    has_cls: bool = True

    @classmethod
    def create(
        cls,
        n_layers: int,
        keep: float = 1.0,
        layer: int | Sequence[int] | None = 0,
        score: str = "l2",
        keep_cls: bool = True,
        summary: str = "none",
        seed: int = 0,
        mass: float | None = None,
        has_cls: bool = True,
    ) -> "Reduction":
        """Check every knob against an encoder of `n_layers` layers (with or without CLS); errors are one line each."""
        keep = check_keep(keep)
        if layer is None:
            layer = n_layers // 2
        layers = (layer,) if isinstance(layer, int) else tuple(layer)
        if not layers or any(isinstance(k, bool) or not isinstance(k, int) for k in layers):
            raise ValueError(f"pruning.layer={layer!r} must be an int or a list of ints in -1..{n_layers - 1}")
        for k in layers:
            if not -1 <= k <= n_layers - 1:
                raise ValueError(
                    f"pruning.layer={k} is out of range for a {n_layers}-layer encoder; allowed -1..{n_layers - 1}"
                )
        if score not in SCORES:
            raise ValueError(f"pruning.score={score!r} is unknown; allowed: {', '.join(SCORES)}")
        if summary not in SUMMARIES:
            raise ValueError(f"pruning.summary={summary!r} is unknown; allowed: {', '.join(SUMMARIES)}")
        if score == "cls_attn" and not has_cls:
            raise ValueError("pruning.score=cls_attn needs a CLS token and this tower has none (SigLIP); "
                             "use pool_attn (the pooling head's attention), l2 or random")
        if score in ("cls_attn", "pool_attn") and min(layers) < 1:
            raise ValueError(
                f"pruning.score={score} needs pruning.layer >= 1 (attention of a layer that has run), got {min(layers)}"
            )
        if has_cls and not keep_cls and summary != "mean":
            raise ValueError(
                f"pruning.keep_cls=false with pruning.summary={summary} can leave a patch at index 0 for the pooler "
                "(a fused token exists only where tokens are dropped); use summary=mean or keep_cls=true"
            )
        if mass is not None:
            if isinstance(mass, bool) or not isinstance(mass, (int, float)) or not 0 < mass <= 1:
                raise ValueError(f"pruning.mass={mass!r} is outside (0, 1]: the share of score mass each image keeps")
            if len(layers) > 1 or (has_cls and not keep_cls) or summary != "none":
                raise ValueError("pruning.mass (adaptive keep) needs one pruning.layer, keep_cls=true and summary=none")
            mass = float(mass)
        return cls(keep, tuple(sorted(set(layers))), score, bool(keep_cls), summary, int(seed), mass, has_cls)

    @property
    def per_image(self) -> bool:
        return self.mass is not None

    def apply(self, model: nn.Module) -> None:
        apply_reduction(model, self)

    def remove(self, model: nn.Module) -> None:
        remove_patch(model)

    def columns(self) -> dict:
        layers, score = self.layers, self.score if self.mass is None else f"{self.score} mass={self.mass}"
        return {"keep": self.keep, "layer": layers[0] if len(layers) == 1 else " ".join(map(str, layers)),
                "score": score}

    def tokens_per_layer(self, n_patches: int, n_layers: int, has_cls: bool | None = None) -> list[int]:
        """Tokens entering each of the `n_layers` encoder layers (the last entry is what the last layer sees)."""
        has_cls = self.has_cls if has_cls is None else has_cls
        has_summary, patches = False, n_patches
        counts = []

        def step() -> None:
            nonlocal has_cls, has_summary, patches
            k = kept_count(patches, self.keep)
            dropped = k < patches
            has_summary = self.summary == "mean" or (self.summary == "fused" and (dropped or has_summary))
            has_cls = has_cls and self.keep_cls
            patches = k

        if -1 in self.layers:
            has_cls = has_cls and self.keep_cls
            step()
        for index in range(n_layers):
            if index in self.layers:
                step()
            counts.append(int(has_cls) + int(has_summary) + patches)
        return counts


def tokens_per_layer(reduction: Reduction | None, n_patches: int, n_layers: int, has_cls: bool = True) -> list[int]:
    """Tokens entering each encoder layer under `reduction` (None: the stock model)."""
    if reduction is None:
        return [int(has_cls) + n_patches] * n_layers
    return reduction.tokens_per_layer(n_patches, n_layers, has_cls)


class Reducer:
    """Holds the knobs and the per-forward layout; `reduce` is one reduction step."""

    def __init__(self, reduction: Reduction, tower: nn.Module, num_heads: int):
        self.reduction = reduction
        self.tower = tower  # for pool_attn without CLS: the tower's post_layernorm and pooling head
        self.num_heads = num_heads
        self.generator = torch.Generator().manual_seed(reduction.seed)
        self.has_cls = reduction.has_cls
        self.has_summary = False
        self.captured: dict[str, torch.Tensor] = {}
        self.padding_mask: torch.Tensor | None = None  # [B, 1, 1, T] additive, -inf-like on padding (adaptive keep)
        self.budgets: torch.Tensor | None = None  # [B] patches each image kept (adaptive keep)
        self.origin: torch.Tensor | None = None  # [B, T] the patch each token stands for, -1 CLS/summary (None: unreduced)
        self.sources: torch.Tensor | None = None  # [B, T, N] while tracing (trace.py): the patches each token stands for
        self.steps = 0  # reduction steps made in this forward

    def start(self, has_cls: bool) -> None:
        """Begin a forward pass: the sequence is [CLS?] + patches."""
        self.has_cls, self.has_summary, self.padding_mask, self.origin = has_cls, False, None, None
        self.sources, self.steps = None, 0

    @property
    def uses_token0_attention(self) -> bool:
        """Whether the score is the attention of token 0 (q/k captured from the layer just run)."""
        r = self.reduction
        return r.score == "cls_attn" or (r.score == "pool_attn" and r.has_cls)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Importance of every token of x [B, T, D] -> [B, T]."""
        if self.reduction.score == "l2":
            return x.float().norm(dim=-1)
        if self.reduction.score == "random":
            return torch.rand(x.shape[:2], generator=self.generator).to(x.device)
        if self.uses_token0_attention:
            return self.cls_attention()
        return self.probe_attention(x)

    def cls_attention(self) -> torch.Tensor:
        """Attention from token 0 to every token in the layer just run, averaged over heads -> [B, T]."""
        q, k = self.captured.pop("q"), self.captured.pop("k")  # [B, T, D] each
        B, T, D = k.shape
        H = self.num_heads
        q0 = q[:, :1].float().view(B, 1, H, D // H).transpose(1, 2)  # [B, H, 1, hd]
        keys = k.float().view(B, T, H, D // H).transpose(1, 2)  # [B, H, T, hd]
        attn = (q0 @ keys.transpose(-1, -2) * (D // H) ** -0.5).softmax(dim=-1)  # [B, H, 1, T]
        return attn.mean(dim=1).squeeze(1)  # [B, T]

    def probe_attention(self, x: torch.Tensor) -> torch.Tensor:
        """The pooling head's attention from its probe to every token of x [B, T, D], with the head's own
        query/key projections applied to post_layernorm(x), averaged over heads -> [B, T]."""
        head = self.tower.head
        attention = head.attention
        B, T, D = x.shape
        H = attention.num_heads
        w_q, w_k, _ = attention.in_proj_weight.float().chunk(3)  # [D, D] each
        b_q, b_k, _ = attention.in_proj_bias.float().chunk(3)  # [D] each
        keys = F.linear(self.tower.post_layernorm(x).float(), w_k, b_k)  # [B, T, D]
        query = F.linear(head.probe.float(), w_q, b_q)  # [1, 1, D]
        query = query.view(1, H, 1, D // H)  # [1, H, 1, hd]
        keys = keys.view(B, T, H, D // H).transpose(1, 2)  # [B, H, T, hd]
        attn = (query @ keys.transpose(-1, -2) * (D // H) ** -0.5).softmax(dim=-1)  # [B, H, 1, T]
        return attn.mean(dim=1).squeeze(1)  # [B, T]

    @record_function(REDUCE_RANGE)
    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """One step on x = [CLS?][summary?] + patches, [B, T, D] -> [CLS?][summary?] + kept patches."""
        r = self.reduction
        if r.mass is not None:
            return self.reduce_adaptive(x)
        n_prefix = int(self.has_cls) + int(self.has_summary)
        patches = x[:, n_prefix:]  # [B, N, D]
        B, N, D = patches.shape
        k = kept_count(N, r.keep)
        adds_summary = r.summary == "mean" or (r.summary == "fused" and self.has_summary)  # fused: only if one exists
        if k == N and not adds_summary and (r.keep_cls or not self.has_cls):
            self.captured.clear()
            return x  # nothing dropped, nothing added: the stock sequence, untouched

        scores = self.scores(x)  # [B, T]
        patch_scores = scores[:, n_prefix:]  # [B, N]
        kept_idx = patch_scores.topk(k, dim=1).indices.sort(dim=1).values  # [B, k], spatial order
        kept = patches.gather(1, kept_idx.unsqueeze(-1).expand(B, k, D))  # [B, k, D]

        parts = []
        if self.has_cls and r.keep_cls:
            parts.append(x[:, :1])
        summary = self.summary(x, patches, scores, n_prefix, kept_idx)
        if summary is not None:
            parts.append(summary)
        parts.append(kept)
        self.track_origins(x, n_prefix, kept_idx, len(parts) - 1)
        if trace.active():
            self.trace_step(x, n_prefix, kept_idx, summary is not None)
        self.has_cls = self.has_cls and r.keep_cls
        self.has_summary = summary is not None
        return torch.cat(parts, dim=1)

    def track_origins(self, x: torch.Tensor, n_prefix: int, kept_idx: torch.Tensor, n_special: int) -> None:
        """Origins after a step: -1 for the `n_special` CLS / summary tokens, then the kept patches' own."""
        origin = self.origin if self.origin is not None else default_origins(x.shape[0], x.shape[1], self.has_cls,
                                                                             x.device)  # [B, T]
        kept = origin[:, n_prefix:].gather(1, kept_idx)  # [B, k]
        self.origin = torch.cat([kept.new_full((kept.shape[0], n_special), -1), kept], dim=1)  # [B, n_special + k]

    def trace_step(self, x: torch.Tensor, n_prefix: int, kept_idx: torch.Tensor, adds_summary: bool,
                   valid: torch.Tensor | None = None) -> None:
        """Record this step (trace.py): CLS if kept, the summary token (a mean: every patch still there; fused:
        the patches dropped now and what an earlier fused token held), then the kept patches (`valid`: padding)."""
        sources = self.sources if self.sources is not None else trace.patch_sources(
            x.shape[0], x.shape[1], self.has_cls, x.device)  # [B, T, N]
        patches = sources[:, n_prefix:]  # [B, P, N]
        kept = patches.gather(1, kept_idx[..., None].expand(-1, -1, patches.shape[-1]))  # [B, k, N]
        if valid is not None:
            kept = kept & valid[..., None]
        rows = [sources[:, :1]] if self.has_cls and self.reduction.keep_cls else []
        if adds_summary:
            covered = patches.any(dim=1) if self.reduction.summary == "mean" else patches.any(dim=1) & ~kept.any(dim=1)
            if self.reduction.summary == "fused" and self.has_summary:
                covered = covered | sources[:, n_prefix - 1]  # the earlier fused token folds in
            rows.append(covered[:, None])
        rows.append(kept)
        self.sources = torch.cat(rows, dim=1)  # [B, T', N]
        summary = torch.zeros(self.sources.shape[:2], dtype=torch.bool, device=x.device)
        if adds_summary:
            summary[:, len(rows) - 2] = True
        trace.record(f"layer {self.reduction.layers[self.steps]}", self.sources, summary)
        self.steps += 1

    def reduce_adaptive(self, x: torch.Tensor) -> torch.Tensor:
        """x = [CLS?] + patches [B, P + N, D] -> [CLS?] + each image's own budget of patches, in spatial
        order, zero-padded at the end to the batch's largest budget (`self.padding_mask` hides the padding
        from every later attention and from the pooling head)."""
        n_prefix = int(self.has_cls)
        patches = x[:, n_prefix:]  # [B, N, D]
        B, N, D = patches.shape
        scores = self.scores(x)[:, n_prefix:].float()  # [B, N]
        order = scores.argsort(dim=1, descending=True)  # [B, N]
        share = scores.gather(1, order) / scores.sum(dim=1, keepdim=True)  # [B, N], largest first
        budget = ((share.cumsum(dim=1) < self.reduction.mass).sum(dim=1) + 1).clamp(max=kept_count(N, self.reduction.keep))
        K = int(budget.max())
        top = order[:, :K]  # [B, K]
        valid = torch.arange(K, device=x.device) < budget[:, None]  # [B, K]
        perm = torch.where(valid, top, top + N).argsort(dim=1)  # kept in spatial order, padding last
        top, valid = top.gather(1, perm), valid.gather(1, perm)
        kept = patches.gather(1, top.unsqueeze(-1).expand(B, K, D)) * valid.unsqueeze(-1).to(x.dtype)  # [B, K, D]
        self.budgets = budget
        self.track_origins(x, n_prefix, top, n_prefix)
        if trace.active():
            self.trace_step(x, n_prefix, top, False, valid)
        valid = torch.cat([valid.new_ones(B, n_prefix), valid], dim=1)  # [B, P + K]
        mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_fill(~valid, torch.finfo(x.dtype).min)
        self.padding_mask = mask[:, None, None, :]  # [B, 1, 1, P + K], built once for all later layers
        return torch.cat([x[:, :n_prefix], kept], dim=1)

    def summary(self, x, patches, scores, n_prefix, kept_idx) -> torch.Tensor | None:
        """The summary token [B, 1, D] for this step, or None."""
        r = self.reduction
        if r.summary == "mean":
            return patches.mean(dim=1, keepdim=True)
        if r.summary == "none":
            return None
        B, N, D = patches.shape
        dropped_mask = torch.ones(B, N, dtype=torch.bool, device=x.device)
        dropped_mask.scatter_(1, kept_idx, False)
        weights = scores[:, n_prefix:] * dropped_mask  # [B, N], zero on kept tokens
        total = (weights.unsqueeze(-1) * patches.float()).sum(dim=1, keepdim=True)  # [B, 1, D]
        mass = weights.sum(dim=1, keepdim=True).unsqueeze(-1)  # [B, 1, 1]
        if self.has_summary:  # fold the previous fused token in with its own score
            previous_weight = scores[:, n_prefix - 1].view(B, 1, 1)
            total = total + previous_weight * x[:, n_prefix - 1 : n_prefix].float()
            mass = mass + previous_weight
        elif kept_idx.shape[1] == N:
            return None  # nothing dropped and nothing to carry
        return (total / mass.clamp_min(torch.finfo(torch.float32).tiny)).to(x.dtype)


class _ReducingEmbeddings:
    """Mixin for a vision tower's embeddings: reduce raw patch embeddings (layer -1) and/or its output (layer 0)."""

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        reducer: Reducer = self._reducer
        layers = reducer.reduction.layers
        if -1 in layers:
            x = self.raw_patch_tokens(pixel_values)  # [B, 1? + N, D], no positions on patches
        else:
            x = super().forward(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)  # [B, 1? + N, D]
            reducer.start(has_cls=reducer.reduction.has_cls)
        if 0 in layers:
            x = reducer.reduce(x)
        return x

    def raw_patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The seed's method: reduce patch embeddings before positions and CLS; CLS (with its position) if kept."""
        reducer: Reducer = self._reducer
        patch_embeds = self.patch_embedding(pixel_values.to(dtype=self.patch_embedding.weight.dtype))  # [B, D, h, w]
        patches = patch_embeds.flatten(2).transpose(1, 2)  # [B, N, D]
        B, _, D = patches.shape
        keep_cls = reducer.reduction.keep_cls and reducer.reduction.has_cls
        if keep_cls:
            cls = self.class_embedding + self.position_embedding.weight[0]  # [D]
            patches = torch.cat([cls.expand(B, 1, D), patches], dim=1)  # [B, 1 + N, D]
        reducer.start(has_cls=keep_cls)
        return reducer.reduce(patches)


class _ReducingLayer:
    """Mixin for an encoder layer: reduce its output (that is, at `layer = index + 1`)."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self._reducer.reduce(super().forward(hidden_states, *args, **kwargs))


def apply_patch(model: nn.Module, **knobs) -> Reduction:
    """Make `model`'s vision tower (any family) reduce tokens as described in the module docstring; `knobs` are
    `Reduction.create`'s (keep, layer, score, keep_cls, summary, seed, mass; its defaults where left out).
    Returns the validated `Reduction`. Re-applying replaces an earlier patch (kept if the new knobs are invalid)."""
    family = family_of(model)
    reduction = Reduction.create(len(vision_tower(model).encoder.layers), **knobs, has_cls=family.has_cls)
    apply_reduction(model, reduction)
    return reduction


def apply_reduction(model: nn.Module, reduction: Reduction) -> None:
    """Patch `model` with an already validated `reduction` (replacing an earlier patch)."""
    family = family_of(model)
    tower = family.vision(model)
    layers = tower.encoder.layers
    remove_patch(model)
    reducer = Reducer(reduction, tower, num_heads=layers[0].self_attn.num_heads)
    handles = []
    swap_class(tower.embeddings, _ReducingEmbeddings, "_reducer", reducer)
    for k in reduction.layers:
        if k < 1:
            continue
        reduced_layer = layers[k - 1]
        swap_class(reduced_layer, _ReducingLayer, "_reducer", reducer)
        if reducer.uses_token0_attention:
            for name in ("q", "k"):
                proj = getattr(reduced_layer.self_attn, f"{name}_proj")
                handles.append(proj.register_forward_hook(_capture(reducer, name)))
    if reduction.mass is not None:
        handles += [layer.register_forward_pre_hook(_mask_padding(reducer), with_kwargs=True) for layer in layers]
        handles += bias_pooling(family.pooling_attention(tower), lambda: reducer.padding_mask)
    tower._token_reduction = (reduction, handles)


def _mask_padding(reducer: Reducer):
    """A layer pre-hook passing the padding (adaptive keep) as the layer's additive attention mask."""

    def hook(module, args, kwargs):
        if reducer.padding_mask is None:
            return None
        return (args[0], reducer.padding_mask, *args[2:]), kwargs

    return hook


def _capture(reducer: Reducer, name: str):
    def hook(module, args, output):
        reducer.captured[name] = output  # [B, T, D]

    return hook


def remove_patch(model: nn.Module) -> None:
    """Undo `apply_patch`: original classes back, hooks removed. A no-op on an unpatched model."""
    restore_classes(vision_tower(model), "_token_reduction", "_reducer")


def adaptive_budgets(model: nn.Module) -> torch.Tensor | None:
    """Patches each image of the last forward kept under adaptive keep ([B]), else None."""
    reducer = getattr(vision_tower(model).embeddings, "_reducer", None)
    return None if reducer is None else reducer.budgets


def current_reduction(model: nn.Module) -> Reduction | None:
    """The `Reduction` applied to `model`, or None when it runs stock."""
    return vision_tower(model).__dict__.get("_token_reduction", (None, None))[0]
