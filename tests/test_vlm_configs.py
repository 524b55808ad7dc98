"""The generative-VLM model configs (conf/model): the published architectures and the tiny random ones.

Published (llava_1_5_7b, llava_onevision_0_5b, qwen2_vl_2b, qwen2_5_vl_3b): the `architecture` block, built as
`AutoConfig.for_model(model_type, **rest)` on the meta device (no weights, no download), gives the published
checkpoint: its parameter count matches the Hugging Face model page's "Model size" to the figure's rounding, and the
token layout (patches, merge, feature layer, placeholder ids) is the published one.

Tiny (llava_tiny, onevision_tiny, qwen2_vl_tiny): the same layouts at 32 px with 4 px patches, random init on CPU;
the language model runs on a few token ids, and a whole image-text forward runs with the placeholder count the layout
implies (the models raise when the count of placeholder tokens differs from that of image features).
"""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModelForImageTextToText

CONF = Path(__file__).parent.parent / "conf" / "model"

# The Hugging Face model page's "Model size" (the safetensors parameter count; tied embeddings counted once), as
# (figure, unit of its last digit): the count must round to the figure.
PUBLISHED = {
    "llava_1_5_7b": ("llava-hf/llava-1.5-7b-hf", "LlavaForConditionalGeneration", 7.06e9, 0.01e9),
    "llava_onevision_0_5b": ("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "LlavaOnevisionForConditionalGeneration",
                             894e6, 1e6),
    "qwen2_vl_2b": ("Qwen/Qwen2-VL-2B-Instruct", "Qwen2VLForConditionalGeneration", 2.21e9, 0.01e9),
    "qwen2_5_vl_3b": ("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen2_5_VLForConditionalGeneration", 3.75e9, 0.01e9),
}
TINY = ("llava_tiny", "onevision_tiny", "qwen2_vl_tiny")
CLIP_VOCAB = 49408  # the CLIP BPE tokenizer in assets/clip-tokenizer; the tiny configs add their special ids after it
BOS, EOS = 49406, 49407


def load(name: str):
    return OmegaConf.load(CONF / f"{name}.yaml")


def hf_config(name: str):
    arch = OmegaConf.to_container(load(name).architecture, resolve=True)
    return AutoConfig.for_model(arch.pop("model_type"), **arch)


_meta_models = {}


def meta_model(name: str):
    """The published architecture with no storage (built once per session)."""
    if name not in _meta_models:
        config = hf_config(name)
        with torch.device("meta"):
            _meta_models[name] = AutoModelForImageTextToText.from_config(config)
    return _meta_models[name]


def tiny_model(name: str):
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_config(hf_config(name)).eval()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied lm_head is the embedding Parameter: counted once


@pytest.mark.parametrize("name", [*PUBLISHED, *TINY])
def test_config_file_format(name):
    cfg = load(name)
    assert cfg.name == name
    assert cfg.path is None and cfg.tokenizer is None and cfg.image_size is None
    assert cfg.attn_implementation == "sdpa"
    if name in PUBLISHED:
        assert (cfg.hub_id, cfg.weights) == (PUBLISHED[name][0], "pretrained")
    else:
        assert (cfg.hub_id, cfg.weights) == (None, "random")
    assert {"model_type", "vision_config", "text_config"} <= set(cfg.architecture)
    assert "model_type" in cfg.architecture.vision_config and "model_type" in cfg.architecture.text_config


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_parameter_count(name):
    _, class_name, figure, unit = PUBLISHED[name]
    model = meta_model(name)
    assert type(model).__name__ == class_name
    n = n_params(model)
    assert abs(n - figure) <= unit / 2, f"{name}: {n:,} parameters, the model page says {figure:,.0f}"


