"""Facts measured on the project's trained small CLIP (checkpoints/tiny_clip_cifar10) with real
CIFAR-10 test images, encoded with margins (see docs/RESULTS.md section 2 for the full ladder)."""

import pytest
import torch
from conftest import ROOT, model_config, run_script, stratified_pixels

from vlm_eff.models import load_model
from vlm_eff.modules import ZeroShotModule
from vlm_eff.reduction.dropping import apply_patch, remove_patch
from vlm_eff.results import read_results

CHECKPOINT = ROOT / "checkpoints" / "tiny_clip_cifar10"
PRESETS = {
    "naive": dict(layer=-1, keep_cls=False, summary="mean"),
    "position_aware": dict(layer=0, keep_cls=False, summary="mean"),
    "cls_preserving": dict(layer=0),
    "late_layer": dict(layer=None),
}


@pytest.fixture(scope="module")
def zero_shot():
    from transformers import AutoTokenizer

    cfg = model_config("tiny_clip_cifar10")
    cfg.path, cfg.tokenizer = str(CHECKPOINT), None
    clip = load_model(cfg).model.float().eval()
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "assets" / "clip-tokenizer")
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    module = ZeroShotModule(clip, tokenizer, classes, ["a photo of a {}."])
    with torch.no_grad():
        module.text_features = module.class_embeddings()
    return module


@pytest.fixture(scope="module")
def subset(cifar_test):
    """2,000 real test images, 200 per class, preprocessed as the checkpoint's config says."""
    return stratified_pixels(cifar_test, CHECKPOINT)


@torch.no_grad()
def logits_under(module, pixels, **knobs):
    if knobs:
        apply_patch(module.model, **knobs)
    try:
        return torch.cat([module.logits(chunk, module.text_features) for chunk in pixels.split(500)])
    finally:
        remove_patch(module.model)


def top1(logits, labels) -> float:
    return (logits.argmax(dim=-1) == labels).float().mean().item()


def test_checkpoint_is_small_and_documented():
    assert (CHECKPOINT / "model.safetensors").stat().st_size <= 15 * 2**20
    card = (CHECKPOINT / "README.md").read_text()
    assert "train.py experiment=tiny_clip_cifar10" in card and "top-1" in card


def test_cls_preserving_late_layer_and_evit_at_keep_one_equal_the_stock_model(zero_shot, subset):
    pixels, _ = subset
    stock = logits_under(zero_shot, pixels[:500])
    evit = dict(layer=[2, 3, 4], score="cls_attn", summary="fused")
    for name, knobs in [("cls_preserving", PRESETS["cls_preserving"]), ("late_layer", PRESETS["late_layer"]),
                        ("evit", evit)]:
        assert torch.equal(logits_under(zero_shot, pixels[:500], keep=1.0, **knobs), stock), name


def test_ladder_at_keep_half(zero_shot, subset):
    pixels, labels = subset
    accuracy = {name: top1(logits_under(zero_shot, pixels, keep=0.5, **knobs), labels)
                for name, knobs in PRESETS.items()}
    accuracy["none"] = top1(logits_under(zero_shot, pixels), labels)
    # measured on these 2,000 images: naive 21.1, position_aware 29.6, cls_preserving 56.3,
    # late_layer 68.7, none 69.6 (% top-1); margins are several standard errors (about 1 point)
    assert accuracy["none"] >= 0.65, accuracy
    assert accuracy["naive"] <= 0.25, accuracy  # positions and CLS lost: near chance (10 %)
    assert accuracy["position_aware"] >= accuracy["naive"] + 0.04, accuracy  # positions back: helps a little
    assert accuracy["cls_preserving"] >= accuracy["position_aware"] + 0.15, accuracy  # CLS back: most of the gap
    assert accuracy["late_layer"] >= accuracy["cls_preserving"] + 0.06, accuracy  # half the layers unpruned
    assert accuracy["late_layer"] >= accuracy["none"] - 0.03, accuracy  # within 3 points of the stock model


def test_acceptance_naive_collapses_and_the_stock_model_stays_above_65(tmp_path, shared_archive, cache_dir):
    """The issue's acceptance commands, as a user runs them, on 5,000 seeded test images (standard error 0.6 point;
    the full 10,000: docs/RESULTS.md section 2)."""
    env = {"VLM_EFF_CACHE": str(cache_dir)}
    common = ["model=tiny_clip_cifar10", f"data.root={shared_archive}", "data.subset=5000", "logger=none",
              f"paths.work_dir={tmp_path}"]
    naive = run_script("evaluate.py", *common, "pruning=naive", "pruning.keep=0.5", env=env)
    assert naive.returncode == 0, naive.stderr
    stock = run_script("evaluate.py", *common, "pruning=none", env=env)
    assert stock.returncode == 0, stock.stderr
    rows = {r["strategy"]: r for r in read_results(tmp_path / "outputs" / "results.csv")}
    assert int(rows["none"]["n_images"]) == int(rows["naive"]["n_images"]) == 5000
    assert float(rows["naive"]["top1"]) <= 0.25  # measured 21 %: near chance (10 %), the issue hoped <= 20 %
    assert float(rows["none"]["top1"]) >= 0.65  # measured 70.46 %


