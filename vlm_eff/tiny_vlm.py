"""The project's small generative VLMs (LLaVA-1.5 layout, trained here on CIFAR-10 mosaics): what a
`save_pretrained` directory needs beside the weights, and the tower's start from a trained dual encoder.

    tokenizer   word level (the `tokenizers` library): every word the mosaic questions and answers use,
                the chat words, <image>, <pad>, <s>, </s>, <unk>; lower case, punctuation split off
    processor   LlavaProcessor: that tokenizer, the dual encoder's image preprocessing at the mosaic's
                size, LLaVA-1.5's chat template ("<s>USER: <image>\\n{question} ASSISTANT:", the answer and </s> after)
    tower       the trained tiny CLIP's (or SigLIP's) vision weights, position embeddings interpolated
                (bicubic) from its 8 x 8 grid to the mosaic's 16 x 16
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from torch import nn
from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast, SiglipImageProcessorPil

from vlm_eff.data.cifar10_vqa import ANIMALS, NO, QUADRANTS, QUESTIONS, VEHICLES, YES, article
from vlm_eff.errors import ConfigError

SPECIAL = ("<pad>", "<unk>", "<s>", "</s>", "<image>")  # ids 0..4
CHAT_WORDS = ("user", "assistant", ":")
TURNS = ("{% for message in messages %}{% if message['role'] == 'user' %}USER: "
         "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
         "{% else %}{{ item['text'] }}{% endif %}{% endfor %} ASSISTANT:{% elif message['role'] == "
         "'assistant' %} {% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>"
         "{% endif %}{% endfor %}")  # LLaVA-1.5's turns
CHAT_TEMPLATE = "<s>" + TURNS


def vocabulary() -> list[str]:
    """Every word of the mosaic questions and answers and of the chat template, special tokens first."""
    names = [*ANIMALS, *VEHICLES]
    texts = [QUESTIONS["count"], *(QUESTIONS["position"].format(quadrant=q) for q in QUADRANTS),
             *(QUESTIONS["presence"].format(article=article(n), name=n) for n in names)]
    words = {w for text in texts for w in split_words(text)} | set(names) | {YES, NO} | {str(i) for i in range(10)}
    return [*SPECIAL, *CHAT_WORDS, *sorted(words - set(CHAT_WORDS))]


def split_words(text: str) -> list[str]:
    return [word for word, _ in pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                         pre_tokenizers.Punctuation()]).pre_tokenize_str(text.lower())]


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `vocabulary()`: <s> before a text, left padding (for generation)."""
    vocab = {word: i for i, word in enumerate(vocabulary())}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", extra_special_tokens={"image_token": "<image>"},
                                        padding_side="left")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


def processor(tokenizer, dual_encoder_dir: Path, image_size: int, patch_size: int, select: str) -> LlavaProcessor:
    """LLaVA's processor for the small VLM: the dual encoder's normalisation at `image_size` px, one <image>
    placeholder per visual token (`select` = the feature select strategy: `default` drops CLS)."""
    config = json.loads((Path(dual_encoder_dir) / "preprocessor_config.json").read_text())
    size = {"height": image_size, "width": image_size}
    if config.get("image_processor_type", "").startswith("Siglip"):
        images = SiglipImageProcessorPil(size=size, image_mean=config["image_mean"], image_std=config["image_std"])
        extra = 0
    else:
        images = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size=size,
                                       image_mean=config["image_mean"], image_std=config["image_std"])
        extra = 1  # CLIP's CLS, which `default` drops
    return LlavaProcessor(images, tokenizer, patch_size=patch_size, vision_feature_select_strategy=select,
                          chat_template=CHAT_TEMPLATE, num_additional_image_tokens=extra)


def save_with_clip_processor(model: nn.Module, directory: Path) -> None:
    """A random-init LLaVA-layout model whose ids follow the CLIP BPE tokenizer (model=llava_tiny: <image> 49408,
    <pad> 49409 added) saved with a processor: that tokenizer (assets/clip-tokenizer), CLIP's image processor at
    the tower's size, LLaVA-1.5's turns as chat template; `model.path=<directory>` then runs protocol=vqa."""
    from transformers import CLIPTokenizerFast

    tokenizer = CLIPTokenizerFast.from_pretrained(Path(__file__).resolve().parents[1] / "assets" / "clip-tokenizer")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.padding_side = "left"
    tokenizer.model_max_length = model.config.text_config.max_position_embeddings  # CLIP's 77 is the text tower's
    if tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) != [model.config.image_token_id, model.config.pad_token_id]:
        raise ConfigError("the model's <image> and <pad> ids are not the CLIP tokenizer's added 49408 and 49409")
    vision = model.config.vision_config
    size = {"height": vision.image_size, "width": vision.image_size}
    images = CLIPImageProcessorPil(size={"shortest_edge": vision.image_size}, crop_size=size)
    LlavaProcessor(images, tokenizer, patch_size=vision.patch_size, chat_template=TURNS, num_additional_image_tokens=1,
                   vision_feature_select_strategy=model.config.vision_feature_select_strategy).save_pretrained(directory)
    model.save_pretrained(directory)


@torch.no_grad()
def init_tower(tower: nn.Module, dual_encoder_dir: Path) -> None:
    """Copy a trained dual encoder's vision weights into the VLM's `tower`, interpolating the position
    embeddings (bicubic, CLS kept) from the dual encoder's patch grid to the tower's."""
    from transformers import AutoModel

    path = Path(dual_encoder_dir)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.init_tower={path} holds no trained dual encoder (no config.json there)")
    source = AutoModel.from_pretrained(path).vision_model.float().state_dict()
    key = "embeddings.position_embedding.weight"
    has_cls = "embeddings.class_embedding" in source
    old, new = source[key], tower.state_dict()[key]
    grid, side = math.isqrt(old.shape[0] - has_cls), math.isqrt(new.shape[0] - has_cls)
    patches = old[has_cls:].T.reshape(1, -1, grid, grid)  # [1, D, g, g]
    patches = F.interpolate(patches, size=(side, side), mode="bicubic", align_corners=False)
    source[key] = torch.cat([old[:has_cls], patches.reshape(-1, side * side).T])  # [1? + s^2, D]
    source.pop("embeddings.position_ids", None)
    has_head = any(k.startswith("head.") for k in tower.state_dict())
    missing, unexpected = tower.load_state_dict({k: v for k, v in source.items() if has_head or not k.startswith("head.")},
                                                strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise ConfigError(f"model.init_tower={path}: its vision weights do not fit the tower "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
