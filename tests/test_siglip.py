"""Every strategy on a tower without CLS: a real (random-init) Hugging Face SiglipModel.

siglip_tiny: 32x32 images, 4x4 patches -> N = 64 tokens (no CLS), 4 vision layers, 4 heads, width 64,
and SigLIP's attention-pooling head (one probe over every token).
"""

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, model_config
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from vlm_eff.errors import ConfigError
from vlm_eff.models import ImageEncoder, random_model
from vlm_eff.modules import ZeroShotModule
from vlm_eff.reduction import apply_config, build, remove_all
from vlm_eff.reduction.dropping import adaptive_budgets, apply_patch
from vlm_eff.reduction.merging import apply_tome, r_for_keep, tome_tokens_per_layer
from vlm_eff.towers import family_of

N, LAYERS = 64, 4
PRESETS = ("cls_preserving", "late_layer", "evit")  # the strategies that are the stock model at keep 1.0


def siglip(attn: str = "sdpa"):
    torch.manual_seed(0)
    return random_model(model_config("siglip_tiny", attn)).eval()


@pytest.fixture(scope="module")
def model():
    return siglip()


@pytest.fixture(scope="module")
def sharp():
    """Query/key weights x4 (also the head's): random-init attention is near uniform, and ranking it means little."""
    m = copy.deepcopy(siglip())
    with torch.no_grad():
        for layer in m.vision_model.encoder.layers:
            layer.self_attn.q_proj.weight.mul_(4)
            layer.self_attn.k_proj.weight.mul_(4)
        m.vision_model.head.attention.in_proj_weight[: 2 * 64].mul_(4)
    return m


@pytest.fixture(autouse=True)
def unpatched(model, sharp):
    yield
    remove_all(model)
    remove_all(sharp)


