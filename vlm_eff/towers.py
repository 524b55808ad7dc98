"""One description per model family: where a dual encoder keeps its vision tower's parts, how its
pooled image embedding is read, how it embeds text and scores image-text pairs, and how it trains.

    family   checkpoints (model_type)            CLS  pre-norm      pooled embedding                  logits
    clip     OpenAI CLIP, LAION, MetaCLIP (clip)  yes  pre_layrnorm  post_layernorm(token 0)           scale * cos
                                                                     -> visual_projection
    siglip   SigLIP, fixed-resolution SigLIP 2    no   none          attention head: one probe over    scale * cos
             (siglip)                                                post_layernorm(every token)       + bias

Both keep `embeddings`, `encoder.layers` and `post_layernorm` in the vision tower; a reduction at
layer 0 acts on the embeddings' output, before any pre-norm, so no strategy needs to know it.

Token reduction, the jobs and the Lightning module ask the family instead of testing model types,
so a new family is one class here and one entry in FAMILIES.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

from vlm_eff.errors import ConfigError


class Family:
    """The CLIP layout; other families override what differs."""

    name = "clip"
    model_class: type = CLIPModel
    config_class: type = CLIPConfig
    has_cls = True  # token 0 is CLS and the pooled output reads it
    has_projections = True  # visual_projection / text_projection map each tower into the shared space

    def vision(self, model: nn.Module) -> nn.Module:
        """The vision tower: `embeddings`, `encoder.layers`, `post_layernorm` (and a pooling head)."""
        tower = getattr(model, "vision_model", model)
        if not (hasattr(tower, "embeddings") and hasattr(tower, "encoder")):
            raise TypeError(f"expected a Hugging Face {self.model_class.__name__} or its vision model, "
                            f"got {type(model).__name__}")
        return tower

    def pooling_attention(self, tower: nn.Module) -> nn.MultiheadAttention | None:
        """The attention that pools the tokens into the image embedding, if any (CLIP reads token 0)."""
        return None

    def pre_norm(self, tower: nn.Module) -> nn.Module:
        """What runs between the embeddings and the first layer (CLIP: pre_layrnorm)."""
        return tower.pre_layrnorm

    def hidden_states(self, tower: nn.Module, pixel_values: torch.Tensor, n_layers: int) -> torch.Tensor:
        """The residual stream after the first `n_layers` encoder layers, pixels [B, 3, H, W] -> [B, T, D]:
        Hugging Face's `hidden_states[n_layers]`, computed without running the layers after it (a VLM reads
        one feature layer). Token reduction, if patched in, happens on the way."""
        x = self.pre_norm(tower)(tower.embeddings(pixel_values))  # [B, T, D]
        for layer in tower.encoder.layers[:n_layers]:
            x = layer(x, None)  # [B, T', D]
        return x

    def image_embedding(self, model: nn.Module, pixel_values: torch.Tensor,
                        interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """pixels [B, 3, H, W] -> the embedding compared with text [B, P] (not normalised)."""
        pooled = model.vision_model(pixel_values=pixel_values,
                                    interpolate_pos_encoding=interpolate_pos_encoding).pooler_output  # [B, D]
        return model.visual_projection(pooled)  # [B, P]

    def tokenize(self, tokenizer, prompts: list[str], config) -> dict[str, torch.Tensor]:
        """Token ids (and attention mask) for `prompts`, as the family was trained."""
        length = config.text_config.max_position_embeddings  # longer captions are cut, as CLIP was trained
        tokens = tokenizer(prompts, padding=True, max_length=length, truncation=True, return_tensors="pt")
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def text_embedding(self, model: nn.Module, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.get_text_features(**tokens).pooler_output  # [C, P]

    def logits(self, model: nn.Module, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Unit image [B, P] and text [C, P] embeddings -> logits [B, C]."""
        return model.logit_scale.exp() * image @ text.to(image.dtype).T

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training loss over the class prompts: cross-entropy (CLIP's softmax over captions)."""
        return F.cross_entropy(logits, labels)

    def init_random(self, model: nn.Module) -> None:
        """Anything a fresh random init needs beyond the config (CLIP: nothing)."""



class SiglipFamily(Family):
    """SigLIP (and the fixed-resolution SigLIP 2 checkpoints, which are `SiglipModel`s): no CLS, no
    pre-norm; an attention-pooling head; text padded to the full length without a mask; sigmoid loss."""

    name = "siglip"
    model_class = SiglipModel
    config_class = SiglipConfig
    has_cls = False
    has_projections = False  # the text head and the attention-pooling head belong to the towers

    def pooling_attention(self, tower: nn.Module) -> nn.MultiheadAttention | None:
        head = getattr(tower, "head", None)  # VLM towers (LLaVA-OneVision) have none
        return None if head is None else head.attention

    def pre_norm(self, tower: nn.Module) -> nn.Module:
        return nn.Identity()

    def image_embedding(self, model, pixel_values, interpolate_pos_encoding=False):
        return model.vision_model(pixel_values=pixel_values,
                                  interpolate_pos_encoding=interpolate_pos_encoding).pooler_output  # [B, D]

    def tokenize(self, tokenizer, prompts, config):
        length = config.text_config.max_position_embeddings  # SigLIP pools the last position: pad to it
        tokens = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        return {"input_ids": tokens["input_ids"]}  # no attention mask, as SigLIP was trained

    def logits(self, model, image, text):
        return model.logit_scale.exp() * image @ text.to(image.dtype).T + model.logit_bias

    def loss(self, logits, labels):
        """SigLIP's sigmoid loss: every (image, class prompt) pair is a binary decision, +1 for the
        image's class and -1 for the others, summed over prompts and averaged over images."""
        signs = 2 * F.one_hot(labels, logits.shape[-1]).to(logits.dtype) - 1  # [B, C]
        return -F.logsigmoid(signs * logits).sum(dim=-1).mean()

    def init_random(self, model):
        """The paper's init t' = log 10, b = -10 (Hugging Face initialises both to 0, and a small SigLIP
        trained from there collapses: DESIGN.md, 'Towers without CLS')."""
        with torch.no_grad():
            model.logit_scale.fill_(math.log(10.0))
            model.logit_bias.fill_(-10.0)



FAMILIES: dict[str, Family] = {"clip": Family(), "siglip": SiglipFamily()}
NAFLEX = ("siglip2",)  # variable-resolution Siglip2Model (patch masks and spatial shapes): not supported


def family_for(model_type: str, where: str = "model") -> Family:
    """The family of a config's `model_type`; anything else is a one-line error naming what works."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if model_type in NAFLEX:
        raise ConfigError(
            f"{where} is a NaFlex Siglip2Model (model_type={model_type}, variable resolution), which vlm-eff does "
            f"not support; use a fixed-resolution SigLIP 2 checkpoint such as google/siglip2-base-patch16-224 "
            f"(model_type=siglip, model=siglip2_b16)"
        )
    raise ConfigError(f"{where} has model_type={model_type!r}; supported: {', '.join(FAMILIES)} "
                      f"(OpenAI CLIP, LAION, MetaCLIP; SigLIP, fixed-resolution SigLIP 2)")


def family_of(model: nn.Module) -> Family:
    """The family of a Hugging Face dual encoder (or its vision model)."""
    model_type = model.config.model_type.removesuffix("_vision_model")
    return family_for(model_type, type(model).__name__)


def vision_tower(model: nn.Module) -> nn.Module:
    """The vision tower of any supported model (the module holding `embeddings` and `encoder`)."""
    return family_of(model).vision(model)
