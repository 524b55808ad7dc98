"""Label-free recovery (`objective=distill`) on the project's trained small CLIP and real CIFAR-10 images:
the distillation loss falls while the teacher stays frozen, train.py runs on a folder of unlabelled
images, and the export records its reduction, which evaluate.py applies unless told otherwise."""

import copy
import json

import numpy as np
import pytest
import torch
from conftest import ROOT, run_script, stratified_pixels
from omegaconf import OmegaConf
from PIL import Image

from vlm_eff.data.images import UnlabeledImagesDataModule
from vlm_eff.data.preprocess import ImagePreprocess
from vlm_eff.errors import ConfigError
from vlm_eff.models import LoadedModel, load_model
from vlm_eff.modules import DistillModule
from vlm_eff.reduction import apply_config
from vlm_eff.results import read_results

CHECKPOINT = ROOT / "checkpoints" / "tiny_clip_cifar10"


def trained_clip() -> LoadedModel:
    cfg = OmegaConf.load(ROOT / "conf" / "model" / "tiny_clip_cifar10.yaml")
    cfg.path = str(CHECKPOINT)
    return load_model(cfg)


def test_the_loss_falls_and_the_teacher_stays_frozen(cifar_test):
    pixels, _ = stratified_pixels(cifar_test, CHECKPOINT, n=64)  # labels unused
    student = trained_clip().model.float()
    teacher = copy.deepcopy(student)
    before = {name: tensor.clone() for name, tensor in teacher.state_dict().items()}
    apply_config(student, OmegaConf.load(ROOT / "conf" / "pruning" / "tome.yaml"))  # keep 0.5
    module = DistillModule(student, teacher)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    losses = []
    for _ in range(8):
        loss = module.distill_loss(pixels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.01  # ToMe at keep 0.5 moves the embedding
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[name], tensor) for name, tensor in teacher.state_dict().items())
    assert not any(name.startswith("teacher") for name in module.state_dict())  # not in checkpoints


def test_an_unknown_distillation_loss_is_a_one_line_error():
    model = trained_clip().model
    with pytest.raises(ConfigError, match=r"^objective.loss='l1' is unknown; allowed: cosine, mse$"):
        DistillModule(model, model, loss="l1")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, cifar_test):
    """300 real CIFAR-10 test images as PNGs in a nested folder whose names carry no class."""
    root = tmp_path_factory.mktemp("unlabelled")
    for i, image in enumerate(cifar_test["images"][:300]):
        folder = root / f"batch{i % 3}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


def test_image_folder_items_carry_no_label(image_folder, tmp_path):
    data = UnlabeledImagesDataModule(str(image_folder), ImagePreprocess.from_config(CHECKPOINT), val_size=50,
                                     max_images=200, cache_dir=str(tmp_path))
    data.setup("fit")
    assert (len(data.train_set), len(data.val_set), data.class_names) == (200, 50, [])
    (pixels,) = data.train_set[0]
    assert pixels.shape == (3, 32, 32)


def test_a_corrupt_image_is_a_one_line_error_naming_it(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "1.png").write_bytes(b"not a png")
    data = UnlabeledImagesDataModule(str(tmp_path), ImagePreprocess(32, None), val_size=1, augment=False)
    data.setup("fit")
    items = [*data.train_set.paths, *data.val_set.paths]
    with pytest.raises(ConfigError, match=r"^cannot read image .*1\.png: "):
        for dataset in (data.train_set, data.val_set):
            for i in range(len(dataset)):
                dataset[i]
    assert len(items) == 3


def test_distill_on_unlabelled_images_exports_a_model_that_evaluates_with_its_reduction(
        image_folder, shared_archive, cache_dir, tmp_path):
    env = {"VLM_EFF_CACHE": str(cache_dir)}
    pruning = ("pruning=tome", "pruning.keep=0.5")
    train = run_script("train.py", "objective=distill", "data=images", f"data.root={image_folder}", "data.val_size=50",
                       "data.batch_size=50", "model=tiny_clip_cifar10", *pruning, "trainer.max_epochs=2",
                       "optimizer.lr=1e-4", "logger=none", f"paths.work_dir={tmp_path}",
                       f"hydra.run.dir={tmp_path / 'run'}", f"export_dir={tmp_path / 'export'}", env=env, timeout=600)
    assert train.returncode == 0, train.stderr
    (row,) = read_results(tmp_path / "run" / "results.csv")
    assert (row["objective"], row["strategy"], row["top1"], row["n_images"]) == ("distill", "tome", "", "250")
    assert float(row["latency_ms_mean"]) > 0 and float(row["peak_mem_mib"]) > 0  # time and memory per step
    summary = json.loads((tmp_path / "export" / "training_summary.json").read_text())
    assert 0 < summary["val_distill_loss"] < 0.5  # measured: the reduced student is not the teacher, and learns
    recorded = OmegaConf.load(tmp_path / "export" / "reduction.yaml")
    assert (recorded.name, recorded.keep) == ("tome", 0.5)

    def evaluate(*overrides):
        work = tmp_path / f"eval{len(overrides)}"
        result = run_script("evaluate.py", f"model.path={tmp_path / 'export'}", f"data.root={shared_archive}",
                            "data.subset=200", "logger=none", f"paths.work_dir={work}", *overrides, env=env)
        assert result.returncode == 0, result.stderr
        return read_results(work / "outputs" / "results.csv")[0]

    recovered = evaluate()
    assert (recovered["strategy"], recovered["score"]) == ("tome", row["score"])  # the recorded reduction
    assert evaluate("pruning=none")["strategy"] == "none"  # the command line says otherwise


def test_labels_objective_on_unlabelled_images_is_a_one_line_error(image_folder, cache_dir, tmp_path):
    result = run_script("train.py", "data=images", f"data.root={image_folder}", "data.val_size=50",
                        "model=tiny_clip_cifar10", "logger=none", f"paths.work_dir={tmp_path}",
                        env={"VLM_EFF_CACHE": str(cache_dir)})
    assert result.returncode != 0
    assert "objective=labels needs labelled data, and data=images has no classes" in result.stderr
