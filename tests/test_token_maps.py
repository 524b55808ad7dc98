"""Token maps (`python -m vlm_eff.visualize`) on real CIFAR-10 images and the project's trained tiny CLIP: the
drawing agrees with what the strategy did, checked through state the strategies keep for their own work
(origins, ToMe's token sizes, the LLM site's stages), not through the trace the maps are drawn from."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir
from PIL import Image
from wandb_files import read_run

from vlm_eff.jobs.visualize import visualize
from vlm_eff.reduction.base import kept_count
from vlm_eff.token_maps import DROPPED, FUSED, KEPT

SIDE, SCALE = 8, 8  # tiny_clip_cifar10: 32 px, 4 px patches; panel_px=256 draws each pixel 8 x 8


@pytest.fixture(scope="module")
def cifar_images(cifar_test, tmp_path_factory) -> list:
    """Three real CIFAR-10 test images (different classes) as PNG files."""
    folder = tmp_path_factory.mktemp("cifar_png")
    paths = []
    for label in (0, 3, 8):
        index = int(np.flatnonzero(cifar_test["labels"] == label)[0])
        paths.append(folder / f"{cifar_test['classes'][label]}.png")
        Image.fromarray(cifar_test["images"][index]).save(paths[-1])
    return paths


def run_maps(tmp_path, images, *overrides: str) -> dict:
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("visualize", overrides=[f"image=[{','.join(map(str, images))}]", f"out={tmp_path}",
                                              "logger=none", *overrides])
    return visualize(cfg)


def changed_cells(panel_image: np.ndarray, original: np.ndarray, side: int) -> np.ndarray:
    """Per cell of the grid, whether any drawn pixel differs from the input image upscaled -> [side * side]."""
    scale = panel_image.shape[0] // original.shape[0]
    plain = np.kron(original, np.ones((scale, scale, 1), dtype=np.uint8))
    cell = panel_image.shape[0] // side
    diff = (panel_image != plain).any(axis=2).reshape(side, cell, side, cell)
    return diff.any(axis=(1, 3)).reshape(-1)


@pytest.mark.parametrize("pruning", [("pruning=cls_preserving", "pruning.keep=1.0"), ("pruning=tome", "pruning.r=0"),
                                     ("pruning=none",)])
def test_a_keep_one_map_is_the_input_image(tmp_path, cifar_images, pruning):
    result = run_maps(tmp_path, cifar_images[:1], "model=tiny_clip_cifar10", *pruning)
    panels = result["maps"][str(cifar_images[0])]
    original = np.asarray(Image.open(cifar_images[0]).convert("RGB"))
    assert len(panels) == 1 and panels[0].title == "input: 64 patches"
    assert np.array_equal(panels[0].image, np.kron(original, np.ones((SCALE, SCALE, 1), dtype=np.uint8)))
    assert result["files"][0].is_file() and Image.open(result["files"][0]).size[0] >= 256


def test_greyed_cells_are_the_dropped_patches(tmp_path, cifar_images):
    from vlm_eff.models import load_model
    from vlm_eff.reduction.dropping import apply_patch
    from vlm_eff.towers import family_of

    result = run_maps(tmp_path, cifar_images, "model=tiny_clip_cifar10", "pruning=cls_preserving",
                      "pruning.keep=0.4")
    # the patches kept, from the strategy's own origin tracking (used to hand tokens to a VLM)
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        model = load_model(compose("visualize", overrides=["model=tiny_clip_cifar10"]).model).model.float().eval()
    from vlm_eff.data.preprocess import ImagePreprocess

    preprocess = ImagePreprocess.from_config(ROOT / "checkpoints" / "tiny_clip_cifar10")
    originals = [np.asarray(Image.open(p).convert("RGB")) for p in cifar_images]
    pixels = torch.stack([preprocess(image) for image in originals])
    reduction = apply_patch(model, keep=0.4, layer=0, score="l2")
    tower = family_of(model).vision(model)
    with torch.no_grad():
        hidden = tower(pixel_values=pixels).last_hidden_state
    origins = reduction.token_origins(tower, hidden, has_cls=True)
    for b, path in enumerate(cifar_images):
        panels = result["maps"][str(path)]
        assert len(panels) == 2 and panels[1].title.startswith(f"layer 0: {1 + kept_count(64, 0.4)} tokens (CLS")
        kept = np.zeros(64, dtype=bool)
        kept[origins[b][origins[b] >= 0].numpy()] = True
        assert kept.sum() == kept_count(64, 0.4)
        assert np.array_equal(changed_cells(panels[1].image, originals[b], SIDE), ~kept)  # greyed = dropped
        assert np.array_equal(panels[1].cells == DROPPED, ~kept) and (panels[1].cells == KEPT).sum() == kept.sum()


def test_coloured_groups_are_the_merged_tokens(tmp_path, cifar_images):
    from vlm_eff.models import load_model
    from vlm_eff.reduction.merging import apply_tome
    from vlm_eff.towers import family_of

    result = run_maps(tmp_path, cifar_images, "model=tiny_clip_cifar10", "pruning=tome", "pruning.r=6", "panels=6")
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        model = load_model(compose("visualize", overrides=["model=tiny_clip_cifar10"]).model).model.float().eval()
    from vlm_eff.data.preprocess import ImagePreprocess

    preprocess = ImagePreprocess.from_config(ROOT / "checkpoints" / "tiny_clip_cifar10")
    originals = [np.asarray(Image.open(p).convert("RGB")) for p in cifar_images]
    state = apply_tome(model, 6)
    with torch.no_grad():
        family_of(model).vision(model)(pixel_values=torch.stack([preprocess(i) for i in originals]))
    sizes = state.size[:, 1:, 0]  # [B, T - 1]: the patch tokens' sizes after the last layer (CLS aside)
    for b, path in enumerate(cifar_images):
        panels = result["maps"][str(path)]
        assert [p.title.split(":")[0] for p in panels] == ["input"] + [f"layer {i}" for i in range(6)]
        last = panels[-1]
        assert last.merged_groups == int((sizes[b] > 1).sum())  # one colour per merged token
        assert (last.cells >= 0).sum() == int(sizes[b][sizes[b] > 1].sum())  # the merged tokens' patches
        assert (last.cells == KEPT).sum() == int((sizes[b] == 1).sum()) and not (last.cells == DROPPED).any()
        assert np.array_equal(changed_cells(last.image, originals[b], SIDE), last.cells >= 0)
        colours = {tuple(last.image[r * SCALE * 4 + 16, c * SCALE * 4 + 16]) for r, c in np.argwhere(
            last.cells.reshape(SIDE, SIDE) >= 0)}
        assert len(colours) >= last.merged_groups  # every group painted (a group's cells differ by the image)


def test_evit_panels_mark_the_fused_patches(tmp_path, cifar_images):
    result = run_maps(tmp_path, cifar_images[:1], "model=tiny_clip_cifar10", "pruning=evit", "pruning.layer=[2,3,4]")
    panels = result["maps"][str(cifar_images[0])]
    kept = 64
    for panel, layer in zip(panels[1:], (2, 3, 4)):
        kept = kept_count(kept, 0.7)
        assert panel.title == f"layer {layer}: {kept + 2} tokens (CLS, 1 summary, {kept} kept)"
        assert (panel.cells == KEPT).sum() == kept and (panel.cells == FUSED).sum() == 64 - kept  # all fused


@pytest.mark.parametrize("pruning, panel_titles, kept", [
    (("pruning=fastv", "pruning.keep=0.25", "pruning.layer=1"), ["LLM layer 1"], [16]),
    (("pruning=divprune", "pruning.tokens=20"), ["projector"], [20]),
    (("pruning=visionzip", "pruning.tokens=16"), ["feature layer"], None),
])
def test_vlm_maps_show_what_the_language_model_receives(tmp_path, cifar_images, pruning, panel_titles, kept):
    result = run_maps(tmp_path, cifar_images, "model=llava_tiny", *pruning)
    for path in cifar_images:
        panels = result["maps"][str(path)]
        assert [p.title.split(":")[0] for p in panels[1:]] == panel_titles
        if kept is not None:
            assert [(p.cells == KEPT).sum() for p in panels[1:]] == kept
            assert [(p.cells == DROPPED).sum() for p in panels[1:]] == [64 - k for k in kept]
        else:  # VisionZip at 16 tokens: CLS + 13 dominant patches + 2 contextual groups covering every other patch
            last = panels[-1]
            assert last.title.startswith("feature layer: 16 tokens (CLS, 13 kept, 2 merged)")
            assert (last.cells == KEPT).sum() == 13 and last.merged_groups == 2 and (last.cells >= 0).sum() == 51


def test_pyramiddrop_draws_one_panel_per_stage(tmp_path, cifar_images):
    result = run_maps(tmp_path, cifar_images[:1], "model=llava_tiny", "pruning=pyramiddrop", "pruning.layer=[0,1]")
    panels = result["maps"][str(cifar_images[0])]
    assert [p.title.split(":")[0] for p in panels] == ["input", "LLM layer 0", "LLM layer 1"]
    assert [(p.cells == KEPT).sum() for p in panels[1:]] == [32, 16]
    assert not ((panels[2].cells == KEPT) & (panels[1].cells != KEPT)).any()  # a later stage keeps a subset


def test_the_command_writes_pngs_and_logs_them_to_wandb(tmp_path, cifar_images, cache_dir):
    result = subprocess.run(
        [sys.executable, "-m", "vlm_eff.visualize", f"image={cifar_images[0].parent}", "model=tiny_clip_cifar10",
         "pruning=pitome", "pruning.keep=0.6", f"out={tmp_path / 'maps'}", f"paths.work_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "VLM_EFF_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-2000:]
    pngs = sorted((tmp_path / "maps").glob("*.png"))
    assert [p.stem for p in pngs] == sorted(p.stem for p in cifar_images)
    assert "3 token map(s)" in result.stdout
    run = read_run(next((tmp_path / "maps" / "wandb").glob("offline-run-*")))
    logged = run["history"][0]
    assert logged["token_maps/count"] == 3 and logged["token_maps/captions"] == sorted(p.stem for p in cifar_images)
    for name in logged["token_maps/filenames"]:  # the images themselves, in the run's media
        assert Image.open(next((tmp_path / "maps" / "wandb").glob(f"offline-run-*/files/{name}"))).size[0] > 256
