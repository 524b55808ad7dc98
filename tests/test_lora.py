"""LoRA through PEFT on real (small) CLIP models and real CIFAR-10 images: which weights train,
how many, and that saving, loading and merging an adapter keep the trained model's logits."""

import pytest
import pytorch_lightning as pl
import torch
from conftest import ROOT, model_config
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoTokenizer, CLIPModel

from vlm_eff.data.cifar10 import CIFAR10_CLASSES, stratified_subset
from vlm_eff.data.preprocess import ImagePreprocess
from vlm_eff.errors import ConfigError
from vlm_eff.lora import add_lora, count_parameters, expected_trainable, load_adapter, lora_config, merge
from vlm_eff.models import random_model
from vlm_eff.modules import ZeroShotModule
from vlm_eff.reduction.dropping import apply_patch, remove_patch

TOKENIZER = ROOT / "assets" / "clip-tokenizer"


CLIP_TARGETS = ("vision_attn", "text_attn", "projections")  # llm_attn is a generative VLM's (test_vlm_distill)


def lora_cfg(rank=4, targets=CLIP_TARGETS, **extra):
    return OmegaConf.create({"name": "default", "rank": rank, "alpha": 2 * rank, "dropout": 0.0,
                             "targets": list(targets), "checkpoint": None, **extra})


def random_clip_seeded(attn: str = "sdpa") -> CLIPModel:
    """clip_tiny at random init, the same weights on every call."""
    torch.manual_seed(0)
    return random_model(model_config("clip_tiny", attn))


@pytest.fixture(scope="module")
def cifar_batch(cifar_test):
    """64 real test images (stratified) at 32 px with their labels."""
    keep = stratified_subset(cifar_test["labels"], 64, seed=0)
    preprocess = ImagePreprocess(size=32, crop_size=32)
    pixels = torch.stack([preprocess(image) for image in cifar_test["images"][keep]])  # [64, 3, 32, 32]
    return pixels, torch.as_tensor(cifar_test["labels"][keep])


def zero_shot(clip, adapter_only=True) -> ZeroShotModule:
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    optimizer = lambda params: torch.optim.AdamW(params, lr=1e-2)  # noqa: E731
    return ZeroShotModule(clip, tokenizer, CIFAR10_CLASSES, ["a photo of a {}.", "a picture of a {}."],
                        optimizer=optimizer, adapter_only=adapter_only)


def fit(module, pixels, labels, steps, tmp_path):
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(TensorDataset(pixels, labels), batch_size=16, shuffle=True))


@torch.no_grad()
def logits_of(module, pixels):
    module.eval()
    return module.logits(pixels, module.class_embeddings())


@pytest.fixture(scope="module")
def trained(cifar_batch, tmp_path_factory):
    """clip_tiny with LoRA on every target, trained for 4 steps on real images; with its base weights before."""
    clip = random_clip_seeded()
    base = {name: p.detach().clone() for name, p in clip.named_parameters()}
    adapters = add_lora(clip, lora_cfg())
    module = zero_shot(clip)
    fit(module, *cifar_batch, steps=4, tmp_path=tmp_path_factory.mktemp("fit"))
    return module, adapters, base


@pytest.mark.parametrize("targets", [["vision_attn"], ["text_attn"], ["projections"],
                                     ["vision_attn", "projections"], list(CLIP_TARGETS)])
@pytest.mark.parametrize("rank", [1, 8])
def test_trainable_parameters_match_the_formula(targets, rank):
    clip = random_clip_seeded()
    total_before = count_parameters(clip)[1]
    add_lora(clip, lora_cfg(rank, targets))
    trainable, total = count_parameters(clip)
    assert trainable == expected_trainable(clip.config, rank, targets) == total - total_before
    # clip_tiny: vision 4 layers x 64 wide, text 2 layers x 32 wide, projections 64->32 and 32->32
    by_hand = {"vision_attn": 4 * 4 * rank * 128, "text_attn": 2 * 4 * rank * 64, "projections": rank * (96 + 64)}
    assert trainable == sum(by_hand[t] for t in targets)
    adapted = {name.rsplit(".lora_", 1)[0] for name, p in clip.named_parameters() if p.requires_grad}
    assert any(name.startswith("vision_model.") for name in adapted) == ("vision_attn" in targets)
    assert any(name.startswith("text_model.") for name in adapted) == ("text_attn" in targets)
    assert ("visual_projection" in adapted) == ("projections" in targets)


def test_a_training_step_changes_only_the_adapters(trained):
    module, _, base = trained
    current = dict(module.model.named_parameters())
    for name, before in base.items():
        key = name if name in current else name.replace(".weight", ".base_layer.weight").replace(
            ".bias", ".base_layer.bias")
        assert torch.equal(current[key], before), f"base weight {name} changed"
        assert not current[key].requires_grad
    adapter = {name: p for name, p in current.items() if "lora_" in name}
    assert adapter and all(p.requires_grad for p in adapter.values())
    assert all(p.abs().sum() > 0 for name, p in adapter.items() if "lora_B" in name), "lora_B still at its zero init"