def test_llava_1_5_7b_architecture():
    config, model = hf_config("llava_1_5_7b"), meta_model("llava_1_5_7b")
    vision, text = config.vision_config, config.text_config
    assert (vision.model_type, vision.image_size, vision.patch_size) == ("clip_vision_model", 336, 14)
    assert (vision.num_hidden_layers, vision.hidden_size) == (24, 1024)  # CLIP ViT-L/14-336
    assert model.model.vision_tower.embeddings.num_patches == (336 // 14) ** 2 == 576 == config.image_seq_length
    assert model.model.vision_tower.embeddings.num_positions == 577  # + CLS, which "default" selection drops
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-2, "default")
    assert (text.model_type, text.num_hidden_layers, text.hidden_size) == ("llama", 32, 4096)
    assert text.intermediate_size == 11008
    assert (text.num_attention_heads, text.num_key_value_heads, text.max_position_embeddings) == (32, 32, 4096)
    assert (text.vocab_size, config.image_token_id, config.pad_token_id) == (32064, 32000, 32001)
    projector = model.model.multi_modal_projector
    assert (projector.linear_1.in_features, projector.linear_2.out_features) == (1024, 4096)
    assert model.lm_head.weight is not model.get_input_embeddings().weight


def test_llava_onevision_0_5b_architecture():
    config, model = hf_config("llava_onevision_0_5b"), meta_model("llava_onevision_0_5b")
    vision, text = config.vision_config, config.text_config
    assert (vision.model_type, vision.image_size, vision.patch_size) == ("siglip_vision_model", 384, 14)
    assert (vision.num_hidden_layers, vision.hidden_size) == (26, 1152)  # So400m without its last layer
    embeddings = model.model.vision_tower.embeddings
    assert embeddings.num_patches == embeddings.num_positions == (384 // 14) ** 2 == 729  # per crop, no CLS
    assert not vision.vision_use_head
    assert not any(".head." in f".{n}" for n, _ in model.model.vision_tower.named_parameters())  # no attention pool
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-1, "full")
    assert config.vision_aspect_ratio == "anyres_max_9"
    pinpoints = config.image_grid_pinpoints
    assert len(pinpoints) == 36 and sorted({h for h, _ in pinpoints}) == [384 * k for k in range(1, 7)]
    assert all(w % 384 == 0 for _, w in pinpoints)
    assert model.model.image_newline.shape == (896,)
    assert (text.model_type, text.num_hidden_layers, text.hidden_size) == ("qwen2", 24, 896)
    assert text.intermediate_size == 4864
    assert (text.num_attention_heads, text.num_key_value_heads) == (14, 2)
    assert (text.vocab_size, config.image_token_id, config.video_token_id) == (152000, 151646, 151647)
    assert model.lm_head.weight is model.get_input_embeddings().weight


@pytest.mark.parametrize("name", ["qwen2_vl_2b", "qwen2_5_vl_3b"])
def test_qwen_vl_architecture(name):
    config, model = hf_config(name), meta_model(name)
    vision, text = config.vision_config, config.text_config
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)
    assert vision.patch_size * vision.spatial_merge_size == 28  # one LLM token per 28x28 px
    assert model.model.visual.patch_embed.proj.kernel_size == (2, 14, 14)
    assert len(model.model.visual.blocks) == vision.depth == 32
    head_dim = text.hidden_size // text.num_attention_heads
    assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2 == 64  # temporal, height, width
    assert model.model.visual.merger.mlp[-1].out_features == text.hidden_size
    assert (config.vision_start_token_id, config.vision_end_token_id) == (151652, 151653)
    assert (config.image_token_id, config.video_token_id, text.vocab_size) == (151655, 151656, 151936)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    if name == "qwen2_vl_2b":
        assert (vision.embed_dim, vision.num_heads, vision.mlp_ratio, vision.hidden_act) == (1280, 16, 4, "quick_gelu")
        assert (text.num_hidden_layers, text.hidden_size, text.intermediate_size) == (28, 1536, 8960)
        assert (text.num_attention_heads, text.num_key_value_heads) == (12, 2)
    else:
        assert (vision.hidden_size, vision.intermediate_size, vision.num_heads) == (1280, 3420, 16)
        assert vision.hidden_act == "silu"  # SwiGLU
        assert vision.out_hidden_size == text.hidden_size == 2048
        assert list(vision.fullatt_block_indexes) == [7, 15, 23, 31]
        assert vision.window_size == 112  # px: 8x8 patches, 4x4 merged tokens per window
        assert (text.num_hidden_layers, text.intermediate_size, text.max_position_embeddings) == (36, 11008, 128000)
        assert (text.num_attention_heads, text.num_key_value_heads) == (16, 2)


