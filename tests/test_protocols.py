"""The protocols researchers report: the prompt registry (ImageNet, CIFAR-100, files), ImageNet-style
wnid folders, and image-text retrieval recall (metrics against brute force, both caption formats, real
runs of the tiny models through evaluate.py and the report)."""

import itertools
import json
import os

import numpy as np
import pytest
import torch
from conftest import ROOT, run_script
from PIL import Image

from vlm_eff.data.captions import CaptionsDataModule, read_captions
from vlm_eff.data.cifar10 import extract
from vlm_eff.data.preprocess import ImagePreprocess
from vlm_eff.errors import ConfigError
from vlm_eff.prompts import Prompts, load_prompts, read_prompt_file
from vlm_eff.report.__main__ import main as report_main
from vlm_eff.results import read_results
from vlm_eff.retrieval import retrieval_recalls

# --- retrieval metrics ------------------------------------------------------------------------------


def brute_force_recalls(similarity: list[list[float]], caption_image: list[int], k: int) -> tuple[float, float]:
    """Recall@k written out: sort every candidate list, ties placing the query's matches last."""
    n_images, n_captions = len(similarity), len(caption_image)
    i2t = []
    for i in range(n_images):
        ranked = sorted(range(n_captions), key=lambda t: (-similarity[i][t], caption_image[t] == i))
        i2t.append(any(caption_image[t] == i for t in ranked[:k]))
    t2i = []
    for t in range(n_captions):
        ranked = sorted(range(n_images), key=lambda i: (-similarity[i][t], i == caption_image[t]))
        t2i.append(caption_image[t] in ranked[:k])
    return sum(i2t) / n_images, sum(t2i) / n_captions


def test_recalls_match_brute_force_with_ties_and_several_captions_per_image():
    caption_image = [0, 0, 0, 1, 1, 2, 3, 3]  # 4 images, 1-3 captions each
    similarity = [  # [I, T], with ties across and within rows
        [0.9, 0.2, 0.9, 0.9, 0.1, 0.0, 0.3, 0.3],  # image 0: its best (0.9) tied with caption 3 (image 1's)
        [0.5, 0.5, 0.5, 0.4, 0.5, 0.1, 0.2, 0.2],  # image 1: its best (0.5) tied with four others
        [0.1, 0.1, 0.1, 0.1, 0.1, 0.8, 0.1, 0.1],  # image 2: a clear hit
        [0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3],  # image 3: all equal
    ]
    recalls = retrieval_recalls(torch.tensor(similarity), torch.tensor(caption_image), ks=(1, 2, 5, 10))
    for k in (1, 2, 5, 10):
        i2t, t2i = brute_force_recalls(similarity, caption_image, k)
        assert recalls[f"i2t_r{k}"] == pytest.approx(i2t) and recalls[f"t2i_r{k}"] == pytest.approx(t2i), k
    assert recalls["i2t_r1"] == pytest.approx(1 / 4)  # only image 2: the ties count against the others
    assert recalls["i2t_r2"] == pytest.approx(2 / 4)  # image 0's 0.9 has one other caption at 0.9 above it


