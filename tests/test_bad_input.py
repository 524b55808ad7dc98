"""Bad input, as a new user meets it: every case below, through the three entry points (real subprocesses,
run a few at a time) and the Python API, is one line (exit 2 for the scripts) that names the bad value
and what is allowed, and leaves no result row and no partial file behind."""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import ROOT, model_config
from PIL import Image
from transformers import CLIPConfig

from vlm_eff.data.preprocess import ImagePreprocess
from vlm_eff.errors import ConfigError
from vlm_eff.reduction import apply_config, build

PROFILE = ("profile.py", "model=clip_tiny", "runs=1")
EVALUATE = ("evaluate.py", "model=tiny_clip_cifar10", "data.root={archive}")
VQA = ("evaluate.py", "model=llava_tiny", "protocol=vqa", "data=vqa", "data.root={images}")
VISUALIZE = ("-m", "vlm_eff.visualize", "model=tiny_clip_cifar10")
TRAIN = ("train.py", "model=tiny_clip_cifar10", "data.root={archive}", "data.train_size=64", "data.val_size=64")

CASES = {  # id: (command, the text the error line must hold)
    "keep above 1": (PROFILE + ("pruning=naive", "pruning.keep=1.5"), "pruning.keep=1.5 is outside (0, 1]"),
    "keep 0 with no pruning": (PROFILE + ("pruning=none", "pruning.keep=0"), "pruning.keep=0 is outside (0, 1]"),
    "keep 0 with tome": (PROFILE + ("pruning=tome", "pruning.keep=0"), "pruning.keep=0 is outside (0, 1]"),
    "r beyond the tokens": (PROFILE + ("pruning=tome", "pruning.r=100"),
                            "pruning.r=100 asks a layer for 100 merges, more than half of the 64 patch tokens; "
                            "allowed at most 32 per layer"),
    "layer out of range": (PROFILE + ("pruning=late_layer", "pruning.layer=99"),
                           "pruning.layer=99 is out of range for a 4-layer encoder; allowed -1..3"),
    "unknown strategy": (PROFILE + ("pruning=bogus",), "unknown pruning 'bogus'; allowed: cdpruner, cls_preserving, "
                         "dart, divprune, evit, fastv, late_layer, naive, none, pitome, position_aware, pyramiddrop, "
                         "random, sparsevlm, tome, visionzip, vispruner"),
    "unknown model": (PROFILE + ("model=bogus",), "unknown model 'bogus'; allowed: clip_laion_b32, clip_tiny"),
    "compile without warm-up": (PROFILE + ("compile=true", "warmup=0"),
                                "compile=true needs warmup >= 1 (the first batch compiles), got warmup=0"),
    "unknown score": (PROFILE + ("pruning=naive", "pruning.score=bogus"), "pruning.score='bogus'"),
    "weights missing from a model dir": (PROFILE + ("model.path={noweights}", "model.weights=pretrained"),
                                         "has a config.json but no weights (model.safetensors"),
    "truncated weights": (PROFILE + ("model.path={truncated_model}", "model.weights=pretrained"),
                          "model.path={truncated_model}: its weights cannot be loaded"),
    "unknown model_type": (PROFILE + ("model.path={unknown_type}",),
                           "has model_type='blip_2'; supported: clip, siglip, llava, llava_onevision, qwen2_vl, "
                           "qwen2_5_vl"),
    "no model dir": (PROFILE + ("model.path=/nowhere/model",), "model.path=/nowhere/model holds no save_pretrained"),
    "unknown device": (PROFILE + ("device=tpu",), "device='tpu' is unknown; allowed: auto, cpu, cuda"),
    "unknown dtype": (PROFILE + ("dtype=fp8",), "dtype='fp8' is unknown; allowed: fp32, bf16, fp16"),
    "resolution off the patch grid": (PROFILE + ("model.image_size=33",),
                                      "model.image_size=33 must be a positive multiple of the patch size 4"),
    "zero runs": (PROFILE + ("runs=0",), "runs=0 must be an integer >= 1"),
    "zero batch": (PROFILE + ("data.batch_size=0",), "data.batch_size=0 must be an integer >= 1"),
    "corrupt archive": (EVALUATE[:2] + ("data.root={corrupt_archive}",), "is not a readable .tar.gz archive"),
    "missing data": (EVALUATE[:2] + ("data.root=/nowhere/cifar10", "data.download=false"),
                     "data.root=/nowhere/cifar10 does not exist"),
    "corrupt image in a folder": (EVALUATE[:2] + ("data=imagefolder", "data.root={images}"),
                                  "cannot read image {images}/test/dog/broken.png"),
    "prompts for other classes": (EVALUATE + ("prompts=cifar100",),
                                  "the prompt set has 100 class names but the data has 10 classes"),
    "missing prompts file": (EVALUATE + ("prompts=file", "prompts.path=/nowhere/prompts.json"),
                             "prompts.path=/nowhere/prompts.json is not a file"),
    "caption naming a missing image": (EVALUATE[:2] + ("protocol=retrieval", "data=captions", "data.root={images}",
                                                       "data.captions={captions}"),
                                       "names 1 image(s) missing under data.root={images}, first {images}/gone.png"),
    "retrieval without captions": (EVALUATE + ("protocol=retrieval",), "protocol=retrieval needs image-caption pairs"),
    "zero subset": (EVALUATE + ("data.subset=0",), "data.subset=0 must be an integer >= 1"),
    "unwritable output dir": (EVALUATE + ("paths.work_dir={corrupt_archive}/work",),
                              "cannot write the output dir {corrupt_archive}/work/outputs/"),
    "lora without an adapter": (EVALUATE + ("lora=default",), "lora=default needs lora.checkpoint="),
    "no adapter at lora.checkpoint": (EVALUATE + ("lora.checkpoint=/nowhere",),
                                      "lora.checkpoint=/nowhere holds no saved adapter (no adapter_config.json there)"),
    "unknown lora target": (TRAIN + ("lora=default", "lora.targets=[vision_attn,mlp]"),
                            "lora.targets: mlp unknown; allowed: vision_attn, text_attn, projections"),
    "truncated checkpoint": (TRAIN + ("resume={truncated}",), "resume={truncated} is truncated or not a checkpoint"),
    "missing checkpoint": (TRAIN + ("resume=/nowhere/last.ckpt",), "resume='/nowhere/last.ckpt' is not a checkpoint"),
    "zero epochs": (TRAIN + ("trainer.max_epochs=0",), "trainer.max_epochs=0 must be an integer >= 1"),
    "zero lora rank": (TRAIN + ("lora.rank=0",), "lora.rank=0 must be an integer >= 1"),
    "labels on unlabelled images": (TRAIN[:2] + ("data=images", "data.root={images}", "data.val_size=1",
                                                 "objective=labels"),
                                    "objective=labels needs labelled data, and data=images has no classes"),
    "zeroshot on a VLM": (("evaluate.py", "model=llava_tiny", "data.root={archive}"),
                          "protocol=zeroshot scores a dual encoder's embeddings; model=llava_tiny is a generative VLM"),
    "vqa on a dual encoder": (EVALUATE[:2] + ("protocol=vqa", "data=vqa", "data.root={images}",
                                              "data.questions={questions}"), "protocol=vqa needs a generative VLM"),
    "question naming a missing image": (VQA + ("data.questions={questions}",),
                                        "line 2: question_id=2 names image {images}/test/cat/9.png, which is not a file"),
    "malformed question line": (VQA + ("data.questions={bad_questions}",), "line 2 is not valid JSON"),
    "zero new tokens": (VQA + ("data.questions={questions}", "protocol.max_new_tokens=0"),
                        "protocol.max_new_tokens=0 must be an integer >= 1"),
    "zero gen_tokens": (("profile.py", "model=llava_tiny", "gen_tokens=0"), "gen_tokens=0 must be an integer >= 1"),
    "summary token on OneVision": (("profile.py", "model=onevision_tiny", "pruning=naive"),
                                   "pruning.summary=mean cannot be placed on LLaVA-OneVision's packed crop grid"),
    "encoder strategy on Qwen2-VL": (("profile.py", "model=qwen2_vl_tiny", "pruning=tome"),
                                     "qwen2_vl's own ViT (2-D RoPE over packed images, a 2x2 PatchMerger) takes no "
                                     "encoder-site strategy"),
    "pool_attn on a headless tower": (("profile.py", "model=onevision_tiny", "pruning=evit", "pruning.summary=none",
                                       "pruning.layer=[1,2]"), "pruning.score=pool_attn needs the tower's pooling head"),
    "tokens and keep together": (("profile.py", "model=llava_tiny", "pruning=visionzip", "pruning.keep=0.5",
                                  "pruning.tokens=16"), "pruning.keep=0.5 and pruning.tokens=16 both set: give one"),
    "budget beyond the visual tokens": (("profile.py", "model=llava_tiny", "pruning=divprune", "pruning.tokens=100"),
                                        "pruning.tokens=100 is more than the 64 visual tokens of an image here; "
                                        "allowed 1..64"),
    "LLM layer beyond the depth": (("profile.py", "model=llava_tiny", "pruning=fastv", "pruning.layer=5"),
                                   "pruning.layer=5 is out of range for a 2-layer language model; allowed 1..1"),
    "visionzip on Qwen2-VL": (("profile.py", "model=qwen2_vl_tiny", "pruning=visionzip"),
                              "allowed here: none, divprune, random, fastv, pyramiddrop, dart, sparsevlm, "
                              "cdpruner with pruning.relevance=llm"),
    "train size beyond the split": (TRAIN[:3] + ("data.train_size=0",), "data.train_size=0 must be in 1..45000"),
    "zero learning rate": (TRAIN + ("optimizer.lr=0",), "optimizer.lr=0 must be a number > 0"),
    "negative weight decay": (TRAIN + ("optimizer.weight_decay=-0.1",), "optimizer.weight_decay=-0.1 must be a number >= 0"),
    "one beta": (TRAIN + ("optimizer.betas=[0.9]",), "optimizer.betas=[0.9] must be two numbers in [0, 1)"),
    "beta of one": (TRAIN + ("optimizer.betas=[0.9,1.0]",), "optimizer.betas=[0.9, 1.0] must be two numbers in [0, 1)"),
    "warm-up longer than the run": (TRAIN + ("scheduler.warmup_fraction=1.5",),
                                    "scheduler.warmup_fraction=1.5 must be a number in [0, 1)"),
    "negative gradient clip": (TRAIN + ("trainer.gradient_clip_val=-1",),
                               "trainer.gradient_clip_val=-1 must be a number >= 0 or null"),
    "zero log interval": (TRAIN + ("trainer.log_every_n_steps=0",), "trainer.log_every_n_steps=0 must be an integer >= 1"),
    "zero checkpoint interval": (TRAIN + ("checkpoint_every_n_steps=0",),
                                 "checkpoint_every_n_steps=0 must be an integer >= 1"),
    "training without end": (TRAIN + ("trainer.max_epochs=-1",),
                             "trainer.max_epochs=-1 with no trainer.max_steps would train forever"),
    "VLM training steps zero": (("train.py", "experiment=tiny_llava_cifar10", "data.root={archive}",
                                 "trainer.max_steps=0"), "trainer.max_steps=0 must be an integer >= 1 or -1"),
    "negative share in the VLM training mix": (("train.py", "experiment=tiny_llava_cifar10", "data.root={archive}",
                                                "data.train_mix.presence=-1"),  # {{ }}: one brace after format()
                                               "data.train_mix={{'position': 1, 'presence': -1, 'count': 1}} must give "
                                               "each of position, presence, count an integer >= 0"),
    "distill on unlabelled images without data=images": (
        TRAIN[:2] + ("objective=distill", "data.root={unlabelled}"),
        "data.root={unlabelled} is a folder of unlabelled images (no <split>/<class>/ folders); add data=images"),
    "unknown positions": (("profile.py", "model=llava_tiny", "pruning=tome", "pruning.positions=sideways"),
                          "pruning.positions='sideways' is unknown; allowed: compact, original"),
    "token maps of a missing image": (VISUALIZE + ("image=/nowhere/cat.png",), "image=/nowhere/cat.png does not exist"),
    "token maps without an image": (VISUALIZE, "image= is missing"),
    "token maps of a folder without images": (VISUALIZE + ("image={noweights}",), "is a folder without images"),
    "zero panels": (VISUALIZE + ("image={images}/test/cat/0.png", "panels=0"), "panels=0 must be an integer >= 1"),
    "token maps on anyres crops": (("-m", "vlm_eff.visualize", "model=onevision_tiny", "image={images}/test/cat/0.png"),
                                   "allowed: dual encoders and LLaVA-layout VLMs"),
    "misspelled knob": (TRAIN + ("trainer.max_step=3",),
                        "trainer.max_step is not a setting of train (check its spelling; a new key is +trainer.max_step=...)"),
    "comma list without -m": (VISUALIZE + ("image=a.png,b.png",),
                              "Ambiguous value for argument 'image=a.png,b.png'; a list is key=[a,b], a sweep over "
                              "values needs -m"),
    "corrupt image for token maps": (VISUALIZE + ("image={images}/test/dog/broken.png",),
                                     "cannot read image {images}/test/dog/broken.png"),
}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, shared_archive, cache_dir):
    """The bad files the cases point at, and every case run (a few processes at a time)."""
    files = tmp_path_factory.mktemp("bad")
    (files / "corrupt.tar.gz").write_bytes(os.urandom(4096))
    CLIPConfig().save_pretrained(files / "noweights")
    shutil.copytree(ROOT / "checkpoints" / "tiny_clip_cifar10", files / "truncated_model")
    weights = files / "truncated_model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (files / "unknown_type").mkdir()
    (files / "unknown_type" / "config.json").write_text(json.dumps({"model_type": "blip_2"}))
    for name in ("cat", "dog"):
        (files / "images" / "test" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(files / "images" / "test" / name / f"{i}.png")
    (files / "images" / "test" / "dog" / "broken.png").write_bytes(b"not an image")
    (files / "unlabelled" / "holiday").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(files / "unlabelled" / "holiday" / f"{i}.jpg")
    question = {"question_id": 1, "image": "test/cat/0.png", "text": "what is it?", "answer": "cat"}
    (files / "questions.jsonl").write_text(json.dumps(question) + "\n" + json.dumps(
        {**question, "question_id": 2, "image": "test/cat/9.png"}) + "\n")
    (files / "bad_questions.jsonl").write_text(json.dumps(question) + "\n{not json\n")
    (files / "captions.csv").write_text("image,caption\ntest/cat/0.png,a cat\ngone.png,a ghost\n")
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, files / "whole.ckpt")
    (files / "truncated.ckpt").write_bytes((files / "whole.ckpt").read_bytes()[:2000])
    names = {"archive": shared_archive, "noweights": files / "noweights", "unknown_type": files / "unknown_type",
             "corrupt_archive": files / "corrupt.tar.gz", "images": files / "images",
             "captions": files / "captions.csv", "truncated": files / "truncated.ckpt",
             "truncated_model": files / "truncated_model", "questions": files / "questions.jsonl",
             "bad_questions": files / "bad_questions.jsonl", "unlabelled": files / "unlabelled"}

    def run(case: str):
        command, expected = CASES[case]
        work = files / "work" / str(sorted(CASES).index(case))
        args = [arg.format(**names) for arg in command]
        if not any(arg.startswith("paths.work_dir=") for arg in args):
            args.append(f"paths.work_dir={work}")
        result = subprocess.run([sys.executable, *args, "logger=none"], cwd=ROOT, capture_output=True, text=True,
                                timeout=300, env={**os.environ, "VLM_EFF_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1"})
        return result, expected.format(**names), work

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(CASES, pool.map(run, CASES)))