@pytest.mark.parametrize("name", TINY)
def test_tiny_language_model_runs(name):
    model = tiny_model(name)
    vocab = model.config.text_config.vocab_size
    special = [v for k, v in model.config.to_dict().items()
               if k.endswith(("token_id", "token_index")) and v is not None]
    assert len(set(special)) == len(special) and all(CLIP_VOCAB <= i < vocab for i in special)  # added after CLIP's BPE
    ids = torch.tensor([[BOS, 320, 1125, 539, 320, 2368, EOS]])  # "a photo of a dog" in CLIP BPE ids
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], vocab) and torch.isfinite(logits).all()


def test_llava_tiny_image_forward():
    model = tiny_model("llava_tiny")
    embeddings = model.model.vision_tower.embeddings
    assert (embeddings.num_patches, embeddings.num_positions) == ((32 // 4) ** 2, 65)  # 64 patches + CLS
    assert model.config.vision_feature_layer == -2 and model.config.image_seq_length == 64
    ids = torch.tensor([[BOS] + [model.config.image_token_id] * 64 + [320, 2368, EOS]])
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32)).logits
    assert logits.shape == (1, ids.shape[1], 49410) and torch.isfinite(logits).all()


def test_onevision_tiny_image_forward():
    model = tiny_model("onevision_tiny")
    embeddings = model.model.vision_tower.embeddings
    assert embeddings.num_patches == embeddings.num_positions == 64  # per 32 px crop, no CLS
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in model.config.image_grid_pinpoints)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    # A 32x32 image: the base view plus one 32x32 AnyRes crop (2 views); 64 base tokens + an 8x8 crop grid with an
    # image_newline after each of its 8 rows = 136 placeholders (the forward raises if the count is wrong).
    n_tokens = 64 + 8 * 8 + 8
    ids = torch.tensor([[BOS] + [model.config.image_token_id] * n_tokens + [320, 2368, EOS]])
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=torch.randn(1, 2, 3, 32, 32),
                       image_sizes=torch.tensor([[32, 32]])).logits
    assert logits.shape == (1, ids.shape[1], 49410) and torch.isfinite(logits).all()


def test_qwen2_vl_tiny_image_forward():
    model = tiny_model("qwen2_vl_tiny")
    config = model.config
    vision, text = config.vision_config, config.text_config
    assert sum(text.rope_parameters["mrope_section"]) == text.hidden_size // text.num_attention_heads // 2
    # A 32x32 image (one frame repeated to the 2-frame temporal patch): an 8x8 grid of 4 px patches, flattened as the
    # processor does to [patches, channels * 2 * 4 * 4]; the 2x2 merger gives 16 LLM tokens.
    grid = torch.tensor([[1, 32 // vision.patch_size, 32 // vision.patch_size]])
    assert grid.prod() == 64
    n_tokens = 64 // vision.spatial_merge_size**2
    ids = torch.tensor([[BOS, config.vision_start_token_id] + [config.image_token_id] * n_tokens
                        + [config.vision_end_token_id, 320, 2368, EOS]])
    pixel_values = torch.randn(64, 3 * vision.temporal_patch_size * vision.patch_size**2)
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixel_values, image_grid_thw=grid,
                       mm_token_type_ids=(ids == config.image_token_id).int()).logits
    assert logits.shape == (1, ids.shape[1], 49420) and torch.isfinite(logits).all()
