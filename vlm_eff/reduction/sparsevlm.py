"""SparseVLM (Zhang et al., ICML 2025; its v1.0), generative VLMs, llm site, training-free: the image tokens the
question's relevant text tokens (the raters) attend to are kept, in stages inside the language model; the pruned
ones are partly recycled, clustered and merged back.

Raters (once per prompt, on the language model's input): with V the image tokens' embeddings and X the tokens'
after the image, the softmax over X of V X^T, averaged over V; the tokens of X above its mean. At each stage layer l
(`pruning.layer`: the authors' [2, 6, 15] of 32 layers, scaled to the model's depth: round(l * depth / 32), at least
1, duplicates moved up, at most depth - 2), after layer l has run: each image token's score is the attention the
raters pay it in layer l (post-softmax, causal, head mean, rater mean; computed from the layer's own q/k, SDPA
kept); the stage keeps the min(budget, n - 1) best of the n image tokens. Recycling: of the pruned ones, the
int(0.3 n_pruned) + 1 best-scored are clustered (DPC-KNN on layer l's output: density from the cluster_num nearest,
centres by distance x density, each token to its nearest centre; cluster_num = int(k / 10) + 1) and each cluster's
mean (weights 1 / (size + 1e-6), as the authors' code) goes back in, right after the kept image tokens, at its centre's
position. Layers after l run on, and cache, only that sequence; kept tokens keep their positions (DESIGN.md's rule for
the llm site; SparseVLM v1.0's code renumbers them); the selection is made once, at prefill.

Budgets: `pruning.tokens` is the paper's retained count of LLaVA-1.5's 576 (64, 96, 128 or 192); each stage keeps the
authors' count for it ([66, 30, 17] for 64, ...), scaled by N / 576 for an image of N tokens. The authors add 1e-6
uniform noise to the densities to break ties; here ties break by index (stable sorts), so runs repeat exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from vlm_eff.reduction import trace
from vlm_eff.reduction.llm import LLMPruning, Stage, project, rotary

AUTHORS_LAYERS, AUTHORS_DEPTH = (2, 6, 15), 32
BUDGETS = {64: (66, 30, 17), 96: (238, 48, 26), 128: (303, 110, 36), 192: (300, 200, 110)}  # of 576, per stage
AUTHORS_TOKENS = 576
RECYCLED = 0.3  # the share of the pruned tokens that may be merged back


def scaled_layers(depth: int) -> tuple[int, ...]:
    """The authors' stage layers of a 32-layer model on one of `depth` layers: each at least 1, kept distinct (a
    duplicate moves up), at most depth - 2 (a later layer must see the result)."""
    layers: list[int] = []
    for layer in AUTHORS_LAYERS:
        l = max(1, round(layer * depth / AUTHORS_DEPTH), layers[-1] + 1 if layers else 1)
        if l <= depth - 2:
            layers.append(l)
    return tuple(layers)


def raters(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The text tokens that rate: image embeddings [N, D] and the embeddings of the tokens after the image [M, D]
    -> a mask over the M tokens: softmax over them of image x text, averaged over the image tokens, above its mean."""
    relation = (image.float() @ text.float().T).softmax(dim=1).mean(dim=0)  # [M]
    return relation > relation.mean()


