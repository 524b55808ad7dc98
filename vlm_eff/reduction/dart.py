"""DART (Wen et al., 2025: "Stop looking for important tokens ... duplication matters more"), generative VLMs, llm
site, training-free: at prefill, before decoder layer K (`pruning.layer`, 2), keep a few pivot tokens and, for each,
the image tokens least similar to it; no attention map is read, so every layer stays SDPA.

Pivots: the 4 image tokens whose keys in layer K-1 (its input norm, k projection and rotary embedding at each
token's own position, the heads concatenated) have the largest L1 norm, then the 4 such tokens among the prompt's
tokens after the image; each group by that norm, image pivots first. The other T - 4 image tokens the language
model keeps (T = `pruning.tokens`, pivots counted) are shared among the pivots in that order (R // P each, one more
for the first R % P); each pivot takes, from the image tokens not taken yet, those of lowest cosine to it in layer
K-1's output after the language model's final norm. Text is always kept; layers >= K run on the kept tokens at
their original positions and cache only them; the selection is made once, at prefill. Ties: stable sorts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlm_eff.reduction.base import budget_knobs
from vlm_eff.reduction.llm import LLMPruning, rotated_keys

PIVOTS = 4  # image pivots, and text pivots


def dart_keep(key_norms: torch.Tensor, normed: torch.Tensor, image: torch.Tensor, text: torch.Tensor,
              n: int) -> torch.Tensor:
    """DART's choice for one prompt: the L1 norms of its tokens' keys [T], their final-normed hidden states [T, D],
    the image tokens' indices [N] and the text tokens' after the image [M] -> the n image tokens kept [n] (the image
    pivots, then each pivot's picks)."""
    if n >= len(image):
        return image
    order = key_norms[image].argsort(descending=True, stable=True)
    image_pivots = image[order[:min(PIVOTS, n)]]
    if n <= PIVOTS:
        return image_pivots
    text_pivots = text[key_norms[text].argsort(descending=True, stable=True)[:PIVOTS]]
    pivots = torch.cat([image_pivots, text_pivots])
    left = n - len(image_pivots)
    shares = [left // len(pivots) + int(i < left % len(pivots)) for i in range(len(pivots))]
    unit = F.normalize(normed.float(), dim=-1)  # [T, D]
    candidates, picks = image[order[PIVOTS:]].sort().values, [image_pivots]
    for pivot, share in zip(pivots, shares):
        if share:
            least = (unit[candidates] @ unit[pivot]).argsort(stable=True)[:share]  # lowest cosine first
            picks.append(candidates[least])
            candidates = candidates[~torch.isin(torch.arange(len(candidates), device=image.device), least)]
    return torch.cat(picks)


@dataclass
class DART(LLMPruning):
    """DART's knobs (a `Strategy` of the llm site): FastV's machinery (prune once before layer K, original positions,
    fixed at prefill) with DART's choice."""

    final_norm: nn.Module | None = None  # the language model's final norm (DART compares the normed states)

    @classmethod
    def from_config(cls, cfg, layout, config) -> "DART":
        keep, tokens = budget_knobs(cfg, (None, 64))
        layer, n_layers = cfg.get("layer", 2), config.text_config.num_hidden_layers
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= n_layers - 1:
            raise ValueError(f"pruning.layer={layer!r} is out of range for a {n_layers}-layer language model; allowed "
                             f"1..{n_layers - 1} (DART prunes before decoder layer K, reading layer K-1)")
        return cls("dart", 1.0 if keep is None else keep, (layer,), -1, False, tokens)

    def kept(self, n_image: int, stage: int) -> int:
        return min(self.tokens, n_image) if self.tokens is not None else round(n_image * self.keep)

    def columns(self) -> dict:
        return {"keep": self.keep if self.tokens is None else "", "layer": self.layers[0],
                "score": "dart" + (f" tokens={self.tokens}" if self.tokens is not None else "")}

    def apply_to_vlm(self, model: nn.Module, layout) -> None:
        super().apply_to_vlm(model, layout)
        self.final_norm = layout.language_model(model).norm

    def choose(self, layer: nn.Module, hidden: torch.Tensor, position_embeddings, counts: list[int]) -> list:
        ranker, ranked, embeddings = self.remembered  # layer K-1 and its input
        keys = rotated_keys(ranker, ranked, embeddings)  # [B, KV, T, d]
        key_norms = keys.float().abs().sum(dim=-1).sum(dim=1)  # [B, T]: L1 norm of the heads concatenated
        normed = self.final_norm(hidden)  # [B, T, D]: layer K-1's output after the final norm
        current, positions = self.stages[-1], torch.arange(hidden.shape[1], device=hidden.device)
        chosen = []
        for b, n in enumerate(counts):
            image = current.image[b].nonzero()[:, 0]  # [N]
            text = (current.valid[b] & ~current.image[b] & (positions > image[-1])).nonzero()[:, 0]  # [M]
            chosen.append(dart_keep(key_norms[b], normed[b], image, text, n))
        return chosen
