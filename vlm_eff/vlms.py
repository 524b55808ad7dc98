"""One description per generative VLM layout, beside the dual-encoder families of towers.py and read
the same way: where the vision tower, projector and language model (LLM) are, which tower layer feeds
the LLM, how an image's visual tokens are computed, and how their positions are numbered.

    layout           class                                   tower (CLS)      feature layer             visual tokens per image
    llava            LlavaForConditionalGeneration           CLIP (yes)       -2, CLS dropped (default) (S / p)^2: 576 at 336 px
    llava_onevision  LlavaOnevisionForConditionalGeneration  SigLIP (no)      -1, every token (full)    base crop + anyres crops, a newline per row
    qwen2_vl         Qwen2VLForConditionalGeneration         its own ViT      last, 2x2 PatchMerger     one per 28 x 28 px; M-RoPE (t, h, w) positions
    qwen2_5_vl       Qwen2_5_VLForConditionalGeneration      windowed ViT     as Qwen2-VL

Every image's visual tokens come with their *slots*: for each token, the index in the stock model's run
of image placeholders of the token it stands for (a merged token: its lowest patch). The request runner
(generation.py) places the tokens and numbers their positions from the slots, whatever the layout; at
keep 1.0 the slots are 0..n-1 and the request is the stock model's.

The jobs, the reduction and the modules ask the layout, never the model type: a new VLM is one class
here and one entry in LAYOUTS.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from vlm_eff.errors import ConfigError
from vlm_eff.reduction.base import NoReduction, Strategy
from vlm_eff.towers import Family, family_for

PROMPT_TEXT_TOKENS = (8, 24)  # a synthetic prompt: this many text tokens before and after the image


class ImageTokens(NamedTuple):
    """What the LLM receives for one image, and where each token came from."""

    embeds: torch.Tensor  # [n, D_llm] in the order handed over
    slots: torch.Tensor  # [n] long: index in the stock placeholder run of the token each stands for
    full: int  # the stock run's length (visual tokens without reduction)
    grid: torch.Tensor | None = None  # [3] (t, h, w) patches of the image (M-RoPE layouts), else None


class Layout:
    """LLaVA-1.5: a CLIP (or SigLIP) tower read at `vision_feature_layer`, `default` drops CLS, an MLP
    projector, one placeholder per visual token, 1-D RoPE in the LLM. Other layouts override what differs."""

    name = "llava"
    title = "LLaVA-1.5"
    model_class: type = LlavaForConditionalGeneration
    config_class: type = LlavaConfig
    mrope = False  # positions are (t, h, w) triples (Qwen) rather than one index
    patch_grid = False  # kept tokens go back onto the crops' patch grids (OneVision): each must stand for a patch

    def init_random(self, model: nn.Module) -> None:
        """Anything a fresh random init needs beyond the config (nothing for a VLM)."""

    # -- where the parts are ---------------------------------------------------------------------------
    def vision(self, model: nn.Module) -> nn.Module:
        return model.model.vision_tower

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def lm_head(self, model: nn.Module) -> nn.Module:
        return model.lm_head

    def projector(self, model: nn.Module) -> nn.Module:
        """What maps the tower's features to the language model's inputs (what `objective.train=projector` trains)."""
        return model.model.multi_modal_projector

    def image_token_id(self, config) -> int:
        return config.image_token_id

    def tower_family(self, config) -> Family | None:
        """The dual-encoder family of the vision tower (what encoder-site strategies patch), None if its own."""
        return family_for(config.vision_config.model_type.removesuffix("_vision_model"), "the VLM's vision tower")

    def feature_depth(self, config) -> int:
        """Encoder layers run for the features: Hugging Face's hidden_states[vision_feature_layer]."""
        layer = config.vision_feature_layer
        if not isinstance(layer, int):
            raise ConfigError(f"vision_feature_layer={layer} (several layers concatenated) is not supported; "
                              "vlm-eff reads one feature layer")
        n_layers = config.vision_config.num_hidden_layers
        return layer % (n_layers + 1)

    def encoder_config(self, config):
        """The vision config as the encoder site sees it: only the layers up to the feature layer."""
        vision = config.vision_config.to_dict()
        vision["num_hidden_layers"] = self.feature_depth(config)
        return vision

    def visual_token_count(self, config) -> int | None:
        """Visual tokens of every image (None where they depend on the image's size)."""
        side = config.vision_config.image_size // config.vision_config.patch_size
        with_cls = self.tower_family(config).has_cls and config.vision_feature_select_strategy == "full"
        return side * side + int(with_cls)

    # -- visual tokens ---------------------------------------------------------------------------------
    def tower_tokens(self, model: nn.Module, pixel_values: torch.Tensor, strategy: Strategy,
                     hands_over: str = "spatial") -> tuple[torch.Tensor, torch.Tensor]:
        """Features of the feature layer [C, T, D] of C crops [C, 3, S, S], with the patch each stands for
        [C, T] (-1: CLS or a summary token, as the applied `strategy` records them): in spatial order, or as the
        strategy selected them (`hands_over="as_selected"`)."""
        tower = self.vision(model)
        family = self.tower_family(model.config)
        x = family.hidden_states(tower, pixel_values.to(tower.dtype), self.feature_depth(model.config))  # [C, T, D]
        origin = strategy.token_origins(tower, x, family.has_cls)  # [C, T]
        if hands_over == "as_selected":
            return x, origin
        order = origin.argsort(dim=1, stable=True)  # merged tokens sit where their lowest patch was
        return x.gather(1, order[..., None].expand_as(x)), origin.gather(1, order)

    def visual_tokens(self, model: nn.Module, images: dict, strategy: Strategy | None = None) -> list[ImageTokens]:
        """Each image's visual tokens (after the projector) under the applied `strategy` (None: the stock tower), in
        placeholder order: spatial (the feature select strategy applies: `default` drops token 0) or, for a
        strategy that hands over "as_selected", its own order, CLS included (VisionZip)."""
        config = model.config
        strategy = strategy or NoReduction()
        hands_over = strategy.hands_over
        x, origin = self.tower_tokens(model, images["pixel_values"], strategy, hands_over)  # [B, T, D], [B, T]
        with_cls = self.tower_family(config).has_cls and config.vision_feature_select_strategy == "full"
        if config.vision_feature_select_strategy == "default" and hands_over == "spatial":
            x, origin = x[:, 1:], origin[:, 1:]  # Hugging Face drops token 0 (CLS, or what replaced it)
        embeds = model.model.multi_modal_projector(x)  # [B, T', D_llm]
        side = config.vision_config.image_size // config.vision_config.patch_size
        slots = (origin + int(with_cls)).clamp(min=0)  # a summary token takes the first slot
        return [ImageTokens(e, s, side * side + int(with_cls)) for e, s in zip(embeds, slots)]

    def image_inputs(self, batch: dict) -> dict:
        """The processor outputs this layout's vision part reads."""
        return {"pixel_values": batch["pixel_values"]}

    def stock_positions(self, model: nn.Module, ids: torch.Tensor, images: list[ImageTokens]) -> torch.Tensor:
        """Positions of one unpadded stock prompt `ids` [L] (every image's full run of placeholders) -> [P, L]."""
        return torch.arange(ids.shape[0], device=ids.device)[None]  # [1, L]

    # -- synthetic requests (profiling with random weights) ----------------------------------------------
    def image_side(self, config, image_size: int | None) -> int:
        side = config.vision_config.image_size
        if image_size not in (None, side):
            raise ConfigError(f"model.image_size={image_size} is not supported on {self.name}: its processor "
                              f"resizes to the tower's {side} px (leave model.image_size=null)")
        return side

    def synthetic_images(self, config, batch: int, image_size: int | None, generator: torch.Generator) -> dict:
        side = self.image_side(config, image_size)
        return {"pixel_values": torch.randn(batch, 3, side, side, generator=generator)}

    def synthetic_prompt(self, config, generator: torch.Generator) -> torch.Tensor:
        """A fixed-length prompt for a model without a processor: text ids drawn inside the language model's
        vocabulary (never a special token's), one image placeholder run (the runner expands it), text -> [L]."""
        reserved = special_ids(config) | special_ids(config.text_config)
        text = torch.tensor([i for i in range(config.text_config.vocab_size) if i not in reserved])  # [V']
        before, after = (text[torch.randint(len(text), (n,), generator=generator)] for n in PROMPT_TEXT_TOKENS)
        return torch.cat([before, self.image_run(config), after])

    def image_run(self, config) -> torch.Tensor:
        return torch.tensor([self.image_token_id(config)])


