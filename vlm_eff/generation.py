"""A generative VLM request, driven through the stock Hugging Face modules: the vision part gives each
image's visual tokens (reduced or not, vlms.py), the prompt gets exactly one placeholder per token,
the rows are left-padded, the language model prefills with SDPA and a KV cache, and greedy decoding
goes on token by token. Each phase is timed (synchronised on CUDA) and can be counted in FLOPs.

Positions follow DESIGN.md: `compact` numbers the shorter sequence 0..len-1; `original` gives each
visual token the position of the token it stands for in the full sequence (text after the image keeps
its original positions too); M-RoPE layouts (Qwen) always keep the original (t, h, w) positions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import DynamicCache

import vlm_eff.flops  # noqa: F401  (registers the CPU SDPA FLOP formula)
from vlm_eff.errors import ConfigError
from vlm_eff.reduction.base import NoReduction, Strategy
from vlm_eff.vlms import ImageTokens, Layout, layout_of


class Instruction(NamedTuple):
    """What a request asks (the question without the benchmark's answer-format line), for strategies that condition
    on it: as text, and as the language model's token ids (no special tokens)."""

    text: str
    ids: torch.Tensor  # [n]


@dataclass
class Prompt:
    """A left-padded batch of prompts with the visual tokens in place."""

    embeds: torch.Tensor  # [B, L, D]
    mask: torch.Tensor  # [B, L] 1 on real tokens
    image: torch.Tensor  # [B, L] True on visual tokens
    positions: torch.Tensor  # [P, B, L] (P = 3 under M-RoPE, else 1)
    visual_tokens: list[int]  # per row: visual tokens the LLM receives


@dataclass
class Output:
    """A generated batch: the new tokens and where the time went (seconds)."""

    tokens: torch.Tensor  # [B, n] greedy new tokens (after a row's end-of-sequence: its pad id)
    first_logits: torch.Tensor  # [B, V] the prefill's logits of the first new token
    visual_tokens: list[int]
    vision_s: float
    prefill_s: float
    decode_s: list[float] = field(default_factory=list)  # one per generated token after the first
    kv_cache_bytes: int = 0
    logits: torch.Tensor | None = None  # [B, n, V] every step's logits, when asked for (`all_logits`)

    @property
    def ttft_s(self) -> float:
        return self.vision_s + self.prefill_s


def kv_cache_bytes(cache: DynamicCache) -> int:
    """Bytes held by a KV cache's keys and values."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
               if t is not None)


def image_runs(ids: torch.Tensor, image_token: int) -> list[tuple[int, int]]:
    """(start, end) of each run of image placeholders in one prompt [L]."""
    is_image = (ids == image_token).tolist()
    runs, start = [], None
    for i, flag in enumerate(is_image + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    return runs


class Runner:
    """Greedy generation for a VLM of any layout; the model is used as loaded (patched or not)."""

    def __init__(self, model: nn.Module, strategy: Strategy | None = None, layout: Layout | None = None):
        self.strategy = strategy or NoReduction()  # applied by the caller (`reduced_runner`); its site hooks run here
        self.model = model
        self.layout = layout or layout_of(model)
        self.image_token = self.layout.image_token_id(model.config)
        self.lm = self.layout.language_model(model)
        self.head = self.layout.lm_head(model)
        self.embed = model.get_input_embeddings()

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # -- the prompt --------------------------------------------------------------------------------------
    def row(self, ids: torch.Tensor, images: list[ImageTokens]):
        """One prompt [L0] with one placeholder run per image (any length) -> its embeddings [L, D],
        positions [P, L] and visual-token flags [L], each image's run replaced by its visual tokens."""
        runs = image_runs(ids, self.image_token)
        if len(runs) != len(images):
            raise ConfigError(f"a prompt has {len(runs)} image placeholder runs for {len(images)} images")
        pieces, stock_pieces, index, flags, cursor, stock_len = [], [], [], [], 0, 0
        for (start, end), image in zip(runs, images):
            text = ids[cursor:start]
            pieces.append(self.embed(text))
            index.append(torch.arange(stock_len, stock_len + len(text), device=ids.device))
            stock_pieces += [text, ids.new_full((image.full,), self.image_token)]
            stock_len += len(text)
            pieces.append(image.embeds.to(self.embed.weight.dtype))
            index.append(stock_len + image.slots.to(ids.device))
            flags += [torch.zeros(len(text), dtype=torch.bool), torch.ones(len(image.slots), dtype=torch.bool)]
            stock_len += image.full
            cursor = end
        text = ids[cursor:]
        pieces.append(self.embed(text))
        index.append(torch.arange(stock_len, stock_len + len(text), device=ids.device))
        index = torch.cat(index)  # [L]: each token's index in the stock sequence
        if self.layout.mrope or self.strategy.positions == "original":
            stock_ids = torch.cat(stock_pieces + [text])
            positions = self.layout.stock_positions(self.model, stock_ids, images)[:, index]  # [P, L]
        else:
            positions = torch.arange(len(index), device=ids.device)[None]  # [1, L]
        flags.append(torch.zeros(len(text), dtype=torch.bool))
        return torch.cat(pieces), positions, torch.cat(flags).to(ids.device)

    def prompt(self, rows: list[torch.Tensor], images: list[ImageTokens]) -> Prompt:
        """Rows of token ids (unpadded, images' placeholder runs of any length) and the batch's images in
        order -> the left-padded prompt the LLM prefills."""
        built, visual, taken = [], [], 0
        for ids in rows:
            n = len(image_runs(ids, self.image_token))
            mine = images[taken: taken + n]
            taken += n
            built.append(self.row(ids.to(self.device), mine))
            visual.append(sum(len(image.slots) for image in mine))
        if taken != len(images):
            raise ConfigError(f"the prompts hold {taken} images' placeholders for {len(images)} images")
        B, L = len(built), max(embeds.shape[0] for embeds, _, _ in built)
        D, P = built[0][0].shape[-1], built[0][1].shape[0]
        embeds = torch.zeros(B, L, D, dtype=built[0][0].dtype, device=self.device)
        mask = torch.zeros(B, L, dtype=torch.long, device=self.device)
        image = torch.zeros(B, L, dtype=torch.bool, device=self.device)
        positions = torch.zeros(P, B, L, dtype=torch.long, device=self.device)
        for b, (e, p, flags) in enumerate(built):  # left padding
            n = e.shape[0]
            embeds[b, L - n:], mask[b, L - n:], positions[:, b, L - n:], image[b, L - n:] = e, 1, p, flags
        return Prompt(embeds, mask, image, positions, visual)

    def visual(self, images: dict) -> list[ImageTokens]:
        """The visual tokens the language model receives for each image: the (reduced) vision part, then
        whatever the strategy does after the projector."""
        visual = self.layout.visual_tokens(self.model, images, self.strategy)
        return self.strategy.after_projector(visual)

    # -- the request ---------------------------------------------------------------------------------------
    def _lm_step(self, embeds, mask, positions, cache) -> torch.Tensor:
        """One LLM forward with the cache -> the next token's logits [B, V]."""
        out = self.lm(inputs_embeds=embeds, attention_mask=mask,
                      position_ids=positions if self.layout.mrope else positions[0], cache=cache, use_cache=True)
        return self.head(out.last_hidden_state[:, -1])  # [B, V]

    def forced(self, rows: list[torch.Tensor], images: dict, answers: torch.Tensor,
               instructions: list[Instruction] | None = None) -> torch.Tensor:
        """The request teacher-forced on `answers` [B, A] (token ids, each row's own length padded at its end): the
        prefill as `generate` runs it (the strategy's selection made on the prompt alone), then the answer's tokens
        through the cache in one step -> the logits predicting each answer token [B, A, V]. Differentiable: the
        training step of label-free recovery."""
        self.strategy.before_visual(instructions)
        prompt = self.prompt(rows, self.visual(images))
        self.strategy.before_prefill(prompt)
        cache = DynamicCache(config=self.lm.config)
        first = self._lm_step(prompt.embeds, prompt.mask, prompt.positions, cache)  # [B, V]: answer token 0
        if answers.shape[1] == 1:
            return first[:, None]
        steps = torch.arange(1, answers.shape[1], device=self.device)  # the answer's own positions, after the prompt
        mask = torch.cat([prompt.mask, prompt.mask.new_ones(len(rows), answers.shape[1] - 1)], dim=1)
        positions = prompt.positions[..., -1:] + steps  # [P, B, A - 1]
        out = self.lm(inputs_embeds=self.embed(answers[:, :-1]), attention_mask=mask,
                      position_ids=positions if self.layout.mrope else positions[0], cache=cache, use_cache=True)
        return torch.cat([first[:, None], self.head(out.last_hidden_state)], dim=1)  # [B, A, V]

    def stop_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    @torch.inference_mode()
    def generate(self, rows: list[torch.Tensor], images: dict, max_new_tokens: int, stop_at_eos: bool = True,
                 pad_id: int = 0, instructions: list[Instruction] | None = None, all_logits: bool = False) -> Output:
        """Greedy generation of up to `max_new_tokens` per row (all of them unless `stop_at_eos`), timed;
        `instructions` (one per row) for the strategies that condition on what is asked; `all_logits` keeps every
        step's logits (a distillation teacher's targets)."""
        start = self._sync()
        self.strategy.before_visual(instructions)
        visual = self.visual(images)
        vision_end = self._sync()
        prompt = self.prompt(rows, visual)
        self.strategy.before_prefill(prompt)
        cache = DynamicCache(config=self.lm.config)
        logits = self._lm_step(prompt.embeds, prompt.mask, prompt.positions, cache)
        token = logits.argmax(-1)  # [B]
        prefill_end = self._sync()
        output = Output(token[:, None], logits, prompt.visual_tokens, vision_end - start, prefill_end - vision_end)
        stops = torch.tensor(self.stop_ids() if stop_at_eos else [], dtype=torch.long, device=self.device)
        done = torch.isin(token, stops)
        mask, positions, tokens, steps = prompt.mask, prompt.positions, [token], [logits] if all_logits else None
        for _ in range(max_new_tokens - 1):
            if done.all():
                break
            step_start = self._sync()
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)  # [B, L + t]
            positions = positions[..., -1:] + 1  # [P, B, 1]: the next position on every axis
            logits = self._lm_step(self.embed(token)[:, None], mask, positions, cache)
            token = logits.argmax(-1).masked_fill(done, pad_id)  # [B]
            done |= torch.isin(token, stops)
            tokens.append(token)
            if all_logits:
                steps.append(logits)
            output.decode_s.append(self._sync() - step_start)
        output.tokens = torch.stack(tokens, dim=1)  # [B, n]
        output.logits = torch.stack(steps, dim=1) if all_logits else None  # [B, n, V]
        output.kv_cache_bytes = kv_cache_bytes(cache)
        return output

    @torch.inference_mode()
    def flops(self, rows: list[torch.Tensor], images: dict, instructions: list[Instruction] | None = None) -> dict:
        """FLOPs per row of the vision part (tower to the feature layer, the strategy's own selection and the
        projector), the prefill, and one decode step (attention over the cache included)."""
        def count(fn):
            with FlopCounterMode(display=False) as counter:
                result = fn()
            return result, counter.get_total_flops() / len(rows)

        self.strategy.before_visual(instructions)
        visual, vision = count(lambda: self.visual(images))
        prompt = self.prompt(rows, visual)
        self.strategy.before_prefill(prompt)
        cache = DynamicCache(config=self.lm.config)
        logits, prefill = count(lambda: self._lm_step(prompt.embeds, prompt.mask, prompt.positions, cache))
        mask = torch.cat([prompt.mask, prompt.mask.new_ones(len(rows), 1)], dim=1)
        step = lambda: self._lm_step(self.embed(logits.argmax(-1))[:, None], mask, prompt.positions[..., -1:] + 1, cache)  # noqa: E731
        _, decode = count(step)
        return {"vision": vision, "prefill": prefill, "decode": decode}


def reduced_runner(model: nn.Module, strategy: Strategy, layout: Layout | None = None) -> Runner:
    """The one way to ask a reduced VLM: `strategy` (from reduction.build_vlm) applied to `model` in place (its
    site's class swaps and hooks) and the Runner whose requests it reduces, numbering the kept tokens as the
    strategy says (pruning.positions). `strategy.remove_from_vlm(model, layout)` undoes it."""
    layout = layout or layout_of(model)
    strategy.apply_to_vlm(model, layout)
    return Runner(model, strategy=strategy, layout=layout)
