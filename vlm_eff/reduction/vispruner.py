"""VisPruner (Zhang et al., ICCV 2025), generative VLMs, boundary site, before the projector, training-free: of the
feature layer's tokens, the important ones by the attention CLS pays them (towers without CLS: the attention each
receives, averaged over the queries), and the rest of the budget by rounds of duplicate removal among the others.

With T the budget and r = `pruning.important_ratio` (0.5): T_imp = int(T r) tokens by importance (descending), the
residual the rest in that order. Each round drops r' = min(8, |residual| - (T - T_imp)) tokens: the residual at
even positions is matched against the residual at odd positions (cosine of the L2-normalised features, in float64),
the r' even ones most similar to an odd one are dropped, and the new residual is the kept even ones (most similar
first) then the odd ones. Kept = important + residual, in spatial order; CLS stays first (LLaVA's `default` drops
it). Ties: stable sorts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlm_eff.reduction import trace
from vlm_eff.reduction.boundary import FeatureLayerSelection

ROUND = 8  # the most tokens one round of duplicate removal drops


def vispruner_keep(features: torch.Tensor, importance: torch.Tensor, budget: int, important_ratio: float) -> torch.Tensor:
    """VisPruner's choice among N tokens: features [B, N, D] and importance [B, N] -> the kept indices [B, budget],
    ascending."""
    n_important = int(budget * important_ratio)
    n_diverse = budget - n_important
    order = importance.argsort(dim=1, descending=True, stable=True)  # [B, N]
    important, residual = order[:, :n_important], order[:, n_important:]
    unit = F.normalize(features.double(), dim=-1)  # [B, N, D] in float64: the rounds are not reproducible in float32
    similarity = unit @ unit.transpose(1, 2)  # [B, N, N] cosines, once: each round reads its pairs from here
    N = similarity.shape[-1]
    while n_diverse > 0:
        R = residual.shape[1]
        dropped = min(ROUND, R - n_diverse)
        if dropped <= 0:
            break
        even, odd = residual[:, ::2], residual[:, 1::2]  # [B, ceil(R/2)], [B, floor(R/2)]
        rows = similarity.gather(1, even[..., None].expand(-1, -1, N))  # [B, ceil(R/2), N]
        pairs = rows.gather(2, odd[:, None].expand(-1, even.shape[1], -1))  # [B, ceil(R/2), floor(R/2)]
        scores = pairs.max(dim=-1).values  # [B, ceil(R/2)]: each even token's closest odd one
        distinct = scores.argsort(dim=-1, descending=True, stable=True)[:, dropped:]  # [B, ceil(R/2) - r']
        residual = torch.cat([even.gather(1, distinct), odd], dim=1)  # [B, R - r']
    kept = torch.cat([important, residual], dim=1) if n_diverse > 0 else important
    return kept.sort(dim=1).values[:, :budget]


@dataclass
class VisPruner(FeatureLayerSelection):
    """VisPruner's knobs (a `Strategy` of the boundary site), patched onto the tower's last run layer."""

    important_ratio: float = 0.5
    name = "vispruner"

    @classmethod
    def from_config(cls, cfg, layout, config) -> "VisPruner":
        ratio = cfg.get("important_ratio", 0.5)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ValueError(f"pruning.important_ratio={ratio!r} is outside (0, 1]: the share of the budget kept by "
                             "attention")
        return cls(**cls.knobs(cfg, layout, config), important_ratio=float(ratio))

    def columns(self) -> dict:
        return {"keep": "" if self.keep is None else self.keep, "layer": "feature",
                "score": f"vispruner important={self.important_ratio:g}"
                         + (f" tokens={self.tokens}" if self.tokens is not None else "")}

    def choose(self, hidden, attention, keys):
        first = int(self.has_cls)
        if self.has_cls:  # the attention CLS pays each patch, head mean (softmax over every key, not renormalised)
            importance = attention[:, :, 0, 1:].mean(dim=1)  # [B, N]
        else:  # the attention each token receives, averaged over the queries and the heads
            importance = attention.mean(dim=2).mean(dim=1)  # [B, N]
        kept = vispruner_keep(hidden[:, first:], importance, self.budget, self.important_ratio) + first
        chosen = torch.cat([kept.new_zeros(kept.shape[0], first), kept], dim=1)  # CLS first, if any
        self.origin = chosen - first  # CLS -> -1
        if trace.active():
            trace.record("feature layer", torch.nn.functional.one_hot(kept - first, self.n_patches).bool())
        return hidden.gather(1, chosen[..., None].expand(-1, -1, hidden.shape[-1]))
