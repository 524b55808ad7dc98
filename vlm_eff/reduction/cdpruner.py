"""CDPruner (Zhang et al., NeurIPS 2025), generative VLMs, boundary site, after the projector, training-free: the
visual tokens of maximal conditional diversity, chosen by a determinantal point process conditioned on the
instruction (the question without its answer-format line), with greedy MAP inference.

Per image, Z = its projected tokens, S = their cosine similarities. Relevance, `pruning.relevance`:
- `tower` (default; needs `pruning.text_tower`, the dual encoder whose vision tower the VLM uses, hub id or dir):
  E = that encoder's image embedding of each feature-layer token (CLIP: visual_projection(post_layernorm(x)); SigLIP:
  its pooling head on the one-token sequence [post_layernorm(x)]), t = its text embedding of the instruction (CLIP:
  tokenised, cut into rows of max_position_embeddings tokens, the projected pooled output of each; SigLIP: padded to
  its length with the pad token, no attention mask); rel = mean over the rows of -cos(E, t) (the authors' sign);
- `llm` (any layout, e.g. Qwen2-VL, whose own ViT has no text tower): rel = -cos(Z, mean of the language model's
  input embeddings of the instruction's tokens): the same use of relevance with the language model's own vocabulary
  standing in for the text tower's embedding space.
rel is then min-max normalised over the image's tokens ((rel - min + 1e-6) / (max - min)); kernel
L = diag(rel) S diag(rel); the greedy fast MAP inference of Chen et al. (2018) picks the budget. S, rel, L and the
greedy run in float64 (in float32 the selection is not reproducible on a near-low-rank tower); an exhausted kernel
(no positive gain left) fills the rest by relevance. Kept in their order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlm_eff.errors import ConfigError
from vlm_eff.reduction.base import budget_knobs
from vlm_eff.reduction.boundary import AfterProjector

RELEVANCE = ("tower", "llm")
EXHAUSTED = 1e-12  # a marginal gain at or below this: the kernel has no direction left


def greedy_map(kernel: torch.Tensor, n: int, relevance: torch.Tensor) -> torch.Tensor:
    """Greedy MAP inference of a DPP with kernel [N, N] (Chen et al. 2018's incremental Cholesky): n indices, each the
    one of largest marginal gain (first maximum); once no gain is left, the rest by relevance [N]. -> [n] ascending."""
    N = kernel.shape[0]
    rows = kernel.new_zeros(n, N)  # the Cholesky rows of the chosen
    gains = kernel.diagonal().clone()  # [N]
    chosen: list[int] = []
    for i in range(n):
        j = int(gains.argmax())
        if gains[j] <= EXHAUSTED:
            rest = [k for k in relevance.argsort(descending=True, stable=True).tolist() if k not in chosen]
            chosen += rest[: n - len(chosen)]
            break
        chosen.append(j)
        row = (kernel[j] - rows[:i, j] @ rows[:i]) / gains[j].sqrt()  # [N]
        rows[i] = row
        gains = gains - row.square()
        gains[j] = -torch.inf
    return torch.tensor(sorted(chosen), dtype=torch.long, device=kernel.device)


def normalised(relevance: torch.Tensor) -> torch.Tensor:
    """The authors' min-max scaling of the relevance over one image's tokens."""
    return (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())


def conditional_kernel(tokens: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """L = diag(rel) S diag(rel), S the cosine similarities of `tokens` [N, D], all in float64 -> [N, N]."""
    unit = F.normalize(tokens.double(), dim=-1)
    return relevance[:, None] * (unit @ unit.T) * relevance[None, :]


class TextTower:
    """The dual encoder a VLM's vision tower comes from, for CDPruner's relevance: image embeddings of feature-layer
    tokens and text embeddings of instructions."""

    def __init__(self, source: str):
        from transformers import AutoModel, AutoTokenizer

        from vlm_eff.models import hub_reachable

        local = not hub_reachable()
        try:
            self.model = AutoModel.from_pretrained(source, local_files_only=local).float().eval()
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        except (OSError, ValueError) as error:
            raise ConfigError(f"pruning.text_tower={source}: no dual encoder with its tokenizer there "
                              f"({type(error).__name__}); give the CLIP / SigLIP checkpoint the VLM's tower comes from "
                              "(hub id or dir), or use pruning.relevance=llm") from None
        self.siglip = "siglip" in self.model.config.model_type

    @torch.no_grad()
    def image_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feature-layer tokens [N, D_v] -> their embeddings in the shared space [N, P]."""
        vision = self.model.to(tokens.device).vision_model  # the VLM's device, wherever it went after apply_to_vlm
        x = vision.post_layernorm(tokens.float())
        if self.siglip:
            return vision.head(x[:, None]).reshape(len(x), -1)  # the probe pools each one-token sequence
        return self.model.visual_projection(x)

    @torch.no_grad()
    def text_embeddings(self, text: str) -> torch.Tensor:
        """One instruction -> its text embeddings [M, P] (CLIP: one per row of max_position_embeddings tokens)."""
        length = self.model.config.text_config.max_position_embeddings
        if self.siglip:
            inputs = self.tokenizer(text, padding="max_length", max_length=length, truncation=True,
                                    return_tensors="pt")
            return self.model.get_text_features(input_ids=inputs["input_ids"].to(self.model.device)).pooler_output
        inputs = self.tokenizer(text, return_tensors="pt").to(self.model.device)
        pad = -inputs["input_ids"].shape[1] % length
        rows = {k: F.pad(v, (0, pad)).reshape(-1, length) for k, v in inputs.items() if k in ("input_ids",
                                                                                           "attention_mask")}
        return self.model.get_text_features(**rows).pooler_output


@dataclass
class CDPruner(AfterProjector):
    """CDPruner's knobs (a `Strategy` of the boundary site): acts on the projected tokens, conditioned on the
    instruction."""

    relevance: str = "tower"
    text_tower: TextTower | None = None
    embed: nn.Module | None = None  # the language model's input embeddings (relevance=llm)
    instructions: list | None = None
    features: list = field(default_factory=list)  # the feature-layer tokens the projector received (relevance=tower)
    hook: object | None = None
    name = "cdpruner"

    @classmethod
    def needs_tower(cls, cfg) -> bool:
        return cfg.get("relevance", "tower") == "tower"

    @classmethod
    def from_config(cls, cfg, layout, config) -> "CDPruner":
        relevance = cfg.get("relevance", "tower")
        if relevance not in RELEVANCE:
            raise ConfigError(f"pruning.relevance={relevance!r} is unknown; allowed: {', '.join(RELEVANCE)}")
        if relevance == "tower" and layout.name != "llava":
            raise ConfigError(f"pruning=cdpruner relevance=tower reads each visual token's feature-layer token, which "
                              f"{layout.name}'s packed crops do not hand over one to one; use pruning.relevance=llm")
        tower = None
        if relevance == "tower":
            if not cfg.get("text_tower"):
                raise ConfigError("pruning=cdpruner needs pruning.text_tower=<the CLIP / SigLIP checkpoint the VLM's "
                                  "vision tower comes from (hub id or dir)> for its relevance, or pruning.relevance=llm "
                                  "(the language model's own embeddings of the instruction)")
            tower = TextTower(str(Path(cfg.text_tower).expanduser()) if Path(str(cfg.text_tower)).expanduser().exists()
                              else str(cfg.text_tower))
        return cls(*budget_knobs(cfg, (None, 64)), relevance=relevance, text_tower=tower)

    def label(self) -> str:
        return f"cdpruner relevance={self.relevance}"

    def apply_to_vlm(self, model: nn.Module, layout) -> None:
        self.remove_from_vlm(model, layout)
        self.embed = model.get_input_embeddings()
        if self.relevance == "tower":  # what the projector receives: the feature-layer tokens, CLS dropped
            self.hook = model.model.multi_modal_projector.register_forward_pre_hook(
                lambda module, args: self.features.append(args[0]))

    def remove_from_vlm(self, model: nn.Module, layout) -> None:
        if self.hook is not None:
            self.hook.remove()
            self.hook = None

    def before_visual(self, instructions: list | None) -> None:
        self.instructions, self.features = instructions, []

    def after_projector(self, images: list) -> list:
        if self.instructions is None or len(self.instructions) != len(images):
            raise ConfigError("pruning=cdpruner conditions on each request's instruction, which this request does not "
                              "carry (one per image)")
        return super().after_projector(images)

    def pick(self, embeds: torch.Tensor, n: int, b: int) -> torch.Tensor:
        instruction = self.instructions[b]
        if self.relevance == "tower":
            image = F.normalize(self.text_tower.image_embeddings(self.features[0][b]).double(), dim=-1)  # [N, P]
            text = F.normalize(self.text_tower.text_embeddings(instruction.text).double(), dim=-1)  # [M, P]
            relevance = (-(image @ text.T)).mean(dim=-1)  # [N]
        else:
            asked = self.embed(instruction.ids.to(embeds.device)).double().mean(dim=0)  # [D]
            relevance = -F.cosine_similarity(embeds.double(), asked[None], dim=-1)  # [N]
        relevance = normalised(relevance)
        return greedy_map(conditional_kernel(embeds, relevance), n, relevance)