def pixels(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def embed(model, x) -> torch.Tensor:
    with torch.no_grad():
        return ImageEncoder(model)(x)  # [B, D]


def preset(name: str, **overrides):
    cfg = OmegaConf.load(ROOT / "conf" / "pruning" / f"{name}.yaml")
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def layer_lengths(model, x) -> list[int]:
    lengths = []
    handles = [layer.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
               for layer in model.vision_model.encoder.layers]
    embed(model, x)
    for handle in handles:
        handle.remove()
    return lengths


@pytest.mark.parametrize("name", PRESETS)
def test_keep_one_reproduces_the_stock_siglip(model, name):
    x = pixels()
    stock = embed(model, x)
    apply_config(model, preset(name, keep=1.0, **({"layer": [1, 2, 3]} if name == "evit" else {})))
    assert torch.equal(embed(model, x), stock)


def test_tome_r0_reproduces_the_stock_siglip_and_remove_restores_it(model):
    x = pixels()
    stock = embed(model, x)
    apply_tome(model, 0)
    assert torch.equal(embed(model, x), stock)
    apply_tome(model, 8)
    assert not torch.allclose(embed(model, x), stock)
    remove_all(model)
    assert torch.equal(embed(model, x), stock)


def reference_top_k(model, x, after: int, keep: float, summary: bool) -> torch.Tensor:
    """SigLIP's image embedding with a top-k by L2 norm after `after` layers, in plain PyTorch: the
    embeddings, the layers, then keep the k highest-norm tokens in spatial order (and prepend their
    mean), then the remaining layers, post_layernorm and the pooling head."""
    tower = model.vision_model
    with torch.no_grad():
        h = tower.embeddings(x)  # [B, N, D] patches + positions
        for index, layer in enumerate(tower.encoder.layers):
            if index == after:
                h = top_k_tokens(h, keep, summary)
            h = layer(h, None)
        if after == LAYERS:
            h = top_k_tokens(h, keep, summary)
        return tower.head(tower.post_layernorm(h))  # [B, D]


def top_k_tokens(h: torch.Tensor, keep: float, summary: bool) -> torch.Tensor:
    B, T, D = h.shape
    k = int(keep * T)
    idx = h.norm(dim=-1).topk(k, dim=1).indices.sort(dim=1).values  # [B, k]
    kept = torch.stack([h[b, idx[b]] for b in range(B)])  # [B, k, D]
    return torch.cat([h.mean(dim=1, keepdim=True), kept], dim=1) if summary else kept


@pytest.mark.parametrize("after", [0, LAYERS // 2])
@pytest.mark.parametrize("summary", [False, True])
def test_top_k_equals_plain_pytorch(model, after, summary):
    x = pixels()
    expected = reference_top_k(model, x, after, 0.5, summary)  # on the stock modules
    apply_patch(model, keep=0.5, layer=after, keep_cls=not summary, summary="mean" if summary else "none")
    torch.testing.assert_close(embed(model, x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, keep, expected", [
    ("naive", 0.5, [33] * 4),  # mean summary + 32 kept, no CLS
    ("position_aware", 0.25, [17] * 4),
    ("cls_preserving", 0.5, [32] * 4),
    ("late_layer", 0.5, [64, 64, 32, 32]),
    ("evit", 0.5, [64, 33, 17, 9]),  # layers [1, 2, 3]: fused token + kept, compounding
])
def test_token_counts_follow_the_formula(model, name, keep, expected):
    cfg = preset(name, keep=keep, **({"layer": [1, 2, 3]} if name == "evit" else {}))
    strategy = apply_config(model, cfg)
    assert layer_lengths(model, pixels()) == expected == strategy.tokens_per_layer(N, LAYERS, has_cls=False)


def test_tome_merges_every_token_including_the_first_and_sizes_sum_to_n(model):
    state = apply_tome(model, 8)
    lengths = layer_lengths(model, pixels())
    assert lengths == [64, 56, 48, 40] == state.tokens_per_layer(N, LAYERS, has_cls=False)
    assert state.size.sum(dim=1).flatten().tolist() == [64.0] * 3


def test_without_cls_the_first_token_merges_like_any_other():
    from vlm_eff.reduction.merging import bipartite_soft_matching

    metric = torch.eye(6)[None]  # [1, 6, 6]: all orthogonal ...
    metric[0, 0] = metric[0, 1]  # ... but token 0 duplicates token 1
    x = torch.arange(6.0).view(1, 6, 1)
    assert bipartite_soft_matching(metric, 1, protect_first=False)(x).flatten().tolist() == [2, 4, 0.5, 3, 5]
    assert bipartite_soft_matching(metric, 1, protect_first=True)(x).flatten().tolist() != [2, 4, 0.5, 3, 5]


def test_tome_adds_log_size_to_the_pooling_head(model):
    state = apply_tome(model, 8)
    seen = {}
    handle = model.vision_model.head.attention.register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(mask=kwargs.get("attn_mask")), with_kwargs=True)
    embed(model, pixels(2))
    handle.remove()
    expected = state.size.log().transpose(1, 2)[:, None].expand(2, 4, 1, 32).reshape(8, 1, 32)  # [B * H, 1, T]
    torch.testing.assert_close(seen["mask"], expected)
    apply_tome(model, 8, prop_attn=False)
    handle = model.vision_model.head.attention.register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(mask=kwargs.get("attn_mask")), with_kwargs=True)
    embed(model, pixels(2))
    handle.remove()
    assert seen["mask"] is None


def test_pool_attn_is_the_probe_attention_of_the_head(sharp):
    """pool_attn on SigLIP = the head's own attention weights from its probe (nn.MultiheadAttention's,
    averaged over heads) over post_layernorm of the tokens after the reduced layer."""
    x = pixels(2)
    tower = sharp.vision_model
    captured = {}
    apply_patch(sharp, keep=0.25, layer=2, score="pool_attn", keep_cls=False, summary="none")
    reducer = tower.embeddings._reducer
    original = reducer.probe_attention
    reducer.probe_attention = lambda h: captured.setdefault("scores", original(h))
    embed(sharp, x)
    remove_all(sharp)
    with torch.no_grad():
        h = tower.embeddings(x)
        for layer in tower.encoder.layers[:2]:
            h = layer(h, None)
        probe = tower.head.probe.expand(2, 1, 64)
        normed = tower.post_layernorm(h)
        _, weights = tower.head.attention(probe, normed, normed, need_weights=True, average_attn_weights=True)
    torch.testing.assert_close(captured["scores"], weights.squeeze(1), atol=1e-5, rtol=1e-4)


def test_pool_attn_on_clip_is_cls_attn(tiny_clip):
    x = pixels(2)
    apply_patch(tiny_clip, keep=0.5, layer=2, score="cls_attn")
    cls_attn = embed(tiny_clip, x)
    apply_patch(tiny_clip, keep=0.5, layer=2, score="pool_attn")
    assert torch.equal(embed(tiny_clip, x), cls_attn)
    remove_all(tiny_clip)


def test_cls_attn_without_cls_is_a_one_line_error(model):
    with pytest.raises(ValueError, match=r"^pruning.score=cls_attn needs a CLS token and this tower has none"):
        apply_patch(model, keep=0.5, layer=2, score="cls_attn")
    with pytest.raises(ConfigError, match="use pool_attn"):
        build(preset("late_layer", score="cls_attn"), model.config.vision_config, has_cls=False)


def test_adaptive_keep_padding_is_hidden_from_the_pooling_head(sharp):
    """A padded batch gives each image what it gives alone: the padding is masked in every layer and in the head."""
    x = pixels(4)
    apply_patch(sharp, keep=1.0, layer=2, score="pool_attn", mass=0.5)
    batched = embed(sharp, x)
    budgets = adaptive_budgets(sharp).tolist()
    assert len(set(budgets)) > 1, budgets
    alone = torch.cat([embed(sharp, x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ROOT / "assets" / "clip-tokenizer")


def test_zero_shot_logits_equal_siglip_logits_per_image(model, tokenizer):
    names = ["cat", "dog", "truck"]
    module = ZeroShotModule(model, tokenizer, names, ["a photo of a {}."]).eval()
    x = pixels(2)
    with torch.no_grad():
        ours = module.logits(x, module.class_embeddings())
        ids = tokenizer([f"a photo of a {n}." for n in names], padding="max_length", max_length=16,
                        return_tensors="pt")["input_ids"]
        theirs = model(input_ids=ids, pixel_values=x).logits_per_image  # [B, C]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_sigmoid_loss_is_siglips(model):
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, 4.0]])
    labels = torch.tensor([0, 2])
    signs = torch.tensor([[1.0, -1, -1], [-1, -1, 1]])
    expected = -(F.logsigmoid(signs * logits)).sum() / 2
    torch.testing.assert_close(family_of(model).loss(logits, labels), expected)