def special_ids(config) -> set[int]:
    """The ids a Hugging Face config reserves (image, video, vision start / end, pad, bos, eos: every
    `*_token_id`, `*_token_index`, `*_token_ids`)."""
    ids = set()
    for key, value in config.to_dict().items():
        if key.endswith(("_token_id", "_token_index", "_token_ids")) and value is not None:
            ids |= set(value) if isinstance(value, (list, tuple)) else {value}
    return ids


class OnevisionLayout(Layout):
    """LLaVA-OneVision: a SigLIP tower without CLS read at its last layer (`full`); anyres: the base image
    and the grid crops, unpadded and packed with a newline token after each row of the grid."""

    name = "llava_onevision"
    title = "LLaVA-OneVision"
    patch_grid = True
    model_class = LlavaOnevisionForConditionalGeneration
    config_class = LlavaOnevisionConfig

    def visual_token_count(self, config) -> None:
        return None  # anyres: the crops and newlines an image gets depend on its size

    def n_crops(self, config, image_size) -> int:
        return image_size_to_num_patches(image_size, config.image_grid_pinpoints, config.vision_config.image_size)

    def visual_tokens(self, model, images, strategy=None):
        """Kept tokens are scattered back onto their crops' patch grids and packed by the stock
        `pack_image_features` beside a mask of what was kept; the packed positions the mask marks are
        what the LLM receives (every row's newline token stays), in the grid's order whatever the strategy."""
        config, stock = model.config, model.model
        pixel_values, image_sizes = images["pixel_values"], images["image_sizes"]
        counts = [self.n_crops(config, size) for size in image_sizes.tolist()]
        crops = torch.cat([pixels[:n] for pixels, n in zip(pixel_values, counts)])  # [C, 3, S, S]
        x, origin = self.tower_tokens(model, crops, strategy or NoReduction())  # [C, T, D], [C, T]
        embeds = stock.multi_modal_projector(x)  # [C, T, D_llm]
        C, T, D = embeds.shape
        side = config.vision_config.image_size // config.vision_config.patch_size
        grid = embeds.new_zeros(C, side * side, D).scatter(1, origin[..., None].expand(C, T, D), embeds)  # [C, N, D]
        kept = embeds.new_zeros(C, side * side, 1).scatter(1, origin[..., None], 1.0)  # [C, N, 1]
        packed, _ = stock.pack_image_features(grid.split(counts), image_sizes, stock.image_newline,
                                              config.vision_aspect_ratio)
        masks, _ = stock.pack_image_features(kept.split(counts), image_sizes, kept.new_ones(1), config.vision_aspect_ratio)
        result = []
        for features, mask in zip(packed, masks):  # [L, D_llm], [L, 1]
            if ((mask > 0) & (mask < 1)).any():
                raise ConfigError("this image has more crops than anyres_max allows, and LLaVA-OneVision interpolates "
                                  "its grid: a reduced grid cannot be interpolated; use smaller images or pruning=none")
            slots = mask[:, 0].nonzero()[:, 0]  # [n]
            result.append(ImageTokens(features[slots], slots, features.shape[0]))
        return result

    def image_inputs(self, batch):
        return {"pixel_values": batch["pixel_values"], "image_sizes": batch["image_sizes"]}

    def synthetic_images(self, config, batch, image_size, generator):
        side = self.image_side(config, image_size)
        n = self.n_crops(config, (side, side))
        return {"pixel_values": torch.randn(batch, n, 3, side, side, generator=generator),
                "image_sizes": torch.tensor([[side, side]] * batch)}


