"""CIFAR-10 sources, preprocessing and subsets, on the real CIFAR-10 images of ../shared/data."""

import functools
import hashlib
import http.server
import pickle
import tarfile
import threading

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image
from transformers import CLIPImageProcessor, SiglipImageProcessor

from vlm_eff.data.cifar10 import (
    CIFAR10_CLASSES,
    ImageClassificationDataModule,
    load_split,
    stratified_subset,
)
from vlm_eff.data.images import ClassFoldersDataModule
from vlm_eff.data.preprocess import ImagePreprocess
from vlm_eff.errors import ConfigError

TOKENIZER_DIR = ROOT / "assets" / "clip-tokenizer"


def test_preprocessing_equals_clip_image_processor_on_real_images(cifar_test):
    """224 px (resize 32 -> 224 with Pillow bicubic, crop) and 32 px (no resize), against the real processor."""
    images = [Image.fromarray(image) for image in cifar_test["images"][::997][:10]]
    for size in (224, 32):
        processor = CLIPImageProcessor.from_pretrained(TOKENIZER_DIR, size={"shortest_edge": size},
                                                       crop_size={"height": size, "width": size})
        expected = processor(images=images, return_tensors="pt")["pixel_values"]  # [10, 3, S, S]
        ours = torch.stack([ImagePreprocess(size, size)(image) for image in images])
        assert ours.shape == expected.shape == (10, 3, size, size)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_preprocessing_of_a_non_square_image_resizes_the_short_edge_and_center_crops():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 64, 3), dtype=np.uint8))
    processor = CLIPImageProcessor.from_pretrained(TOKENIZER_DIR, size={"shortest_edge": 24},
                                                   crop_size={"height": 24, "width": 24})
    expected = processor(images=[image], return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(ImagePreprocess(24, 24)(image), expected, atol=1e-5, rtol=0)


def siglip_processor(tmp_path, size: int) -> tuple[SiglipImageProcessor, ImagePreprocess]:
    """The real SigLIP processor and ours, both from the same saved `preprocessor_config.json`."""
    processor = SiglipImageProcessor(size={"height": size, "width": size}, resample=3,
                                     image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor.save_pretrained(tmp_path)
    return processor, ImagePreprocess.from_config(tmp_path)


@pytest.mark.parametrize("size", [224, 32])
def test_siglip_preprocessing_equals_siglip_image_processor_on_real_images(tmp_path, cifar_test, size):
    """SigLIP: a square resize (no crop), mean/std 0.5, read from the saved processor config."""
    images = [Image.fromarray(image) for image in cifar_test["images"][::997][:10]]
    processor, ours = siglip_processor(tmp_path, size)
    assert ours.crop_size is None and ours.to_config()["image_processor_type"] == "SiglipImageProcessor"
    expected = processor(images=images, return_tensors="pt")["pixel_values"]  # [10, 3, S, S]
    torch.testing.assert_close(torch.stack([ours(image) for image in images]), expected, atol=1e-5, rtol=0)


def test_siglip_preprocessing_of_a_non_square_image_squashes_it(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 64, 3), dtype=np.uint8))
    processor, ours = siglip_processor(tmp_path, 24)
    expected = processor(images=[image], return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(ours(image), expected, atol=1e-5, rtol=0)


def test_clip_preprocessor_config_round_trips(tmp_path):
    CLIPImageProcessor.from_pretrained(TOKENIZER_DIR).save_pretrained(tmp_path)
    ours = ImagePreprocess.from_config(tmp_path)
    assert (ours.size, ours.crop_size) == (224, 224)
    (tmp_path / "preprocessor_config.json").write_text(__import__("json").dumps(ours.to_config()))
    assert ImagePreprocess.from_config(tmp_path).to_config() == ours.to_config()


def test_missing_or_malformed_preprocessor_config_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=r"preprocessor_config.json is missing"):
        ImagePreprocess.from_config(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"size": {"height": 224}}')
    with pytest.raises(ConfigError, match=r"preprocessor_config.json is malformed \(KeyError"):
        ImagePreprocess.from_config(tmp_path)


def test_the_shared_archive_decodes_to_the_official_layout(cifar_test):
    assert cifar_test["images"].shape == (10000, 32, 32, 3) and cifar_test["images"].dtype == np.uint8
    assert cifar_test["classes"] == list(CIFAR10_CLASSES)
    assert np.bincount(cifar_test["labels"]).tolist() == [1000] * 10