def test_collapsed_embeddings_score_zero_and_random_cases_match_brute_force():
    collapsed = retrieval_recalls(torch.ones(5, 10), torch.arange(10) // 2)  # 8 other captions, 4 other images
    assert collapsed["i2t_r1"] == collapsed["i2t_r5"] == collapsed["t2i_r1"] == 0 and collapsed["t2i_r5"] == 1
    generator = torch.Generator().manual_seed(0)
    for n_images, per_image in [(7, 1), (6, 3)]:
        caption_image = torch.arange(n_images).repeat_interleave(per_image)
        similarity = torch.randn(n_images, len(caption_image), generator=generator).round(decimals=1)  # some ties
        recalls = retrieval_recalls(similarity, caption_image)
        for k in (1, 5, 10):
            i2t, t2i = brute_force_recalls(similarity.tolist(), caption_image.tolist(), k)
            assert (recalls[f"i2t_r{k}"], recalls[f"t2i_r{k}"]) == (pytest.approx(i2t), pytest.approx(t2i))


# --- caption files ----------------------------------------------------------------------------------


def write_caption_files(folder, pairs: dict[str, list[str]]):
    """The same image -> captions as a Karpathy JSON (with a train image and COCO-style filepath) and a CSV."""
    images = [{"split": "test", "filepath": os.path.dirname(name), "filename": os.path.basename(name),
               "sentences": [{"raw": c, "tokens": c.split()} for c in captions]} for name, captions in pairs.items()]
    images.append({"split": "train", "filepath": "", "filename": "not-in-test.jpg", "sentences": [{"raw": "x"}]})
    (folder / "dataset_test.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    lines = ["image,caption"] + [f'{name},"{c}"' for name, captions in pairs.items() for c in captions]
    (folder / "captions.csv").write_text("\n".join(lines) + "\n")
    return folder / "dataset_test.json", folder / "captions.csv"


def test_karpathy_json_and_csv_readers_agree(tmp_path):
    pairs = {"val2014/a.jpg": ["a dog, running", "a brown dog"], "val2014/b.jpg": ["two cats"], "c.jpg": ["x", "y", "z"]}
    karpathy, csv_file = write_caption_files(tmp_path, pairs)
    assert read_captions(karpathy, "test") == read_captions(csv_file, "test") == pairs
    assert list(read_captions(karpathy, "train")) == ["not-in-test.jpg"]
    (tmp_path / "more.csv").write_text("image,caption\n./c.jpg,x\nc.jpg,y\n")  # one image, however it is written
    assert read_captions(tmp_path / "more.csv", "test") == {"c.jpg": ["x", "y"]}


def test_caption_errors_are_one_line(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    _, csv_file = write_caption_files(tmp_path, {"a.jpg": ["one"], "gone/b.jpg": ["two"]})
    data = CaptionsDataModule(str(tmp_path), str(csv_file), ImagePreprocess())
    with pytest.raises(ConfigError, match=r"names 1 image\(s\) missing under data.root=.*, first .*gone/b.jpg$"):
        data.setup("test")
    (tmp_path / "bad.csv").write_text("path,text\na.jpg,hello\n")
    with pytest.raises(ConfigError, match="needs the CSV columns image,caption"):
        read_captions(tmp_path / "bad.csv", "test")
    (tmp_path / "bare.json").write_text('{"images": [{"split": "test", "filename": "a.jpg", "sentences": []}]}')
    with pytest.raises(ConfigError, match="1 image.s. without a caption, first a.jpg"):
        read_captions(tmp_path / "bare.json", "test")
    (tmp_path / "bad.json").write_text('{"images": [{"split": "test"}]}')
    with pytest.raises(ConfigError, match="is not a Karpathy-split JSON"):
        read_captions(tmp_path / "bad.json", "test")
    with pytest.raises(ConfigError, match="has no captions in split 'val'"):
        read_captions(tmp_path / "dataset_test.json", "val")


# --- prompt registry --------------------------------------------------------------------------------


def test_registry_holds_the_clip_papers_imagenet_and_cifar100_prompts():
    imagenet = load_prompts({"registry": "imagenet"})
    assert len(imagenet.classes) == len(imagenet.wnids) == 1000 and len(imagenet.templates) == 80
    assert (imagenet.wnids[0], imagenet.classes[0]) == ("n01440764", "tench")
    assert (imagenet.wnids[-1], imagenet.classes[-1]) == ("n15075141", "toilet paper")
    assert imagenet.templates[0] == "a bad photo of a {}." and len(set(imagenet.wnids)) == 1000
    cifar100 = load_prompts({"registry": "cifar100"})
    assert len(cifar100.classes) == 100 and len(cifar100.templates) == 18
    assert cifar100.classes[:2] == ["apple", "aquarium fish"]
    with pytest.raises(ConfigError, match=r"prompts.registry='imagenet21k' is unknown; allowed: cifar100, imagenet"):
        load_prompts({"registry": "imagenet21k"})


def test_200_class_wnid_subsets_and_numbered_folders_get_their_own_names():
    imagenet = load_prompts({"registry": "imagenet"})
    subsets = json.loads((ROOT / "tests" / "fixtures" / "imagenet_subsets.json").read_text())
    for name in ("imagenet_r", "imagenet_a"):  # names from CLIP_benchmark's own subset lists
        subset = subsets[name]
        assert len(subset["wnids"]) == 200
        assert imagenet.names_for(sorted(subset["wnids"])) == [
            dict(zip(subset["wnids"], subset["classes"]))[w] for w in sorted(subset["wnids"])]
    assert imagenet.names_for(["0", "1", "10", "999"]) == ["tench", "goldfish", "brambling", "toilet paper"]
    with pytest.raises(ConfigError, match="n99999999 are not among the prompt set's 1000 WordNet ids"):
        imagenet.names_for(["n01440764", "n99999999"])
    with pytest.raises(ConfigError, match="use prompts=imagenet"):
        Prompts(["a photo of a {}."]).names_for(["n01440764", "n01443537"])


def test_class_names_from_the_prompts_or_the_data_and_mismatches_are_errors():
    assert Prompts(["{}"]).names_for(["cat", "dog"]) == ["cat", "dog"]
    assert Prompts(["{}"], ["a cat", "a dog"]).names_for(["cat", "dog"]) == ["a cat", "a dog"]  # other words: by place
    assert Prompts(["{}"], ["Dog", "cat"]).names_for(["cat", "dog"]) == ["cat", "Dog"]  # the same classes: by name
    with pytest.raises(ConfigError, match="class folders are numbers"):
        Prompts(["{}"]).names_for(["0", "1"])
    cifar100 = load_prompts({"registry": "cifar100"})
    with pytest.raises(ConfigError, match=r"the prompt set has 100 class names but the data has 10 classes"):
        cifar100.names_for(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])


def test_prompt_files_json_or_one_template_per_line(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"classes": ["cat", "dog"], "templates": ["a {c}.", "the {}!"]}))
    assert read_prompt_file(tmp_path / "p.json") == Prompts(["a {}.", "the {}!"], ["cat", "dog"])
    (tmp_path / "p.txt").write_text("a photo of a {}.\n\n  art of the {}.  \n")
    prompts = load_prompts({"name": "file", "path": str(tmp_path / "p.txt")})
    assert prompts == Prompts(["a photo of a {}.", "art of the {}."]) and prompts.classes is None
    bad = {
        "none.txt": ("a photo.\n", "must hold exactly one '{}'"),
        "two.txt": ("{} and {}\n", "must hold exactly one '{}'"),
        "named.txt": ("a {name}\n", "must hold exactly one '{}'"),
        "broken.json": ('{"templates": [', "is not valid JSON"),
        "list.json": ('["a {}"]', "must hold a JSON object"),
        "classes.json": ('{"templates": ["{}"], "classes": "cat"}', "classes must be a non-empty list"),
        "empty.txt": ("\n", "templates must be a non-empty list"),
    }
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")) as error:
            load_prompts({"name": "file", "path": str(tmp_path / name)})
        assert "\n" not in str(error.value) and name in str(error.value)
    with pytest.raises(ConfigError, match="prompts=file needs prompts.path="):
        load_prompts({"name": "file", "path": None})


