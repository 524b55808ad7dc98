"""Token reduction inside a VLM's language model (the `llm` site): FastV (Chen et al., ECCV 2024) and
PyramidDrop (Xing et al., CVPR 2025), with SDPA attention and a KV cache, at batch > 1.

At prefill, at each stage layer K, the image tokens are ranked by the attention the last prompt token
pays them, averaged over heads, and the lower-ranked ones leave the sequence: layers >= K run on the
kept tokens only and cache only them. FastV ranks by layer K-1's attention (one stage); PyramidDrop by
layer K's own (stages at L/4, L/2, 3L/4 by default), keeping int(N * keep^s) of the N image tokens after
stage s. The attention row is computed from the ranking layer's own q/k (its input norm, projections and
the model's own rotary embedding), never by switching the model to eager attention. Kept tokens keep
their original positions (FastV does; PyramidDrop's code renumbers them, DESIGN.md keeps them). The
selection is made once at prefill and kept for every generated token: decoding only extends the masks.

Rows of a batch may keep different numbers of tokens (different image sizes): after a stage the kept
sequences are left-padded again, and the padding is masked out of every later attention.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.profiler import record_function

from vlm_eff.errors import ConfigError
from vlm_eff.knobs import check_keep
from vlm_eff.reduction import trace
from vlm_eff.reduction.base import REDUCE_RANGE, EncoderSite, budget_knobs, restore_classes, swap_class

DECODER_KEYWORDS = ("attention_mask", "position_embeddings", "position_ids", "cache")
ATTENTION_PARTS = ("q_proj", "k_proj", "head_dim", "scaling")


def check_decoder_layer(layer: nn.Module) -> None:
    """What the llm site relies on in a stock decoder layer, checked before it swaps a class: the forward's keyword
    names, the layer's input norm, its attention's projections, head size and scaling, and the rotary function of
    the modeling module. A transformers upgrade that renames one fails here, in one line, not in a wrong ranking."""
    import transformers

    forward = inspect.signature(type(layer).forward).parameters
    missing = [f"forward(... {k}=)" for k in DECODER_KEYWORDS if k not in forward]
    missing += [] if hasattr(layer, "input_layernorm") else ["input_layernorm"]
    attn = getattr(layer, "self_attn", None)
    missing += ["self_attn." + part for part in ATTENTION_PARTS if not hasattr(attn, part)]
    if attn is not None and not hasattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb"):
        missing.append(f"{type(attn).__module__}.apply_rotary_pos_emb")
    if missing:
        raise ConfigError(f"the llm site cannot wrap {type(layer).__name__} under transformers "
                          f"{transformers.__version__}: it lacks {', '.join(missing)} (vlm-eff was checked on the "
                          f"transformers pinned in pyproject.toml)")


def project(attn: nn.Module, h: torch.Tensor, which: str) -> torch.Tensor:
    """Queries (`which`="q") or keys ("k") of attention `attn` from normed hidden states `h` [B, T, D], before the
    rotary embedding, as the stock forward makes them: projection, then the per-head norm where the model has one
    (q_norm / k_norm: Qwen3, OLMo-2 style) -> [B, heads, T, d]."""
    B, T, _ = h.shape
    x = getattr(attn, f"{which}_proj")(h).view(B, T, -1, attn.head_dim)  # [B, T, heads, d]
    norm = getattr(attn, f"{which}_norm", None)
    return (x if norm is None else norm(x)).transpose(1, 2)  # [B, heads, T, d]


def rotated_keys(layer: nn.Module, hidden: torch.Tensor, position_embeddings) -> torch.Tensor:
    """The keys decoder `layer` computes from its input `hidden` [B, T, D]: its input norm, k projection (and k
    norm) and the model's own rotary embedding at the tokens' positions -> [B, KV, T, d]."""
    attn = layer.self_attn
    k = project(attn, layer.input_layernorm(hidden), "k")  # [B, KV, T, d]
    cos, sin = position_embeddings  # [B, T, d]
    return rotary(attn)(k, k, cos, sin)[1]


def rotary(attn: nn.Module):
    return sys.modules[type(attn).__module__].apply_rotary_pos_emb  # the model's own RoPE


def last_token_attention(layer: nn.Module, hidden: torch.Tensor, position_embeddings, valid: torch.Tensor):
    """Attention of the last token of `hidden` [B, T, D] to every token in decoder `layer`, computed from the
    layer's own input norm, q/k projections (and norms) and rotary embedding, post-softmax in fp32, averaged over
    heads -> [B, T]. `valid` [B, T] masks padding keys."""
    attn = layer.self_attn
    q = project(attn, layer.input_layernorm(hidden[:, -1:]), "q")  # [B, H, 1, d]
    cos, sin = position_embeddings  # [B, T, d]
    q, _ = rotary(attn)(q, q, cos[:, -1:], sin[:, -1:])
    k = rotated_keys(layer, hidden, position_embeddings)  # [B, KV, T, d]
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # [B, H, T, d] (grouped-query attention)
    logits = (q.float() @ k.float().transpose(-1, -2)) * attn.scaling  # [B, H, 1, T]
    logits = logits.masked_fill(~valid[:, None, None, :], torch.finfo(torch.float32).min)
    return logits.softmax(dim=-1).mean(dim=1)[:, 0]  # [B, T]


@dataclass
class Stage:
    """The sequence layers from one stage on see: each token's index in the prompt, padding, image flags."""

    index: torch.Tensor  # [B, T] position in the full prompt
    valid: torch.Tensor  # [B, T] a real token (not padding)
    image: torch.Tensor  # [B, T] an image token
    mask: torch.Tensor | None = None  # [B, 1, T, T] the prefill attention mask (causal, padding hidden)


