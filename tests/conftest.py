import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2` (pyproject.toml): one core per worker, and per subprocess
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
SHARED_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def run_script(script: str, *overrides: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 300):
    """Run an entry script as a user would: `python <script> overrides...` in `cwd`."""
    path = script if cwd == ROOT else str(ROOT / script)
    return subprocess.run(
        [sys.executable, path, *overrides], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "WANDB_MODE": "offline", **(env or {})},
    )  # fmt: skip


def model_config(name: str, attn_implementation: str = "sdpa"):
    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")
    if "defaults" in cfg:  # b32 / l14 inherit from b16
        base = OmegaConf.load(ROOT / "conf" / "model" / f"{cfg.defaults[0]}.yaml")
        cfg = OmegaConf.merge(base, {k: v for k, v in cfg.items() if k != "defaults"})
    cfg.attn_implementation = attn_implementation
    return cfg


@pytest.fixture
def tiny_clip():
    from vlm_eff.models import random_model

    torch.manual_seed(0)
    return random_model(model_config("clip_tiny")).eval()


@pytest.fixture(scope="session")
def tiny_vlms() -> dict:
    """The tiny random VLM of each layout (llava_tiny, onevision_tiny, qwen2_vl_tiny), seeded, never stopping early."""
    from vlm_eff.models import random_model

    torch.manual_seed(0)
    built = {}
    for name in ("llava_tiny", "onevision_tiny", "qwen2_vl_tiny"):
        model = random_model(model_config(name)).eval()
        model.generation_config.eos_token_id = None  # random weights: generate every asked token
        built[name] = model
    return built


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """llava_tiny (random weights, seeded) saved with a processor: the CLIP BPE tokenizer and LLaVA's chat turns."""
    from vlm_eff.models import random_model
    from vlm_eff.tiny_vlm import save_with_clip_processor

    torch.manual_seed(0)
    model = random_model(model_config("llava_tiny")).eval()
    model.generation_config.eos_token_id = 49407
    directory = tmp_path_factory.mktemp("llava_tiny")
    save_with_clip_processor(model, directory)
    return directory


@pytest.fixture(scope="session")
def shared_archive() -> Path:
    """The real CIFAR-10 images; outside CI the tests that need them skip when they are absent."""
    if not SHARED_ARCHIVE.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SHARED_ARCHIVE} is missing: CI must run the tests on real data")
        pytest.skip(f"{SHARED_ARCHIVE} not found")
    return SHARED_ARCHIVE


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One extraction / decode cache for the whole session (subprocesses get it as VLM_EFF_CACHE)."""
    return Path(os.environ.get("VLM_EFF_TEST_CACHE") or tmp_path_factory.mktemp("vlm-eff-cache"))


@pytest.fixture(scope="session")
def cifar_test(shared_archive, cache_dir) -> dict:
    from vlm_eff.data.cifar10 import load_split

    images, labels, classes = load_split(shared_archive, "test", cache_dir)
    return {"images": images, "labels": labels, "classes": classes}


N_QUESTIONS = 64  # in question_set


@pytest.fixture(scope="session")
def question_set(tmp_path_factory, cifar_test):
    """N_QUESTIONS questions in LLaVA's format about real CIFAR-10 test images, with their class as answer."""
    import json

    from PIL import Image

    folder = tmp_path_factory.mktemp("questions")
    (folder / "images").mkdir()
    lines = []
    for i in range(N_QUESTIONS):
        Image.fromarray(cifar_test["images"][i]).save(folder / "images" / f"{i}.png")
        lines.append({"question_id": i, "image": f"{i}.png", "text": "What is in the image?" + " Look closely." * (i % 3),
                      "answer": cifar_test["classes"][cifar_test["labels"][i]]})
    (folder / "questions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def stratified_pixels(cifar_test: dict, checkpoint: Path, n: int = 2000):
    """`n` real test images (n / 10 per class, seeded) preprocessed as `checkpoint`'s config says,
    with their labels: ([n, 3, H, W], [n])."""
    from vlm_eff.data.cifar10 import stratified_subset
    from vlm_eff.data.preprocess import ImagePreprocess

    keep = stratified_subset(cifar_test["labels"], n, seed=0)
    preprocess = ImagePreprocess.from_config(checkpoint)
    pixels = torch.stack([preprocess(image) for image in cifar_test["images"][keep]])
    return pixels, torch.as_tensor(cifar_test["labels"][keep])