def test_adapter_save_load_and_merge_keep_the_logits(trained, cifar_batch, tmp_path):
    module, adapters, _ = trained
    pixels = cifar_batch[0]
    reference = logits_of(module, pixels)
    assert not torch.allclose(reference, logits_of(zero_shot(random_clip_seeded()), pixels), atol=1e-3), "adapter had no effect"

    adapters.save_pretrained(tmp_path / "adapter")
    reloaded = random_clip_seeded()
    load_adapter(reloaded, tmp_path / "adapter")
    torch.testing.assert_close(logits_of(zero_shot(reloaded), pixels), reference, atol=1e-5, rtol=0)

    merged = merge(load_adapter(random_clip_seeded(), tmp_path / "adapter"))
    assert type(merged) is CLIPModel and not any("lora_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits_of(zero_shot(merged), pixels), reference, atol=1e-4, rtol=0)
    merged.save_pretrained(tmp_path / "merged")
    exported = CLIPModel.from_pretrained(tmp_path / "merged").float()
    torch.testing.assert_close(logits_of(zero_shot(exported), pixels), reference, atol=1e-4, rtol=0)


def test_adapter_only_checkpoint_resumes(trained, tmp_path):
    module, _, _ = trained
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == set(module.trainable_shapes())
    assert all("lora_" in name for name in checkpoint["state_dict"])

    fresh = random_clip_seeded()
    add_lora(fresh, lora_cfg())
    resumed = zero_shot(fresh)
    resumed.on_load_checkpoint(checkpoint)
    resumed.load_state_dict(checkpoint["state_dict"], strict=resumed.strict_loading)
    for name, p in module.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], p), name

    other = random_clip_seeded()
    add_lora(other, lora_cfg(rank=2, targets=["vision_attn"]))
    with pytest.raises(ConfigError, match="does not match"):
        zero_shot(other).on_load_checkpoint(checkpoint)


def test_cls_attn_pruning_sees_the_adapted_attention(trained, cifar_batch, tmp_path):
    """score=cls_attn reads q/k through forward hooks: with LoRA it must see the adapted projections,
    i.e. the CLS-row attention of the merged model, not that of the frozen base weights."""
    module, adapters, _ = trained
    adapters.save_pretrained(tmp_path / "adapter")
    x = cifar_batch[0][:8]
    with torch.no_grad():
        eager_base = random_clip_seeded(attn="eager")
        base_row = eager_base.vision_model(pixel_values=x, output_attentions=True).attentions[1][:, :, 0].mean(1)
        merged = merge(load_adapter(random_clip_seeded(attn="eager"), tmp_path / "adapter")).eval()
        adapted_row = merged.vision_model(pixel_values=x, output_attentions=True).attentions[1][:, :, 0].mean(1)
    assert (adapted_row - base_row).abs().max() > 1e-4  # the adapters changed layer 1's attention

    apply_patch(module.model, keep=0.5, layer=2, score="cls_attn")
    reducer, seen = module.model.vision_model.embeddings._reducer, []
    original = reducer.scores
    reducer.scores = lambda tokens: seen.append(original(tokens)) or seen[-1]
    try:
        logits_of(module, x)
    finally:
        remove_patch(module.model)
    torch.testing.assert_close(seen[0], adapted_row, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(rank=0), r"lora.rank=0 must be an integer >= 1"),
        (dict(rank=2.5), r"lora.rank=2.5 must be an integer >= 1"),
        (dict(alpha=0), r"lora.alpha=0 must be a number > 0"),
        (dict(dropout=1.0), r"lora.dropout=1.0 must be in \[0, 1\)"),
        (dict(targets=["vision_attn", "mlp"]), r"lora.targets: mlp unknown; allowed: vision_attn, text_attn, projections"),
        (dict(targets=[]), r"lora.targets=\[\] must be a non-empty list"),
    ],
)
def test_bad_lora_settings_are_one_line_errors(settings, message):
    values = dict(rank=4, alpha=8, dropout=0.0, targets=["vision_attn"]) | settings
    with pytest.raises(ConfigError, match=message) as error:
        lora_config(**values)
    assert "\n" not in str(error.value)


def test_an_adapter_for_another_model_is_a_one_line_error(trained, tmp_path):
    _, adapters, _ = trained
    adapters.save_pretrained(tmp_path / "adapter")
    cfg = model_config("tiny_clip_cifar10")
    other = random_model(cfg)  # wider towers than clip_tiny
    with pytest.raises(ConfigError, match=r"lora.checkpoint=.*adapter does not fit this model: .*size mismatch") as error:
        load_adapter(other, tmp_path / "adapter")
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"holds no saved adapter \(no adapter_config.json there\)"):
        load_adapter(random_clip_seeded(), tmp_path)