@dataclass
class LLMPruning(EncoderSite):
    """FastV / PyramidDrop knobs (a `Strategy` of the llm site) and the per-request stages."""

    name: str
    keep: float
    layers: tuple[int, ...]  # stage layers K, ascending
    score_offset: int  # -1: rank with layer K-1's attention (FastV); 0: with layer K's (PyramidDrop)
    compound: bool  # keep^s of the original count after stage s (PyramidDrop) or round(N * keep) once (FastV)
    tokens: int | None = None  # a fixed count of image tokens kept (one stage)
    stages: list[Stage] = field(default_factory=list)
    remembered: tuple | None = None  # (input, position embeddings) of the layer FastV ranks with
    site = "llm"
    per_image = False

    @classmethod
    def from_config(cls, cfg, layout, config) -> "LLMPruning":
        keep, tokens = budget_knobs(cfg, (0.5, None))
        return cls.create(cfg.name, config.text_config.num_hidden_layers, keep, cfg.get("layer"), tokens)

    @classmethod
    def create(cls, name: str, n_layers: int, keep: float = 0.5, layer=None, tokens: int | None = None) -> "LLMPruning":
        """Validated knobs for a language model of `n_layers` decoder layers."""
        fastv = name == "fastv"
        if layer is None:  # the papers' K = 2; PyramidDrop's stages at L/4, L/2, 3L/4 (fewer on a shallow LLM)
            layer = 2 if fastv else sorted({n_layers // 4, n_layers // 2, 3 * n_layers // 4})
        layers = (layer,) if isinstance(layer, int) else tuple(layer)
        if not layers or any(isinstance(k, bool) or not isinstance(k, int) for k in layers):
            raise ValueError(f"pruning.layer={layer!r} must be a decoder layer index or a list of them")
        low = 1 if fastv else 0  # FastV ranks with the layer before K
        for k in layers:
            if not low <= k <= n_layers - 1:
                raise ValueError(f"pruning.layer={k} is out of range for a {n_layers}-layer language model; "
                                 f"allowed {low}..{n_layers - 1}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"pruning.layer={list(layers)} repeats a layer")
        if fastv and len(layers) > 1:
            raise ValueError(f"pruning.layer={list(layers)}: fastv prunes once; use pyramiddrop for stages")
        if tokens is not None:
            if len(layers) > 1:
                raise ValueError("pruning.tokens is one count, for one stage; with stages give pruning.keep")
            return cls(name, 1.0, layers, -1 if fastv else 0, not fastv, int(tokens))
        return cls(name, check_keep(keep), tuple(sorted(layers)), -1 if fastv else 0, not fastv)

    def kept(self, n_image: int, stage: int) -> int:
        """Image tokens a row with `n_image` image tokens keeps after `stage`."""
        if self.tokens is not None:
            if self.tokens > n_image:
                raise ConfigError(f"pruning.tokens={self.tokens} is more than the {n_image} visual tokens of this "
                                  f"request; allowed 1..{n_image}")
            return self.tokens
        if self.compound:
            return int(n_image * self.keep ** (stage + 1))  # PyramidDrop: of the original count
        return round(n_image * self.keep)  # FastV

    def columns(self) -> dict:
        layer = self.layers[0] if len(self.layers) == 1 else " ".join(map(str, self.layers))
        return {"keep": self.keep if self.tokens is None else "", "layer": layer,
                "score": "last_attn" + (f" tokens={self.tokens}" if self.tokens is not None else "")}

    def tokens_per_layer(self, n_patches: int, n_layers: int, has_cls: bool) -> list[int]:
        return [int(has_cls) + n_patches] * n_layers  # the vision tower runs unreduced

    # -- the class swap ----------------------------------------------------------------------------------
    def apply_to_vlm(self, model: nn.Module, layout) -> None:
        lm = layout.language_model(model)
        check_decoder_layer(lm.layers[0])
        self.remove_from_vlm(model, layout)
        for index, layer in enumerate(lm.layers):
            if index >= self.layers[0] - 1:
                swap_class(layer, _PruningDecoderLayer, "_llm_pruning", (self, index))
        lm._llm_pruning = (self, [])

    def remove_from_vlm(self, model: nn.Module, layout) -> None:
        restore_classes(layout.language_model(model), "_llm_pruning", "_llm_pruning")

    def before_prefill(self, prompt) -> None:
        """A new request: the prompt's padding and image positions."""
        B, L = prompt.mask.shape
        index = torch.arange(L, device=prompt.mask.device).expand(B, L)
        self.stages = [Stage(index, prompt.mask.bool(), prompt.image)]
        self.remembered = None

    # -- prefill ------------------------------------------------------------------------------------------
    def stage_of(self, layer: int) -> int:
        """How many stages the input of decoder `layer` has been through."""
        return sum(k <= layer for k in self.layers)

    @record_function(REDUCE_RANGE)
    def drop(self, layer: nn.Module, hidden: torch.Tensor, position_embeddings, stage: int) -> torch.Tensor:
        """Stage `stage` at the input of its layer: rank, keep, re-pad; returns the kept hidden states."""
        current = self.stages[-1]
        original = self.stages[0].image.sum(dim=1).tolist()  # image tokens per row in the prompt
        counts = [min(self.kept(n, stage), int(current.image[b].sum())) for b, n in enumerate(original)]
        rows = []
        for b, top in enumerate(self.choose(layer, hidden, position_embeddings, counts)):
            keep = (~current.image[b]).clone()
            keep[top] = True
            rows.append(keep.nonzero()[:, 0])  # ascending: the prompt's order
        T = max(len(r) for r in rows)
        picks = torch.stack([torch.cat([r.new_zeros(T - len(r)), r]) for r in rows])  # [B, T'] left-padded
        padded = torch.stack([torch.arange(T, device=hidden.device) >= T - len(r) for r in rows])  # [B, T']
        self.stages.append(Stage(current.index.gather(1, picks), current.valid.gather(1, picks) & padded,
                                 current.image.gather(1, picks) & padded))
        if trace.active():
            self.trace_stage(layer)
        return hidden.gather(1, picks[..., None].expand(-1, -1, hidden.shape[-1]))

    def choose(self, layer: nn.Module, hidden: torch.Tensor, position_embeddings, counts: list[int]) -> list:
        """Each row's kept image tokens (`counts[b]` of them, as indices into the current sequence): those the last
        prompt token attends to most, in layer K-1 (FastV: the layer remembered) or in the stage layer itself."""
        current = self.stages[-1]
        if self.score_offset == -1:
            ranker, ranked, embeddings = self.remembered
        else:
            ranker, ranked, embeddings = layer, hidden, position_embeddings
        scores = last_token_attention(ranker, ranked, embeddings, current.valid)  # [B, T]
        chosen = []
        for b, n in enumerate(counts):
            image = current.image[b].nonzero()[:, 0]  # [N_b]
            chosen.append(image[scores[b, image].topk(n).indices])
        return chosen

    def trace_stage(self, layer: nn.Module) -> None:
        """Record the image tokens kept so far as slots (trace.py): the k-th image token of a prompt is slot k
        (one image per prompt, as token maps run it)."""
        first, kept = self.stages[0], self.stages[-1]
        slot = first.image.long().cumsum(dim=1) - 1  # [B, L]: each prompt position's rank among the image tokens
        rows = [slot[b, kept.index[b, kept.image[b]]] for b in range(len(slot))]
        trace.record(f"LLM layer {layer._llm_pruning[1]}", trace.kept_slots(rows, int(first.image.sum(dim=1).max())),
                     space="slots")

    def prefill_mask(self, stage: Stage) -> torch.Tensor:
        """Causal over the kept order, padding keys hidden, every token sees itself -> [B, 1, T, T] bool."""
        if stage.mask is None:
            T = stage.index.shape[1]
            causal = torch.ones(T, T, dtype=torch.bool, device=stage.index.device).tril()
            diagonal = torch.eye(T, dtype=torch.bool, device=stage.index.device)
            stage.mask = ((causal & stage.valid[:, None, :]) | diagonal)[:, None]
        return stage.mask

    def decode_mask(self, stage: Stage, kv_length: int, q_length: int) -> torch.Tensor:
        """The kept prompt tokens (padding hidden) and every token generated since -> [B, 1, q, kv] bool."""
        B, T = stage.valid.shape
        new = torch.ones(B, kv_length - T, dtype=torch.bool, device=stage.valid.device)
        keys = torch.cat([stage.valid, new], dim=1)[:, None, None, :].expand(B, 1, q_length, kv_length)
        causal = torch.ones(q_length, kv_length, dtype=torch.bool, device=keys.device).tril(kv_length - q_length)
        return keys & causal


def gather_positions(position_embeddings, position_ids, index: torch.Tensor):
    """Rotary cos/sin [B, L, d] (and 1-D position ids [B, L], if any) at the kept tokens `index` [B, T]."""
    cos, sin = position_embeddings
    pick = index[..., None].expand(-1, -1, cos.shape[-1])
    position_ids = position_ids.gather(1, index) if isinstance(position_ids, torch.Tensor) and \
        position_ids.dim() == 2 else position_ids
    return (cos.gather(1, pick), sin.gather(1, pick)), position_ids


class _PruningDecoderLayer:
    """Mixin for a decoder layer at or after the first stage (and the one FastV ranks with): at prefill the
    stage layers drop image tokens and every later layer sees the kept sequence (its rotary embeddings and
    mask); when decoding, the mask covers the kept prompt tokens and the generated ones."""

    def forward(self, hidden_states: torch.Tensor, *args, attention_mask=None, position_embeddings=None,
                position_ids=None, cache=None, **kwargs):
        pruning, index = self._llm_pruning
        prefill = cache is None or cache.get_seq_length(index) == 0
        stage = pruning.stage_of(index)
        if prefill:
            if index in pruning.layers:
                current = gather_positions(position_embeddings, None, pruning.stages[-1].index)[0]
                hidden_states = pruning.drop(self, hidden_states, current, stage - 1)
            if stage > 0:
                kept = pruning.stages[stage]
                position_embeddings, position_ids = gather_positions(position_embeddings, position_ids, kept.index)
                attention_mask = pruning.prefill_mask(kept)
            if index + 1 in pruning.layers:  # the layer a stage after it ranks with (FastV, DART): its input
                pruning.remembered = (self, hidden_states, position_embeddings)
        elif stage > 0:
            q_length = hidden_states.shape[1]
            attention_mask = pruning.decode_mask(pruning.stages[stage], cache.get_seq_length(index) + q_length,
                                                 q_length)
        return super().forward(hidden_states, *args, attention_mask=attention_mask,
                               position_embeddings=position_embeddings, position_ids=position_ids, cache=cache,
                               **kwargs)
