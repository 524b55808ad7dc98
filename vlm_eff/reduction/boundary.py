"""Token reduction at the boundary between a VLM's vision tower and its language model (the `boundary`
site), training-free, for every layout and batch size:

    visionzip   VisionZip (Yang et al., CVPR 2025) on the feature layer's tokens, before the projector: the
                dominant tokens (CLS, if any, and the patches the attention favours) and contextual tokens
                (the rest merged into a few targets by key similarity); CLS is handed to the LLM.
    divprune    DivPrune (Alvar et al., CVPR 2025) on the projected visual tokens: the max-min diverse subset
                under cosine distance, chosen greedily; needs no attention, so it works on every tower.

Budgets: `tokens` (what the LLM receives per image, or per crop for VisionZip on anyres layouts) or `keep`
(a fraction of them: round(keep * N), as the authors round); give one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from vlm_eff.errors import ConfigError
from vlm_eff.reduction import trace
from vlm_eff.reduction.base import REDUCE_RANGE, EncoderSite, budget_knobs, restore_classes, swap_class

VISIONZIP_SPLITS = {64: (54, 10), 128: (108, 20), 192: (162, 30)}  # the authors' (dominant, contextual)


def budget(n_tokens: int, keep: float | None, tokens: int | None) -> int:
    """Tokens kept of `n_tokens`: `tokens`, else round(keep * n_tokens), at least 1; more tokens than there
    are is a one-line error (where the count depends on the image, it is known only now)."""
    if tokens is not None and tokens > n_tokens:
        raise ConfigError(f"pruning.tokens={tokens} is more than the {n_tokens} visual tokens of this image; "
                          f"allowed 1..{n_tokens}")
    return tokens if tokens is not None else max(1, round(keep * n_tokens))


def visionzip_split(total: int) -> tuple[int, int]:
    """(dominant, contextual) for a budget: the authors' splits, else dominant = round(27 B / 32)."""
    if total in VISIONZIP_SPLITS:
        return VISIONZIP_SPLITS[total]
    dominant = max(1, round(27 * total / 32))
    return dominant, total - dominant


