"""Token merging for every tower family (towers.py), training-free: ToMe (Bolya et al., ICLR 2023)
and PiToMe (Tran et al., NeurIPS 2024), which differ only in how they pick the pairs to merge.

In every encoder layer, between attention and MLP, `r` tokens are merged into their most similar
partners by bipartite soft matching on the attention keys (mean over heads); merged tokens are
size-weighted averages, and with proportional attention each token's attention logit gets
log(size) added (through SDPA's additive mask, so no eager attention is forced), in the encoder
layers and, on towers that pool with an attention head (SigLIP), in the head's attention too. CLS
is never merged; towers without CLS have no protected token. `r` is one count for every layer, a
schedule built from it (ToMe's `parse_r`: `decreasing` runs linearly from 2r down to 0,
`increasing` from 0 up to 2r; about r per layer), or a list with one count per layer. `apply_tome` / `apply_pitome` swap the layers' classes in place,
ToMe-style; `remove_tome` restores them.

PiToMe protects the tokens that are unlike the rest: each token's energy is the mean over all tokens
of elu(cos - margin, alpha) (high = redundant), the 2r highest-energy tokens are split alternately
into two sets, and each token of the first merges into its most similar token of the second.

Over 350 lines on purpose: one merging mechanism serves both methods, and the merge-count arithmetic it
validates against (r for a FLOP-matched keep, merges that leave a token count) sits beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from vlm_eff.errors import ConfigError
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
from vlm_eff.towers import family_of


def merges(r: int, n_tokens: int, has_cls: bool = True) -> int:
    """Merges a layer with `n_tokens` tokens can make: r, capped at half the unprotected (non-CLS) tokens."""
    return min(r, (n_tokens - int(has_cls)) // 2)


SCHEDULES = ("constant", "decreasing", "increasing")


def check_r(r, n_layers: int, schedule: str = "constant") -> None:
    """r: an integer >= 0, or a list of one such integer per layer (then the schedule must be constant)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"pruning.schedule={schedule!r} is unknown; allowed: {', '.join(SCHEDULES)}")
    counts = list(r) if isinstance(r, Sequence) else [r]
    if not counts or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts):
        raise ValueError(f"pruning.r={r!r} must be an integer >= 0 (tokens merged per layer) or a list of them")
    if isinstance(r, Sequence):
        if len(counts) != n_layers:
            raise ValueError(f"pruning.r={counts} has {len(counts)} entries; a {n_layers}-layer encoder needs {n_layers}")
        if schedule != "constant":
            raise ValueError(f"pruning.r={counts} is already a schedule: leave pruning.schedule=constant, not {schedule}")
    elif schedule != "constant" and n_layers < 2:
        raise ValueError(f"pruning.schedule={schedule} needs at least 2 layers; this encoder has {n_layers}")


def r_schedule(r: int | Sequence[int], n_layers: int, schedule: str = "constant") -> tuple[int, ...]:
    """Merges per layer (ToMe's `parse_r`): constant r, linearly 2r -> 0 (decreasing) or 0 -> 2r
    (increasing; truncated to integers, so about r per layer on average), or `r` itself when it
    is already a list."""
    check_r(r, n_layers, schedule)
    if isinstance(r, Sequence):
        return tuple(r)
    inflect = {"constant": 0, "decreasing": -1, "increasing": 1}[schedule]
    first = int(r * (1 - inflect))
    step = (2 * r - 2 * first) / max(1, n_layers - 1)
    return tuple(int(first + step * i) for i in range(n_layers))