def test_the_table_covers_every_entry_point():
    scripts = [command[0] for command, _ in CASES.values()]
    counts = {s: scripts.count(s) >= 5 for s in ("profile.py", "evaluate.py", "train.py", "-m")}  # -m: visualize
    assert len(CASES) >= 25 and counts == {"profile.py": True, "evaluate.py": True, "train.py": True, "-m": True}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_with_no_row_and_no_partial_file(bad_inputs, case):
    result, expected, work = bad_inputs[case]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, last
    written = [p for p in work.rglob("*") if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"]
    assert written == [], written  # no results.csv, no per_class.json, no checkpoint, no export


def test_bad_input_through_the_python_api_is_one_line(tiny_clip):
    from omegaconf import OmegaConf

    vision = model_config("clip_tiny").architecture.vision_config
    pruning = OmegaConf.load(ROOT / "conf" / "pruning" / "cls_preserving.yaml")
    cases = [
        (lambda: build(OmegaConf.merge(pruning, {"keep": 0}), dict(vision), True), "pruning.keep=0 is outside (0, 1]"),
        (lambda: build(OmegaConf.merge(pruning, {"name": "dropall"}), dict(vision), True),
         "pruning='dropall' is unknown; allowed: none, naive"),
        (lambda: apply_config(tiny_clip, OmegaConf.merge(pruning, {"layer": 4})), "pruning.layer=4 is out of range"),
        (lambda: ImagePreprocess.from_config(ROOT / "conf" / "evaluate.yaml"), "evaluate.yaml is malformed"),
    ]
    for call, expected in cases:
        with pytest.raises(ConfigError) as error:
            call()
        assert expected in str(error.value) and "\n" not in str(error.value)