def cluster_and_merge(x: torch.Tensor, n_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-KNN clustering of tokens [n, C] into n_clusters, each cluster's mean -> (merged [n_clusters, C], the index
    of each cluster's centre [n_clusters])."""
    n, C = x.shape
    distance = torch.cdist(x.float()[None], x.float()[None])[0] / math.sqrt(C)  # [n, n]
    nearest = distance.sort(dim=-1, stable=True).values[:, :n_clusters]  # [n, k]: the k nearest (itself first)
    density = (-(nearest ** 2).mean(dim=-1)).exp()  # [n]
    denser = density[None, :] > density[:, None]  # [i, j]: j is denser than i
    parent = torch.where(denser, distance, distance.max()).min(dim=-1).values  # [n]: to the nearest denser token
    centres = (parent * density).argsort(descending=True, stable=True)[:n_clusters]  # [k]
    assignment = distance[centres].argmin(dim=0)  # [n]: each token's nearest centre
    assignment[centres] = torch.arange(n_clusters, device=x.device)
    sizes = torch.zeros(n_clusters, device=x.device).index_add_(0, assignment, torch.ones(n, device=x.device))
    merged = torch.zeros(n_clusters, C, dtype=x.dtype, device=x.device).index_add_(
        0, assignment, x / (sizes[assignment] + 1e-6)[:, None].to(x.dtype))
    return merged, centres


def rows_attention(layer: nn.Module, hidden: torch.Tensor, position_embeddings, queries: torch.Tensor,
                   valid: torch.Tensor) -> torch.Tensor:
    """Head-mean post-softmax causal attention of the tokens `queries` [Q] of one sequence `hidden` [T, D] to every
    token in decoder `layer` (its input norm, q/k projections and norms, rotary embedding; padding keys `valid` [T] hidden)
    -> [Q, T]."""
    attn = layer.self_attn
    h = layer.input_layernorm(hidden)[None]  # [1, T, D]
    T = h.shape[1]
    q = project(attn, h[:, queries], "q")  # [1, H, Q, d]
    k = project(attn, h, "k")  # [1, KV, T, d]
    cos, sin = position_embeddings
    q, _ = rotary(attn)(q, q, cos[None, queries], sin[None, queries])
    _, k = rotary(attn)(k, k, cos[None], sin[None])
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # [1, H, T, d]
    logits = (q.float() @ k.float().transpose(-1, -2)) * attn.scaling  # [1, H, Q, T]
    visible = valid[None, :] & (torch.arange(T, device=hidden.device)[None, :] <= queries[:, None])  # causal
    logits = logits.masked_fill(~visible[None, None], torch.finfo(torch.float32).min)
    return logits.softmax(dim=-1).mean(dim=1)[0]  # [Q, T]


@dataclass
class SparseVLM(LLMPruning):
    """SparseVLM's knobs (a `Strategy` of the llm site): stages after the layers `ranking` (tokens leave at the input
    of the next layer), each with its budget; the raters of each prompt."""

    budgets: tuple[int, ...] = ()
    rater_index: list = field(default_factory=list)  # per row: the prompt positions of its raters
    tokens_counted = False  # pruning.tokens is the paper's retained count of 576

    @classmethod
    def from_config(cls, cfg, layout, config) -> "SparseVLM":
        depth = config.text_config.num_hidden_layers
        tokens = cfg.get("tokens") or 64
        if cfg.get("keep") is not None:
            raise ValueError("pruning=sparsevlm takes pruning.tokens (the paper's 64, 96, 128 or 192 of 576), not keep")
        if tokens not in BUDGETS:
            raise ValueError(f"pruning.tokens={tokens} has no SparseVLM budgets; allowed: "
                             f"{', '.join(map(str, BUDGETS))} (the paper's retained tokens of 576)")
        layer = cfg.get("layer")
        ranking = scaled_layers(depth) if layer is None else ((layer,) if isinstance(layer, int) else tuple(layer))
        if not ranking or any(isinstance(l, bool) or not isinstance(l, int) or not 0 <= l <= depth - 2 for l in ranking) \
                or list(ranking) != sorted(set(ranking)):
            raise ValueError(f"pruning.layer={list(ranking)} must be distinct ascending decoder layers in 0..{depth - 2} "
                             f"(tokens leave after each, so a later layer must run) for a {depth}-layer language model")
        return cls("sparsevlm", 1.0, tuple(l + 1 for l in ranking), -1, False, tokens,
                   budgets=BUDGETS[tokens][:len(ranking)])

    def columns(self) -> dict:
        return {"keep": "", "layer": " ".join(str(k - 1) for k in self.layers), "score": f"sparsevlm tokens={self.tokens}"}

    def kept(self, n_image: int, stage: int) -> int:
        return max(1, round(self.budgets[stage] * n_image / AUTHORS_TOKENS))

    def before_prefill(self, prompt) -> None:
        """Each row's raters, from the prompt's embeddings."""
        super().before_prefill(prompt)
        self.rater_index = []
        for b in range(prompt.embeds.shape[0]):
            image = prompt.image[b].nonzero()[:, 0]
            after = (prompt.mask[b].bool() & (torch.arange(prompt.mask.shape[1], device=image.device) > image[-1])
                     ).nonzero()[:, 0]
            chosen = raters(prompt.embeds[b, image], prompt.embeds[b, after])
            self.rater_index.append(after[chosen])

    def drop(self, layer: nn.Module, hidden: torch.Tensor, position_embeddings, stage: int) -> torch.Tensor:
        """A stage at the input of its layer: score, keep, recycle, re-pad; returns the new hidden states."""
        ranker, ranked, embeddings = self.remembered  # the stage's ranking layer and its input
        current = self.stages[-1]
        original = self.stages[0].image.sum(dim=1).tolist()
        sequences, indices, images = [], [], []
        for b in range(hidden.shape[0]):
            real = current.valid[b].nonzero()[:, 0]  # this row's tokens, padding left out
            position = {int(p): i for i, p in enumerate(current.index[b, real].tolist())}
            queries = torch.tensor([position[int(p)] for p in self.rater_index[b]], device=hidden.device)
            cos, sin = (e[b, real] for e in embeddings)
            scores = rows_attention(ranker, ranked[b, real], (cos, sin), queries, torch.ones_like(real, dtype=torch.bool))
            relation = scores.mean(dim=0)  # [T_b]
            image = current.image[b, real].nonzero()[:, 0]  # [n]
            n = min(self.kept(original[b], stage), len(image) - 1)
            order = relation[image].argsort(descending=True, stable=True)
            kept, pruned = image[order[:n]].sort().values, image[order[n:]]  # pruned: best first
            h, index = hidden[b, real], current.index[b, real]
            pieces, where, flags = [h[: int(image[0])], h[kept]], [index[: int(image[0])], index[kept]], [0, len(kept)]
            if len(pruned):
                recycled = pruned[: int(len(pruned) * RECYCLED) + 1]
                merged, centres = cluster_and_merge(h[recycled], int(len(recycled) / 10) + 1)
                pieces.append(merged)
                where.append(index[recycled[centres]])  # a merged token sits at its centre's position
                flags.append(len(merged))
            after = torch.arange(int(image[-1]) + 1, len(real), device=hidden.device)
            pieces.append(h[after])
            where.append(index[after])
            sequences.append(torch.cat(pieces))
            indices.append(torch.cat(where))
            images.append(torch.cat([torch.zeros(int(image[0]), dtype=torch.bool),
                                     torch.ones(sum(flags[1:]), dtype=torch.bool),
                                     torch.zeros(len(after), dtype=torch.bool)]).to(hidden.device))
        T = max(len(s) for s in sequences)
        new = hidden.new_zeros(hidden.shape[0], T, hidden.shape[-1])
        index = current.index.new_zeros(hidden.shape[0], T)
        valid = torch.zeros(hidden.shape[0], T, dtype=torch.bool, device=hidden.device)
        image = torch.zeros_like(valid)
        for b, (sequence, where, flags) in enumerate(zip(sequences, indices, images)):  # left padding
            new[b, T - len(sequence):], index[b, T - len(where):] = sequence, where
            valid[b, T - len(sequence):], image[b, T - len(flags):] = True, flags
        self.stages.append(Stage(index, valid, image))
        if trace.active():
            self.trace_stage(layer)
        return new