def test_random_init_uses_the_papers_logit_scale_and_bias(model):
    assert model.logit_scale.exp().item() == pytest.approx(10.0)
    assert model.logit_bias.item() == -10.0


# Published parameter counts (model cards; SigLIP B/16's exact count from its Keras Hub preset).
PUBLISHED = {
    "clip_vit_b16": 149_620_737, "clip_laion_b32": 151_277_313, "metaclip_b16": 149_620_737,
    "siglip_b16": 203_156_230, "siglip2_b16": 375_000_000, "siglip_so400m": 878_000_000,
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_model_configs_match_the_published_parameter_counts(name):
    from vlm_eff.models import model_config as hf_config
    from vlm_eff.towers import family_for

    cfg = model_config(name)
    cfg.weights = "random"
    config = hf_config(cfg)
    with torch.device("meta"):
        params = sum(p.numel() for p in family_for(config.model_type).model_class(config).parameters())
    assert params == pytest.approx(PUBLISHED[name], rel=1e-3)


def test_naflex_siglip2_is_a_one_line_error_naming_the_fixed_resolution_models(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "siglip2"}')
    cfg = model_config("siglip_b16")
    cfg.path = str(tmp_path)
    from vlm_eff.models import model_config as hf_config

    with pytest.raises(ConfigError, match=re.escape("fixed-resolution SigLIP 2 checkpoint")):
        hf_config(cfg)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tokenizer):
    """`save_pretrained` dirs of a small CLIP and a small SigLIP (random weights), each with its
    tokenizer and its own image processor config, as a user would have them."""
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    dirs = {}
    for name, processor in (("clip_tiny", CLIPImageProcessor.from_pretrained(ROOT / "assets" / "clip-tokenizer",
                                                                             size={"shortest_edge": 32},
                                                                             crop_size={"height": 32, "width": 32})),
                            ("siglip_tiny", SiglipImageProcessor(size={"height": 32, "width": 32}))):
        path = tmp_path_factory.mktemp(name)
        torch.manual_seed(0)
        random_model(model_config(name)).save_pretrained(path)
        tokenizer.save_pretrained(path)
        processor.save_pretrained(path)
        dirs[name] = path
    return dirs