def bipartite_soft_matching(metric: torch.Tensor, r: int, protect_first: bool = True):
    """ToMe's matching on metric [B, T, C] (token 0 = CLS, protected, if `protect_first`): a `merge(x, mode)`
    that maps [B, T, C'] to [B, T - r, C'], merging the r most similar tokens of the even set into the odd set."""
    r = merges(r, metric.shape[1], protect_first)
    if r <= 0:
        return lambda x, mode="mean": x
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[:, ::2], metric[:, 1::2]  # [B, Ta, C], [B, Tb, C]
        scores = a @ b.transpose(-1, -2)  # [B, Ta, Tb]
        if protect_first:
            scores[:, 0, :] = -math.inf  # CLS (a's first token) is never merged
        node_max, node_idx = scores.max(dim=-1)  # [B, Ta]
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]  # [B, Ta, 1]
        unmerged_idx = edge_idx[:, r:].sort(dim=1).values  # [B, Ta - r, 1], CLS (if any) stays first
        src_idx = edge_idx[:, :r]  # [B, r, 1]
        dst_idx = node_idx[..., None].gather(dim=1, index=src_idx)  # [B, r, 1]

    def merge(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        src, dst = x[:, ::2], x[:, 1::2]  # [B, Ta, C], [B, Tb, C]
        B, Ta, C = src.shape
        unmerged = src.gather(dim=1, index=unmerged_idx.expand(B, Ta - r, C))  # [B, Ta - r, C]
        src = src.gather(dim=1, index=src_idx.expand(B, r, C))  # [B, r, C]
        dst = dst.scatter_reduce(1, dst_idx.expand(B, r, C), src, reduce=mode)  # [B, Tb, C]
        return torch.cat([unmerged, dst], dim=1)  # [B, T - r, C]

    return merge


def energy_matching(metric: torch.Tensor, r: int, margin: float, alpha: float = 1.0, protect_first: bool = True):
    """PiToMe's matching on metric [B, T, C] (token 0 = CLS, protected, if `protect_first`): a
    `merge(x, mode)` that maps [B, T, C'] to [B, T - r, C'] as [CLS, the kept tokens, the merge targets]."""
    r = merges(r, metric.shape[1], protect_first)
    if r <= 0:
        return lambda x, mode="mean": x
    first = int(protect_first)
    with torch.no_grad():
        metric = F.normalize(metric[:, first:], dim=-1)  # [B, P, C], P = T - first
        sim = metric @ metric.transpose(-1, -2)  # [B, P, P]
        energy = F.elu(sim - margin, alpha=alpha).mean(dim=-1)  # [B, P]
        order = energy.argsort(dim=-1, descending=True)  # [B, P], most redundant first
        src_idx, dst_idx, kept_idx = order[:, : 2 * r : 2], order[:, 1 : 2 * r : 2], order[:, 2 * r :]  # [B, r] x2, [B, P - 2r]
        B, P = order.shape
        pair_sim = sim.gather(1, src_idx[..., None].expand(B, r, P)).gather(2, dst_idx[:, None].expand(B, r, r))  # [B, r, r]
        partner = pair_sim.argmax(dim=-1)  # [B, r]: each source token's most similar target

    def merge(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        protected, x = x[:, :first], x[:, first:]  # [B, first, C], [B, P, C]
        C = x.shape[-1]

        def take(index: torch.Tensor) -> torch.Tensor:  # [B, n] -> [B, n, C]
            return x.gather(1, index[..., None].expand(*index.shape, C))

        dst = take(dst_idx).scatter_reduce(1, partner[..., None].expand(B, r, C), take(src_idx), reduce=mode)  # [B, r, C]
        return torch.cat([protected, take(kept_idx), dst], dim=1)  # [B, T - r, C]

    return merge


def r_for_keep(keep: float, n_tokens: int, n_layers: int, width: int, mlp_width: int,
               schedule: str = "constant", has_cls: bool = True) -> int:
    """The r (of `schedule`) whose encoder FLOPs come closest to those of keeping `keep` of the
    patch tokens from the start (cls_preserving at layer 0): keep 0.5 means the same work.
    `n_tokens` counts CLS where the tower has one."""
    def layer_flops(t_attn: int, t_mlp: int) -> float:  # multiply-adds of one layer
        return 4 * t_attn * width**2 + 2 * t_attn**2 * width + 2 * t_mlp * width * mlp_width

    def merged(r: int) -> float:
        counts = r_schedule(r, n_layers, schedule)
        tokens = tome_tokens_per_layer(counts, n_tokens, has_cls)
        return sum(layer_flops(t, t - merges(n, t, has_cls)) for t, n in zip(tokens, counts))

    patches = n_tokens - int(has_cls)
    kept = int(has_cls) + kept_count(patches, keep)  # CLS + kept patches in every layer
    target = n_layers * layer_flops(kept, kept)
    return min(range(patches + 1), key=lambda r: abs(merged(r) - target))


@dataclass
class ToMe(EncoderSite):
    """ToMe's knobs (a `Strategy`) and the per-forward token sizes ([B, T, 1]; None = all ones)."""

    origins_key = "_tome"

    r: tuple[int, ...]  # merges in each layer
    prop_attn: bool = True
    keep: float | None = None  # the keep ratio r was chosen for, if any
    label: str = ""  # how r was given, e.g. `tome_r16` or `tome_r16_decreasing`
    has_cls: bool = True  # protect token 0
    size: torch.Tensor | None = None
    origin: torch.Tensor | None = None  # [B, T] each token's lowest patch index, -1 for CLS (None: unmerged)
    sources: torch.Tensor | None = None  # [B, T, N] while tracing (trace.py): the patches each token holds
    keys: dict = field(default_factory=dict)
    per_image = False
    name = "tome"

    @classmethod
    def create(cls, r: int | Sequence[int], n_layers: int, prop_attn: bool = True, keep: float | None = None,
               schedule: str = "constant", has_cls: bool = True) -> "ToMe":
        """Validated knobs: `r` and `schedule` spread over `n_layers` layers (errors are one line each)."""
        counts = r_schedule(r, n_layers, schedule)
        label = f"{cls.name}_r" + ("-".join(map(str, counts)) if isinstance(r, Sequence) else
                                   f"{r}" + ("" if schedule == "constant" else f"_{schedule}"))
        label += "" if prop_attn else "_noprop"  # proportional attention off
        return cls(r=counts, prop_attn=prop_attn, keep=keep, label=label, has_cls=has_cls)

    def match(self, metric: torch.Tensor, layer: int):
        """The merge for one layer's metric [B, T, C] (bipartite soft matching)."""
        return bipartite_soft_matching(metric, self.r[layer], self.has_cls)

    def apply(self, model: nn.Module) -> None:
        apply_merging(model, self)

    def remove(self, model: nn.Module) -> None:
        remove_tome(model)

    def columns(self) -> dict:
        return {"keep": "" if self.keep is None else self.keep, "layer": "all", "score": self.label}

    def tokens_per_layer(self, n_patches: int, n_layers: int, has_cls: bool | None = None) -> list[int]:
        has_cls = self.has_cls if has_cls is None else has_cls
        return tome_tokens_per_layer(self.r, int(has_cls) + n_patches, has_cls)

    def attention_bias(self) -> torch.Tensor | None:
        """log(size) for each token [B, 1, 1, T] (proportional attention), or None while sizes are even."""
        if not self.prop_attn or self.size is None:
            return None
        return self.size.log().transpose(1, 2)[:, None]  # [B, 1, 1, T]


def default_margins(n_layers: int) -> tuple[float, ...]:
    """PiToMe's margin per layer i of L: 0.9 - 0.9 i / L (the authors' CLIP setting)."""
    return tuple(0.9 - 0.9 * i / n_layers for i in range(n_layers))


@dataclass
class PiToMe(ToMe):
    """PiToMe's knobs: ToMe's, plus the energy margin of each layer and the ELU's alpha."""

    margin: tuple[float, ...] = ()
    alpha: float = 1.0
    name = "pitome"

    @classmethod
    def create(cls, r: int | Sequence[int], n_layers: int, prop_attn: bool = True, keep: float | None = None,
               schedule: str = "constant", has_cls: bool = True, margin: float | Sequence[float] | None = None,
               alpha: float = 1.0) -> PiToMe:
        """ToMe's knobs, and `margin`: None (`default_margins`), one float for every layer, or one per layer."""
        state = super().create(r, n_layers, prop_attn, keep, schedule, has_cls)
        if margin is None:
            state.margin = default_margins(n_layers)
        else:
            margins = list(margin) if isinstance(margin, Sequence) else [margin] * n_layers
            if len(margins) != n_layers or not all(
                    isinstance(m, (int, float)) and not isinstance(m, bool) and -1 <= m < 1 for m in margins):
                raise ValueError(f"pruning.margin={margin!r} must be a cosine in [-1, 1) or a list of "
                                 f"{n_layers} of them (one per layer), or null for 0.9 - 0.9 i / L")
            state.margin = tuple(float(m) for m in margins)
            shown = state.margin[:1] if len(set(state.margin)) == 1 else state.margin
            state.label += "_margin" + "-".join(f"{m:g}" for m in shown)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
            raise ValueError(f"pruning.alpha={alpha!r} must be a number > 0 (the ELU's alpha)")
        state.alpha = float(alpha)
        state.label += "" if alpha == 1 else f"_alpha{alpha:g}"
        return state

    def match(self, metric: torch.Tensor, layer: int):
        """The merge for one layer's metric [B, T, C] (energy-protected matching)."""
        return energy_matching(metric, self.r[layer], self.margin[layer], self.alpha, self.has_cls)


class _MergingEmbeddings:
    """Mixin for a vision tower's embeddings: every forward starts with tokens of size 1."""

    def forward(self, *args, **kwargs) -> torch.Tensor:
        self._tome.size = self._tome.origin = self._tome.sources = None
        return super().forward(*args, **kwargs)


class _MergingLayer:
    """Mixin for an encoder layer: attention (proportional to token size), merge r tokens, MLP."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        state, index = self._tome  # ToMe or PiToMe, this layer's index
        r = state.r[index]
        if state.prop_attn and state.size is not None:  # also where this layer merges nothing: sizes are uneven
            with record_function(REDUCE_RANGE):
                bias = state.attention_bias().to(hidden_states.dtype)  # [B, 1, 1, T]
                attention_mask = bias if attention_mask is None else attention_mask + bias
        if r == 0:
            out = super().forward(hidden_states, attention_mask, **kwargs)
            state.keys.clear()  # nothing to match: drop the keys the k_proj hook just stored
            return out
        residual = hidden_states  # [B, T, D]
        x, _ = self.self_attn(hidden_states=self.layer_norm1(hidden_states), attention_mask=attention_mask, **kwargs)
        x = self._merge(residual + x)
        return x + self.mlp(self.layer_norm2(x))

    @record_function(REDUCE_RANGE)
    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        """Merge this layer's r tokens of x [B, T, D] -> [B, T - r, D], matched on its keys; sizes updated."""
        state, index = self._tome
        keys = state.keys.pop("k")  # [B, T, D] from the k_proj hook
        B, T, D = keys.shape
        metric = keys.view(B, T, self.self_attn.num_heads, -1).mean(dim=2)  # [B, T, head_dim]
        merge = state.match(metric, index)
        size = state.size if state.size is not None else torch.ones(B, T, 1, dtype=x.dtype, device=x.device)
        origin = state.origin  # [B, T], unless this layer runs alone on a fresh sequence
        if origin is None or origin.shape != (B, T):
            origin = default_origins(B, T, state.has_cls, x.device)
        state.origin = merge(origin[..., None], mode="amin")[..., 0]  # [B, T - r]: a merged token's lowest patch
        if trace.active():
            sources = state.sources if state.sources is not None else trace.patch_sources(B, T, state.has_cls, x.device)
            state.sources = merge(sources.float(), mode="amax").bool()  # [B, T - r, N]: the union of the merged
            trace.record(f"layer {index}", state.sources)
        x = merge(x * size, mode="sum")  # size-weighted sums ...
        state.size = merge(size, mode="sum")  # [B, T - r, 1]
        return x / state.size  # ... divided by the merged sizes: size-weighted means


def apply_tome(model: nn.Module, r: int | Sequence[int], prop_attn: bool = True, keep: float | None = None,
               schedule: str = "constant") -> ToMe:
    """Make `model`'s vision tower (any family) merge tokens in every layer as `r` and `schedule` say
    (r = 0: the stock model)."""
    family = family_of(model)
    state = ToMe.create(r, len(family.vision(model).encoder.layers), prop_attn, keep, schedule, family.has_cls)
    apply_merging(model, state)
    return state


def apply_pitome(model: nn.Module, r: int | Sequence[int], prop_attn: bool = True, keep: float | None = None,
                 schedule: str = "constant", margin: float | Sequence[float] | None = None,
                 alpha: float = 1.0) -> PiToMe:
    """Make `model`'s vision tower (any family) merge tokens with PiToMe in every layer (r = 0: the stock model)."""
    family = family_of(model)
    state = PiToMe.create(r, len(family.vision(model).encoder.layers), prop_attn, keep, schedule, family.has_cls,
                          margin, alpha)
    apply_merging(model, state)
    return state


def apply_merging(model: nn.Module, state: ToMe) -> None:
    """Patch `model` with the merging `state` (ToMe or PiToMe; replacing an earlier merging patch)."""
    family = family_of(model)
    tower = family.vision(model)
    remove_tome(model)
    handles = []
    swap_class(tower.embeddings, _MergingEmbeddings, "_tome", state)
    for index, layer in enumerate(tower.encoder.layers):
        swap_class(layer, _MergingLayer, "_tome", (state, index))
        handles.append(layer.self_attn.k_proj.register_forward_hook(
            lambda module, args, output: state.keys.__setitem__("k", output)))
    handles += bias_pooling(family.pooling_attention(tower), state.attention_bias)
    tower._tome_patch = (state, handles)


def remove_tome(model: nn.Module) -> None:
    """Undo `apply_tome`; a no-op on an unpatched model."""
    restore_classes(family_of(model).vision(model), "_tome_patch", "_tome")


def tome_tokens_per_layer(r: Sequence[int], n_tokens: int, has_cls: bool = True) -> list[int]:
    """Tokens entering each layer's attention, given its merges `r` (the last entry: what the last
    layer's attention sees)."""
    counts, t = [], n_tokens
    for n in r:
        counts.append(t)
        t -= merges(n, t, has_cls)
    return counts


def merges_for_tokens(n_patches: int, kept: int, n_layers: int, has_cls: bool) -> list[int]:
    """Merges per layer (as even as the tokens allow, earlier layers first, more in earlier layers only where
    the later ones could not finish) that leave `kept` of `n_patches` patch tokens after `n_layers` layers;
    a one-line error when halving every layer is not enough."""
    def most(tokens: int, layers: int) -> int:  # the merges of `layers` layers that each halve
        total = 0
        for _ in range(layers):
            r = merges(tokens, tokens, has_cls)
            total, tokens = total + r, tokens - r
        return total

    counts, tokens, left = [], int(has_cls) + n_patches, n_patches - kept
    if left > most(tokens, n_layers):
        raise ConfigError(f"merging can keep at least {n_patches - most(tokens, n_layers)} of {n_patches} tokens "
                          f"in {n_layers} layers (each halves at most); asked for {kept}: raise pruning.keep")
    for index in range(n_layers):
        r = min(-(-left // (n_layers - index)), merges(left, tokens, has_cls))
        while left - r > most(tokens - r, n_layers - index - 1):  # the later layers could not finish
            r += 1
        counts.append(r)
        tokens, left = tokens - r, left - r
    return counts