# --- end to end on real images and the tiny models ---------------------------------------------------


def test_imagenet_wnid_folders_evaluate_with_the_registry_names(tmp_path, cifar_test, cache_dir):
    """A 3-class ImageNet-style val folder (real CIFAR images in wnid folders) through evaluate.py."""
    wnids = ["n01443537", "n02129165", "n04552348"]  # the CLIP names: goldfish, lion, military aircraft
    for w, label in zip(wnids, (0, 3, 8)):
        (tmp_path / "val" / w).mkdir(parents=True)
        for i in np.flatnonzero(cifar_test["labels"] == label)[:4]:
            Image.fromarray(cifar_test["images"][i]).resize((40, 30)).save(tmp_path / "val" / w / f"ILSVRC_{i}.JPEG")
    common = ("evaluate.py", "model=tiny_clip_cifar10", "data=imagenet", f"data.root={tmp_path}", "logger=none",
              f"paths.work_dir={tmp_path / 'work'}")
    result = run_script(*common, "prompts=imagenet", env={"VLM_EFF_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr
    (row,) = read_results(tmp_path / "work" / "outputs" / "results.csv")
    assert int(row["n_images"]) == 12 and 0 <= float(row["top1"]) <= 1
    (per_class,) = (tmp_path / "work" / "outputs").glob("*/*/per_class.json")
    assert list(json.loads(per_class.read_text())) == ["goldfish", "lion", "military aircraft"]
    result = run_script(*common, "prompts=single")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: the data's classes are WordNet ids (n01443537")


def independent_recalls(checkpoint, captions_file, archive_dir) -> dict:
    """Recalls from the stock Hugging Face model's own `logits_per_image` over every image and caption."""
    from transformers import AutoModel, AutoTokenizer

    from vlm_eff.towers import family_for

    model = AutoModel.from_pretrained(checkpoint).float().eval()
    pairs = read_captions(captions_file, "test")
    preprocess = ImagePreprocess.from_config(checkpoint)
    pixels = torch.stack([preprocess(np.asarray(Image.open(archive_dir / name))) for name in pairs])  # [I, 3, S, S]
    captions = list(itertools.chain(*pairs.values()))
    family = family_for(model.config.model_type)  # the CLIP BPE tokenizer for both (SigLIP's pads on the left)
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "assets" / "clip-tokenizer",
                                              padding_side="right" if family.has_cls else "left")
    tokens = family.tokenize(tokenizer, captions, model.config)
    with torch.no_grad():
        logits = model(pixel_values=pixels, **tokens).logits_per_image  # [I, T]
    caption_image = torch.tensor([i for i, c in enumerate(pairs.values()) for _ in c])
    return retrieval_recalls(logits, caption_image)


@pytest.fixture(scope="module")
def cifar_captions(tmp_path_factory, shared_archive):
    folder = tmp_path_factory.mktemp("captions")
    result = run_script("-m", "vlm_eff.data.write", "cifar10_captions", str(shared_archive), str(folder / "captions.csv"),
                        "--per-class", "2", "--captions", "4")
    assert result.returncode == 0, result.stderr
    return folder / "captions.csv"


@pytest.mark.parametrize("model", ["tiny_clip_cifar10", "tiny_siglip_cifar10"])
def test_retrieval_sweep_equals_the_models_own_logits_and_reports_recall(model, tmp_path, cifar_captions,
                                                                         shared_archive, cache_dir, capsys):
    result = run_script(
        "evaluate.py", "-m", "protocol=retrieval", "data=captions", f"data.root={shared_archive}",
        f"data.captions={cifar_captions}", f"model={model}", "pruning=none,tome", "logger=none",
        f"paths.work_dir={tmp_path}", env={"VLM_EFF_CACHE": str(cache_dir)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {row["strategy"]: row for row in read_results(tmp_path / "outputs" / "results.csv")}
    assert int(rows["none"]["n_images"]) == 20 and not rows["none"]["top1"]
    assert float(rows["tome"]["gflops_per_img"]) < 0.6 * float(rows["none"]["gflops_per_img"])
    expected = independent_recalls(ROOT / "checkpoints" / model, cifar_captions, extract(shared_archive, cache_dir))
    for name, value in expected.items():
        assert float(rows["none"][name]) == pytest.approx(value, abs=1e-6), name
    assert expected["i2t_r10"] > expected["i2t_r1"] > 0.05  # trained weights: better than chance (4 of 80 captions)

    (sweep_dir,) = (tmp_path / "multirun").glob("*/*")
    report_main([str(sweep_dir), "--no-wandb"])
    table = (sweep_dir / "report.md").read_text()
    assert "| i2t R@1/5/10 % | t2i R@1/5/10 % |" in table
    none_line = next(line for line in table.splitlines() if line.startswith("| none"))
    assert f"{100 * float(rows['none']['i2t_r1']):.1f} / " in none_line
    with Image.open(sweep_dir / "recall_vs_flops.png") as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]
    assert not (sweep_dir / "accuracy_vs_flops.png").exists()