def test_stratified_subset_is_balanced_seeded_and_in_order(cifar_test):
    labels = cifar_test["labels"]
    subset = stratified_subset(labels, 1000, seed=0)
    assert len(subset) == len(set(subset.tolist())) == 1000
    assert np.bincount(labels[subset], minlength=10).tolist() == [100] * 10
    assert np.array_equal(subset, np.sort(subset))
    assert np.array_equal(subset, stratified_subset(labels, 1000, seed=0))
    assert not np.array_equal(subset, stratified_subset(labels, 1000, seed=1))
    uneven = stratified_subset(labels, 1003, seed=0)
    assert sorted(np.bincount(labels[uneven], minlength=10).tolist()) == [100] * 7 + [101] * 3
    with pytest.raises(ConfigError, match="data.subset=0 must be in 1..10000"):
        stratified_subset(labels, 0, seed=0)


def write_official_batches(folder, images, labels):
    """A `cifar-10-batches-py` folder in the official format (pickled dicts, channel-planar rows)."""
    folder.mkdir(parents=True)
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # [N, 3 * 32 * 32], R then G then B
    for name in ["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:  # every batch: the same images
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rows, b"labels": labels.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, f)


def test_official_python_batches_read_like_the_jpeg_tree(tmp_path, cifar_test):
    images, labels = cifar_test["images"][::500], cifar_test["labels"][::500]  # 20 real images, 2 per class
    write_official_batches(tmp_path / "cifar-10-batches-py", images, labels)
    got_images, got_labels, classes = load_split(tmp_path, "test", tmp_path / "cache")
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    assert classes == list(CIFAR10_CLASSES)
    assert len(load_split(tmp_path, "train", tmp_path / "cache")[1]) == 5 * 20  # data_batch_1..5