def visionzip_select(hidden: torch.Tensor, attention: torch.Tensor, keys: torch.Tensor, dominant: int,
                     contextual: int, has_cls: bool, members: bool = False):
    """VisionZip on one feature layer: hidden [B, T, D] (token 0 = CLS if `has_cls`), its attention
    [B, H, T, T] (post-softmax) and keys averaged over heads [B, T, d] -> the tokens handed over
    [B, dominant + contextual, D] (CLS, dominant patches ascending, contextual by target) and the patch each
    stands for [B, dominant + contextual] (-1 for CLS; a contextual token: its target); with `members`, also
    the input tokens each stands for [B, dominant + contextual, T] bool (a contextual token: its target and
    the tokens joined to it)."""
    B, T, D = hidden.shape
    first = int(has_cls)
    if has_cls:  # the attention CLS pays each patch, summed over heads
        score = attention[:, :, 0, 1:].sum(dim=1)  # [B, N]
    else:  # the attention each token receives, averaged over queries, summed over heads
        score = attention.mean(dim=2).sum(dim=1)  # [B, N]
    top = score.topk(dominant - first, dim=1).indices + first  # [B, D - first]
    chosen = torch.cat([top.new_zeros(B, first), top], dim=1)  # CLS first
    rest = torch.ones(B, T, dtype=torch.bool, device=hidden.device).scatter(1, chosen, False)  # [B, T]
    index = torch.arange(T, device=hidden.device).expand(B, T)
    kept = index[~rest].view(B, dominant)  # ascending, CLS first
    remaining = index[rest].view(B, T - dominant)  # R, ascending
    metric = F.normalize(keys.gather(1, remaining[..., None].expand(-1, -1, keys.shape[-1])), dim=-1)  # [B, R, d]
    step = max(1, metric.shape[1] // contextual)
    targets = torch.arange(0, metric.shape[1], step, device=hidden.device)[:contextual]  # [C]
    is_target = torch.zeros(metric.shape[1], dtype=torch.bool, device=hidden.device)
    is_target[targets] = True
    similarity = metric[:, ~is_target] @ metric[:, targets].transpose(1, 2)  # [B, R - C, C]
    assign = F.one_hot(similarity.argmax(dim=2), len(targets)).to(hidden.dtype)  # [B, R - C, C]
    rest_hidden = hidden.gather(1, remaining[..., None].expand(-1, -1, D))  # [B, R, D]
    joined = assign.transpose(1, 2) @ rest_hidden[:, ~is_target]  # [B, C, D]: sums of the joined tokens
    counts = assign.sum(dim=1).clamp(min=1)[..., None]  # [B, C, 1]
    context = rest_hidden[:, targets] + joined / counts  # the target plus the mean of what joined it
    tokens = torch.cat([hidden.gather(1, kept[..., None].expand(-1, -1, D)), context], dim=1)
    origin = torch.cat([kept, remaining[:, targets]], dim=1) - first  # CLS -> -1
    if not members:
        return tokens, origin
    joined_to = torch.zeros(B, len(targets), metric.shape[1], dtype=torch.bool, device=hidden.device)  # [B, C, R]
    joined_to[:, :, ~is_target] = assign.transpose(1, 2).bool()
    joined_to[:, torch.arange(len(targets)), targets] = True
    held = torch.zeros(B, len(targets), T, dtype=torch.bool, device=hidden.device)
    held.scatter_(2, remaining[:, None].expand(-1, len(targets), -1), joined_to)  # [B, C, T]
    return tokens, origin, torch.cat([F.one_hot(kept, T).bool(), held], dim=1)  # [B, dominant + contextual, T]


@dataclass
class FeatureLayerSelection(EncoderSite):
    """A boundary strategy that chooses among the feature layer's tokens with that layer's attention (VisionZip,
    VisPruner): patched onto the tower's last run layer, whose q/k it captures; `choose` makes the choice."""

    origins_key = "_feature_selection"

    keep: float | None
    tokens: int | None
    has_cls: bool
    n_patches: int  # patch tokens per image (or crop): the visual tokens of the stock model
    feature_depth: int  # layers the tower runs
    origin: torch.Tensor | None = None  # [B, T'] after the last forward
    captured: dict = field(default_factory=dict)
    site = "boundary"
    per_image = False
    per_crop = True

    @classmethod
    def needs_tower(cls, cfg) -> bool:
        return True

    @classmethod
    def knobs(cls, cfg, layout, config) -> dict:
        """The fields every feature-layer strategy takes from the config and the layout."""
        keep, tokens = budget_knobs(cfg, (None, 64))
        vision = config.vision_config
        return {"keep": keep, "tokens": tokens, "has_cls": layout.tower_family(config).has_cls,
                "n_patches": (vision.image_size // vision.patch_size) ** 2, "feature_depth": layout.feature_depth(config)}

    @property
    def budget(self) -> int:
        """Tokens handed over per image (CLS included); at least the stock count: nothing to select."""
        return budget(self.n_patches, self.keep, self.tokens)

    def tokens_per_layer(self, n_patches: int, n_layers: int, has_cls: bool) -> list[int]:
        return [int(has_cls) + n_patches] * n_layers  # the tower runs unreduced; the selection follows it

    def apply(self, tower: nn.Module) -> None:
        self.remove(tower)
        last = tower.encoder.layers[self.feature_depth - 1]
        swap_class(last, _SelectingLayer, "_feature_selection", self)
        swap_class(tower.embeddings, _ResetOrigins, "_feature_selection", self)
        handles = [getattr(last.self_attn, f"{name}_proj").register_forward_hook(_capture(self, name))
                   for name in ("q", "k")]
        tower._feature_selection_patch = (self, handles)

    def remove(self, tower: nn.Module) -> None:
        restore_classes(tower, "_feature_selection_patch", "_feature_selection")

    @record_function(REDUCE_RANGE)
    def select(self, hidden: torch.Tensor, num_heads: int) -> torch.Tensor:
        """The feature layer's output [B, T, D] -> the tokens handed over; their origins in `self.origin`."""
        q, k = self.captured.pop("q"), self.captured.pop("k")  # [B, T, D] each
        if self.budget >= self.n_patches:
            return hidden  # the budget covers every token: the stock hand-over
        B, T, D = k.shape
        q = q.float().view(B, T, num_heads, -1).transpose(1, 2)  # [B, H, T, hd]
        k = k.float().view(B, T, num_heads, -1).transpose(1, 2)
        attention = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)  # [B, H, T, T]
        return self.choose(hidden, attention, k.mean(dim=1))

    def choose(self, hidden: torch.Tensor, attention: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, D], attention [B, H, T, T] (post-softmax), keys averaged over heads [B, T, d] -> the tokens
        handed over, their origins set in `self.origin`."""
        raise NotImplementedError


@dataclass
class VisionZip(FeatureLayerSelection):
    """VisionZip's knobs (a `Strategy` of the boundary site), patched onto the tower's last run layer."""

    name = "visionzip"

    @classmethod
    def from_config(cls, cfg, layout, config) -> "VisionZip":
        return cls(**cls.knobs(cfg, layout, config))

    @property
    def hands_over(self) -> str:
        return "spatial" if self.budget >= self.n_patches else "as_selected"

    def columns(self) -> dict:
        return {"keep": "" if self.keep is None else self.keep, "layer": "feature",
                "score": "visionzip" + (f" tokens={self.tokens}" if self.tokens is not None else "")}

    def choose(self, hidden, attention, keys):
        dominant, contextual = visionzip_split(self.budget)
        if not trace.active():
            tokens, self.origin = visionzip_select(hidden, attention, keys, dominant, contextual, self.has_cls)
            return tokens
        tokens, self.origin, members = visionzip_select(hidden, attention, keys, dominant, contextual,
                                                        self.has_cls, members=True)
        trace.record("feature layer", members[..., int(self.has_cls):])  # [B, T', N]: CLS stands for no patch
        return tokens


class _ResetOrigins:
    """Mixin for the tower's embeddings: a new forward has no selection yet."""

    def forward(self, *args, **kwargs):
        self._feature_selection.origin = None
        return super().forward(*args, **kwargs)


class _SelectingLayer:
    """Mixin for the tower's last run layer: its output goes through the strategy's selection."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self._feature_selection.select(super().forward(hidden_states, *args, **kwargs), self.self_attn.num_heads)


def _capture(state: FeatureLayerSelection, name: str):
    def hook(module, args, output):
        state.captured[name] = output  # [B, T, D]

    return hook


def divprune_select(features: torch.Tensor, n: int) -> torch.Tensor:
    """DivPrune's greedy max-min diverse subset of features [N, D] under cosine distance -> n indices,
    ascending: first the token farthest from its nearest neighbour, then each time the token farthest from
    the tokens chosen so far."""
    unit = F.normalize(features.float(), dim=-1)
    distance = 1.0 - unit @ unit.T  # [N, N]
    chosen = torch.empty(n, dtype=torch.long, device=features.device)
    for i in range(n):
        if i == 0:
            scores = distance.topk(2, dim=0, largest=False).values[1]  # each token's nearest other token
        else:
            scores = distance[chosen[:i]].min(dim=0).values  # distance to the nearest chosen token
        chosen[i] = scores.argmax()
    return chosen.sort().values


@dataclass
class AfterProjector(EncoderSite):
    """A boundary strategy that keeps a subset of each image's projected visual tokens (`pick`), in their order."""

    keep: float | None
    tokens: int | None
    site = "boundary"
    per_image = False

    def apply(self, tower: nn.Module) -> None:
        pass

    def remove(self, tower: nn.Module) -> None:
        pass

    def label(self) -> str:
        return self.name

    def columns(self) -> dict:
        return {"keep": "" if self.keep is None else self.keep, "layer": "projector",
                "score": self.label() + (f" tokens={self.tokens}" if self.tokens is not None else "")}

    def tokens_per_layer(self, n_patches: int, n_layers: int, has_cls: bool) -> list[int]:
        return [int(has_cls) + n_patches] * n_layers

    def pick(self, embeds: torch.Tensor, n: int, b: int) -> torch.Tensor:
        """Of image b's projected tokens [N, D], the n kept -> their indices [n], ascending."""
        raise NotImplementedError

    @record_function(REDUCE_RANGE)
    def after_projector(self, images: list) -> list:
        """Each image's kept tokens. The choice is made without autograd (a choice has no gradient; under training,
        a graph through CDPruner's greedy loop grew by 40 MB a step); the kept tokens keep theirs."""
        kept = []
        for b, image in enumerate(images):
            with torch.no_grad():
                index = self.pick(image.embeds, budget(len(image.slots), self.keep, self.tokens), b)
            kept.append(image._replace(embeds=image.embeds[index], slots=image.slots[index]))
        if trace.active():
            trace.record("projector", trace.kept_slots([image.slots for image in kept], images[0].full), space="slots")
        return kept


@dataclass
class DivPrune(AfterProjector):
    """DivPrune's knobs (a `Strategy` of the boundary site): acts on the projected visual tokens."""

    name = "divprune"

    @classmethod
    def from_config(cls, cfg, layout, config) -> "DivPrune":
        return cls(*budget_knobs(cfg, (None, 64)))

    def pick(self, embeds: torch.Tensor, n: int, b: int) -> torch.Tensor:
        return divprune_select(embeds, n)