@pytest.mark.parametrize("name", ["clip_tiny", "siglip_tiny"])
def test_evaluate_model_path_picks_the_family_from_config_json(tmp_path, model_dirs, shared_archive, cache_dir, name):
    from conftest import run_script

    from vlm_eff.results import read_results

    result = run_script("evaluate.py", f"model.path={model_dirs[name]}", f"data.root={shared_archive}",
                        "data.subset=200", "pruning=tome", "logger=none", f"paths.work_dir={tmp_path}",
                        env={"VLM_EFF_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr
    (row,) = read_results(tmp_path / "outputs" / "results.csv")
    assert row["weights"] == "pretrained" and int(row["n_images"]) == 200 and 0 <= float(row["top1"]) <= 1
    assert row["model"] == model_dirs[name].name  # the checkpoint dir, not the default model config (clip_vit_b16)
    # ToMe at keep 0.5 on 64 patches: CLS towers keep CLS out of the merging, SigLIP merges all 64 tokens
    has_cls = name == "clip_tiny"
    r = r_for_keep(0.5, 64 + has_cls, 4, 64, 128, has_cls=has_cls)
    assert row["score"] == f"tome_r{r}"
    assert int(float(row["tokens"])) == tome_tokens_per_layer((r,) * 4, 64 + has_cls, has_cls)[-1]


def test_lora_fine_tuning_a_siglip_with_pruning_lowers_its_sigmoid_loss(tmp_path, shared_archive, cache_dir):
    """train.py on a SigLIP: PEFT adapters on both towers' attention, the sigmoid loss, ToMe on; the
    exported model (adapters merged) is a SiglipModel that evaluate.py loads by model.path."""
    from conftest import run_script

    from vlm_eff.lora import expected_trainable
    from vlm_eff.results import read_results

    common = [f"data.root={shared_archive}", "data.subset=200", "data.val_size=100", "data.batch_size=50",
              "logger=none", "pruning=tome", "pruning.keep=0.7", f"paths.work_dir={tmp_path}"]
    result = run_script("train.py", "model=siglip_tiny", *common, "lora=default", "data.shots=20", "trainer.max_epochs=2",
                        "optimizer.lr=1e-3", f"export_dir={tmp_path / 'export'}", env={"VLM_EFF_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr
    (row,) = read_results(tmp_path / "outputs" / "results.csv")
    config = random_model(model_config("siglip_tiny")).config
    assert int(row["trainable_params"]) == expected_trainable(config, 8, ["vision_attn", "text_attn"])
    result = run_script("evaluate.py", f"model.path={tmp_path / 'export'}", *common, env={"VLM_EFF_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr
    assert '"SiglipImageProcessor"' in (tmp_path / "export" / "preprocessor_config.json").read_text()
    assert float(read_results(tmp_path / "outputs" / "results.csv")[-1]["top1"]) == pytest.approx(float(row["top1"]), abs=0.02)


def test_lora_projections_on_siglip_is_a_one_line_error(tmp_path):
    from conftest import run_script

    result = run_script("train.py", "model=siglip_tiny", "lora=default", "lora.targets=[projections]", "logger=none",
                        "data=synthetic", f"paths.work_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: lora.targets=projections: a siglip model has no")