@pytest.fixture
def official_archive(tmp_path, cifar_test):
    """A .tar.gz in the official layout and its MD5, served by an HTTP server on 127.0.0.1."""
    write_official_batches(tmp_path / "src" / "cifar-10-batches-py", cifar_test["images"][::500],
                           cifar_test["labels"][::500])
    serve_dir = tmp_path / "serve"
    serve_dir.mkdir()
    with tarfile.open(serve_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5((serve_dir / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(serve_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz", md5
    server.shutdown()


def test_download_fetches_verifies_and_extracts_the_official_archive(tmp_path, official_archive, cifar_test):
    url, md5 = official_archive
    data = ImageClassificationDataModule(root=None, preprocess=ImagePreprocess(32, 32), download=True, url=url,
                                         md5=md5, cache_dir=tmp_path / "cache")
    data.setup("test")
    assert len(data.test_set) == 20 and data.class_names == list(CIFAR10_CLASSES)
    assert (tmp_path / "cache" / "downloads" / "cifar-10-python.tar.gz").is_file()
    pixels, label = data.test_set[3]
    assert pixels.shape == (3, 32, 32) and label == cifar_test["labels"][3 * 500]


def test_download_with_a_wrong_checksum_is_refused_and_leaves_nothing(tmp_path, official_archive):
    url, _ = official_archive
    with pytest.raises(ConfigError, match="is corrupt: md5"):
        ImageClassificationDataModule(root=None, preprocess=ImagePreprocess(32, 32), download=True, url=url,
                                      md5="0" * 32, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "downloads").iterdir()) == []


def test_missing_root_offline_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"data.root=/nowhere does not exist; set it"):
        ImageClassificationDataModule(root="/nowhere", preprocess=ImagePreprocess(32, 32), download=False,
                                      cache_dir=tmp_path)


def imagefolder(tmp_path, cifar_test, classes=("cat", "dog")):
    for c, name in enumerate(classes):
        folder = tmp_path / "set" / "test" / name
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(cifar_test["images"][c * 1000 + i]).save(folder / f"{i}.png")
    return tmp_path / "set"


def test_imagefolder_classes_from_folders_or_overridden(tmp_path, cifar_test):
    root = imagefolder(tmp_path, cifar_test, classes=("sports_car", "tabby"))
    data = ImageClassificationDataModule(root=str(root), preprocess=ImagePreprocess(32, 32), cache_dir=tmp_path / "c")
    data.setup("test")
    assert data.class_names == ["sports car", "tabby"] and len(data.test_set) == 6
    named = ImageClassificationDataModule(root=str(root), preprocess=ImagePreprocess(32, 32), cache_dir=tmp_path / "c",
                                          class_names=["race car", "cat"])
    named.setup("test")
    assert named.class_names == ["race car", "cat"]


def test_a_corrupt_image_is_an_error_naming_the_file(tmp_path, cifar_test):
    root = imagefolder(tmp_path, cifar_test)
    bad = root / "test" / "dog" / "1.png"
    bad.write_bytes(b"not an image at all")
    data = ImageClassificationDataModule(root=str(root), preprocess=ImagePreprocess(32, 32), cache_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match=f"cannot read image {bad}"):
        data.setup("test")


def test_training_split_holds_out_validation_and_augments(cifar_train_module):
    data = cifar_train_module
    assert (len(data.train_set), len(data.val_set)) == (45000, 5000)
    train_ids = {img.tobytes() for img in data.train_set.images[:2000]}
    assert not train_ids & {img.tobytes() for img in data.val_set.images}
    torch.manual_seed(0)
    np.random.seed(0)
    views = torch.stack([data.train_set[0][0] for _ in range(8)])
    assert len({v.numpy().tobytes() for v in views}) > 1  # random crop / flip: not the same pixels every time
    assert torch.equal(data.val_set[0][0], data.val_set[0][0])  # validation is not augmented


def test_k_shot_training_set_is_balanced(tmp_path, shared_archive, cache_dir):
    data = ImageClassificationDataModule(root=str(shared_archive), preprocess=ImagePreprocess(32, 32),
                                         cache_dir=cache_dir, shots=16, seed=0)
    data.setup("fit")
    assert np.bincount(data.train_set.labels, minlength=10).tolist() == [16] * 10


@pytest.fixture(scope="module")
def cifar_train_module(shared_archive, cache_dir):
    data = ImageClassificationDataModule(root=str(shared_archive), preprocess=ImagePreprocess(32, 32),
                                         cache_dir=cache_dir)
    data.setup("fit")
    return data


def processors(tmp_path, size: int) -> dict:
    """Each family's Hugging Face image processor at `size`, and ours from the same saved config."""
    clip = CLIPImageProcessor.from_pretrained(TOKENIZER_DIR, size={"shortest_edge": size},
                                              crop_size={"height": size, "width": size})
    siglip = SiglipImageProcessor(size={"height": size, "width": size}, resample=3, image_mean=[0.5] * 3,
                                  image_std=[0.5] * 3)
    found = {}
    for name, processor in (("clip", clip), ("siglip", siglip)):
        processor.save_pretrained(tmp_path / name)
        found[name] = (processor, ImagePreprocess.from_config(tmp_path / name))
    return found


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_the_loaders_batches_equal_the_image_processor_on_real_images(tmp_path, shared_archive, cache_dir,
                                                                     cifar_test, family):
    """The default pipeline (resized once and cached, normalised a batch at a time, in a worker) gives
    what the model's own processor gives, on real CIFAR test images at 224 px."""
    processor, ours = processors(tmp_path, 224)[family]
    data = ImageClassificationDataModule(str(shared_archive), ours, batch_size=16, subset=16, cache_dir=str(cache_dir),
                                         num_workers=1)
    data.setup("test")
    pixels, labels = next(iter(data.test_dataloader()))  # [16, 3, 224, 224]
    keep = stratified_subset(cifar_test["labels"], 16, seed=0)
    expected = processor(images=[Image.fromarray(image) for image in cifar_test["images"][keep]],
                         return_tensors="pt")["pixel_values"]
    assert pixels.dtype == torch.float32 and labels.tolist() == cifar_test["labels"][keep].tolist()
    torch.testing.assert_close(pixels, expected, atol=1e-5, rtol=0)
    assert len(list((cache_dir / "resized").glob("16x224-*.npy"))) >= 1  # resized once, kept for the next run


def test_the_loaders_batches_equal_the_image_processor_on_a_non_square_jpeg(tmp_path):
    """A 300 x 180 JPEG in an ImageNet-style class folder, read from disk, for both families."""
    folder = tmp_path / "val" / "n01440764"
    folder.mkdir(parents=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (180, 300, 3), dtype=np.uint8))
    image.save(folder / "a.JPEG", quality=90)
    with Image.open(folder / "a.JPEG") as decoded:
        decoded = decoded.convert("RGB")
    for name, (processor, ours) in processors(tmp_path / "configs", 64).items():
        data = ClassFoldersDataModule(str(tmp_path), ours, batch_size=4, cache_dir=str(tmp_path / "cache"))
        data.setup("test")
        (pixels, labels) = next(iter(data.test_dataloader()))  # [1, 3, 64, 64]
        expected = processor(images=[decoded], return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(pixels, expected, atol=1e-5, rtol=0, msg=name)
        assert data.class_names == ["n01440764"] and labels.tolist() == [0]