class QwenLayout(Layout):
    """Qwen2-VL: its own ViT (2-D RoPE, variable resolution) and a 2x2 PatchMerger, one visual token per
    28 x 28 px; the LLM numbers positions with M-RoPE: (t, h, w) for visual tokens, text continues after."""

    name = "qwen2_vl"
    title = "Qwen2-VL"
    model_class = Qwen2VLForConditionalGeneration
    config_class = Qwen2VLConfig
    mrope = True
    default_grid = 16  # synthetic images: 16 x 16 = 256 visual tokens (448 x 448 px at 14 px patches)

    def vision(self, model):
        return model.model.visual

    def projector(self, model):
        return model.model.visual.merger  # the 2x2 PatchMerger: its MLP maps the ViT's patches to the LLM's width

    def tower_family(self, config):
        return None  # its own ViT (2-D RoPE over packed images, a 2x2 PatchMerger): no dual-encoder tower to patch

    def visual_token_count(self, config) -> None:
        return None  # one token per 28 x 28 px of the image

    def visual_tokens(self, model, images, strategy=None):
        visual, grids = self.vision(model), images["image_grid_thw"]
        merged = visual(images["pixel_values"].to(visual.dtype), grid_thw=grids).pooler_output  # [sum n, D_llm]
        counts = (grids.prod(-1) // visual.spatial_merge_size**2).tolist()
        return [ImageTokens(e, torch.arange(n, device=e.device), n, grid)
                for e, n, grid in zip(merged.split(counts), counts, grids)]

    def image_inputs(self, batch):
        return {"pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"]}

    def stock_positions(self, model, ids, images):
        """The stock M-RoPE positions (get_rope_index) of one unpadded prompt -> [3, L]."""
        grids = torch.stack([image.grid for image in images]) if images else None
        types = (ids == self.image_token_id(model.config)).int()[None]  # [1, L]: 1 on image placeholders
        positions, _ = model.model.get_rope_index(ids[None], mm_token_type_ids=types, image_grid_thw=grids)
        return positions[:, 0]  # [3, L]

    def image_side(self, config, image_size):
        unit = config.vision_config.patch_size * config.vision_config.spatial_merge_size
        side = image_size or self.default_grid * unit
        if side % unit:
            raise ConfigError(f"model.image_size={side} must be a multiple of {unit} px (one visual token per "
                              f"{unit} x {unit} px)")
        return side

    def synthetic_images(self, config, batch, image_size, generator):
        """Flattened patches as Qwen's processor gives them: [B * h * w, 3 * T * p * p], grid (1, h, w)."""
        vision = config.vision_config
        h = w = self.image_side(config, image_size) // vision.patch_size
        width = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        return {"pixel_values": torch.randn(batch * h * w, width, generator=generator),
                "image_grid_thw": torch.tensor([[1, h, w]] * batch)}

    def image_run(self, config):
        return torch.tensor([config.vision_start_token_id, self.image_token_id(config), config.vision_end_token_id])


class Qwen25Layout(QwenLayout):
    """Qwen2.5-VL: Qwen2-VL's layout with a windowed ViT (RMSNorm, SwiGLU, window attention)."""

    name = "qwen2_5_vl"
    title = "Qwen2.5-VL"
    model_class = Qwen2_5_VLForConditionalGeneration
    config_class = Qwen2_5_VLConfig


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (Layout(), OnevisionLayout(), QwenLayout(), Qwen25Layout())}


def layout_of(model: nn.Module) -> Layout:
    return LAYOUTS[model.config.model_type]


def is_vlm(model_type: str) -> bool:
    return model_type in LAYOUTS
