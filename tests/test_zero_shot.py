"""The zero-shot head: prompt ensembling and metrics (math on a small real CLIP; no accuracy claims),
and evaluate.py end to end on real CIFAR-10 images."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, run_script
from transformers import AutoTokenizer

from vlm_eff.modules import ZeroShotModule
from vlm_eff.results import read_results

CLASSES = ["cat", "dog", "ship"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}."]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ROOT / "assets" / "clip-tokenizer")


def text_features(clip, tokenizer, prompts):
    tokens = tokenizer(prompts, padding=True, return_tensors="pt")
    return clip.get_text_features(**tokens).pooler_output  # [n, P]


@torch.no_grad()
def test_prompt_ensemble_is_the_normalised_mean_of_normalised_prompt_embeddings(tiny_clip, tokenizer):
    module = ZeroShotModule(tiny_clip, tokenizer, CLASSES, TEMPLATES)
    per_template = [F.normalize(text_features(tiny_clip, tokenizer, [t.format(c) for c in CLASSES]), dim=-1)
                    for t in TEMPLATES]  # each [C, P]
    expected = F.normalize((per_template[0] + per_template[1]) / 2, dim=-1)
    torch.testing.assert_close(module.class_embeddings(), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(module.class_embeddings(template=1), per_template[1], atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_logits_are_scaled_cosine_similarities(tiny_clip, tokenizer):
    module = ZeroShotModule(tiny_clip, tokenizer, CLASSES, TEMPLATES[:1])
    pixels = torch.randn(4, 3, 32, 32)
    text = module.class_embeddings()
    image = tiny_clip.get_image_features(pixel_values=pixels).pooler_output
    expected = tiny_clip.logit_scale.exp() * F.normalize(image, dim=-1) @ text.T
    torch.testing.assert_close(module.logits(pixels, text), expected)


def test_top1_is_micro_averaged_and_per_class_is_reported(tiny_clip, tokenizer):
    """torchmetrics' default is macro; top-1 here is the plain fraction of correct images."""
    module = ZeroShotModule(tiny_clip, tokenizer, CLASSES, TEMPLATES[:1])
    logits = torch.tensor([[3.0, 0, 0], [3.0, 0, 0], [3.0, 0, 0], [0, 3.0, 0]])  # predicts 0, 0, 0, 1
    labels = torch.tensor([0, 0, 0, 2])
    for metric in module.metrics.values():
        metric.update(logits, labels)
    results = module.test_results()
    assert results["top1"] == pytest.approx(3 / 4)  # macro would be (1 + 0) / 2 = 0.5 over present classes
    assert results["per_class"]["cat"] == 1.0 and results["per_class"]["ship"] == 0.0


def test_evaluate_end_to_end_on_real_images(tmp_path, shared_archive, cache_dir):
    """The pipeline runs and reports (random weights here: the number itself means nothing)."""
    result = run_script(
        "evaluate.py", "model=clip_tiny", "model.weights=random", f"data.root={shared_archive}", "data.subset=300",
        "prompts=cifar10_ensemble", "logger=none", f"paths.work_dir={tmp_path}", env={"VLM_EFF_CACHE": str(cache_dir)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (row,) = read_results(tmp_path / "outputs" / "results.csv")
    assert row["task"] == "evaluate" and int(row["n_images"]) == 300
    assert 0 <= float(row["top1"]) <= float(row["top5"]) <= 1 and float(row["throughput_img_s"]) > 0
    (run_dir,) = [p.parent for p in (tmp_path / "outputs").glob("*/*/per_class.json")]
    assert sorted(json.loads((run_dir / "per_class.json").read_text())) == sorted(
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])
    assert "RANDOM WEIGHTS" in result.stdout


def test_evaluate_default_model_offline_fails_fast_naming_the_fix(tmp_path):
    result = run_script("evaluate.py", "logger=none", f"paths.work_dir={tmp_path}",
                        env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}, timeout=60)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no pretrained weights for openai/clip-vit-base-patch16")
    assert "model.path=" in last


def test_evaluate_missing_data_is_one_line_naming_the_fix(tmp_path):
    result = run_script("evaluate.py", "model=clip_tiny", "data.root=/nowhere/cifar10", "data.download=false",
                        "logger=none", f"paths.work_dir={tmp_path}")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last == "error: data.root=/nowhere/cifar10 does not exist; set it to the dataset (a folder or its .tar.gz)"