def test_random_scores_beat_l2_at_layer_0(zero_shot, subset):
    """The `score=random` control at keep 0.5: with CLS kept at layer 0, L2 norm picks worse tokens than
    chance does (full test set: 56.8 vs 64.2 %), while after half the layers all scores tie (68.6-69.0 %)."""
    pixels, labels = subset
    l2 = top1(logits_under(zero_shot, pixels, keep=0.5, layer=0, score="l2"), labels)
    random = top1(logits_under(zero_shot, pixels, keep=0.5, layer=0, score="random", seed=0), labels)
    # measured on these 2,000 images: l2 56.25, random 63.65 (% top-1)
    assert random >= l2 + 0.04, (l2, random)


def test_tome_at_half_the_flops_stays_within_two_points_of_the_stock_model(zero_shot, subset):
    """Merging instead of dropping: ToMe with the r of keep 0.5 (r = 11 here: 2.09x fewer FLOPs) keeps
    nearly all the accuracy (full test set: 69.60 vs 70.46 %), far above dropping at the same cost."""
    from vlm_eff.reduction.merging import apply_tome, r_for_keep, remove_tome

    pixels, labels = subset
    stock = top1(logits_under(zero_shot, pixels), labels)
    r = r_for_keep(0.5, 65, 6, 192, 768)
    apply_tome(zero_shot.model, r)
    try:
        with torch.no_grad():
            merged = top1(torch.cat([zero_shot.logits(c, zero_shot.text_features) for c in pixels.split(500)]), labels)
    finally:
        remove_tome(zero_shot.model)
    assert r == 11
    # measured on these 2,000 images: stock 69.55, tome 68.80, cls_preserving at keep 0.5 56.25 (% top-1)
    assert merged >= stock - 0.02, (stock, merged)


def test_adaptive_keep_rows_count_each_images_own_budget(zero_shot, subset):
    """Under adaptive keep a row's FLOPs and tokens are means over images counted alone: each image's
    FLOPs are exactly those of a fixed keep at its own budget, and the mean tokens match the budgets
    the batched (padded) forward chose for the same images."""
    from torch.utils.data import TensorDataset

    from vlm_eff.flops import flops_per_image
    from vlm_eff.jobs.common import cost_per_image
    from vlm_eff.models import ImageEncoder
    from vlm_eff.reduction.dropping import adaptive_budgets

    pixels = subset[0][:16]
    encoder = ImageEncoder(zero_shot.model)
    reduction = apply_patch(zero_shot.model, keep=1.0, layer=0, mass=0.7)
    try:
        with torch.no_grad():
            encoder(pixels)
        budgets = adaptive_budgets(zero_shot.model).tolist()  # [16] patches each image kept
        flops, tokens = cost_per_image(encoder, reduction, TensorDataset(pixels), torch.float32)
        alone = [flops_per_image(encoder, image[None]) for image in pixels[:3]]
    finally:
        remove_patch(zero_shot.model)
    fixed = {}
    for budget in set(budgets):
        apply_patch(zero_shot.model, keep=budget / 64, layer=0)
        fixed[budget] = flops_per_image(encoder, pixels[:1])
        remove_patch(zero_shot.model)
    assert len(set(budgets)) > 1  # real images need different budgets
    assert alone == [fixed[b] for b in budgets[:3]]
    assert tokens == pytest.approx(1 + sum(budgets) / 16)
    assert flops == pytest.approx(sum(fixed[b] for b in budgets) / 16)


def test_compiled_evaluation_gives_the_eager_accuracy(tmp_path, shared_archive, cache_dir):
    """evaluate.py compile=true (ToMe at keep 0.5, 500 real test images): the same predictions
    as eager evaluation, within 2 images for float reordering in the compiled kernels."""
    result = run_script("evaluate.py", "-m", "model=tiny_clip_cifar10", f"data.root={shared_archive}",
                        "data.subset=500", "pruning=tome", "compile=false,true", "logger=none",
                        f"paths.work_dir={tmp_path}", env={"VLM_EFF_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr
    rows = {r["compile"]: r for r in read_results(tmp_path / "outputs" / "results.csv")}
    assert sorted(rows) == ["False", "True"] and "(torch.compile)" in result.stdout
    assert abs(float(rows["True"]["top1"]) - float(rows["False"]["top1"])) <= 2 / 500
    assert float(rows["False"]["top1"]) >= 0.6  # the trained model, not chance
