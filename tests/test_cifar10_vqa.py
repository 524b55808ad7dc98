"""2x2 CIFAR-10 mosaic VQA sets (vlm_eff.data.cifar10_vqa) on the real CIFAR-10 images."""

import hashlib
import json
import re
from collections import Counter

import numpy as np
import pytest
from conftest import run_script
from omegaconf import OmegaConf
from PIL import Image

from vlm_eff.benchmarks.generic import VQA
from vlm_eff.data.cifar10_vqa import (
    ANIMALS,
    KINDS,
    QUADRANTS,
    VEHICLES,
    TrainingMosaics,
    build_set,
    ensure_test_set,
    quadrant,
    write_set,
)
from vlm_eff.data.loading import ReseededLoader
from vlm_eff.errors import ConfigError

N = 3000  # the default test set: 1,000 questions per kind


def read_questions(file, root) -> list:
    """The questions of a question file, as data=vqa reads them."""
    return list(VQA(OmegaConf.create({"name": "vqa", "root": str(root), "questions": str(file)})).questions)


@pytest.fixture(scope="module")
def full_set(cifar_test):
    return build_set(cifar_test["images"], cifar_test["labels"], cifar_test["classes"], N, seed=0)


@pytest.fixture(scope="module")
def cifar_train(shared_archive, cache_dir) -> dict:
    from vlm_eff.data.cifar10 import load_split

    images, labels, classes = load_split(shared_archive, "train", cache_dir)
    return {"images": images, "labels": labels, "classes": classes}


def digests(images) -> set[str]:
    return {hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images}


def expected_answer(question: dict, labels: np.ndarray, classes: list) -> str:
    """The answer derived from the source labels alone (not from the generator's bookkeeping)."""
    names = [str(classes[labels[i]]) for i in question["cells"]]
    if question["kind"] == "position":
        where = [q for q in QUADRANTS if question["text"] == f"What is in the {q}?"]
        assert len(where) == 1, question["text"]
        return names[QUADRANTS.index(where[0])]
    if question["kind"] == "presence":
        asked = question["text"].removeprefix("Is there ").removesuffix("?").split(" ", 1)[1]
        assert asked in ANIMALS + VEHICLES, question["text"]
        return "yes" if asked in names else "no"
    assert question["kind"] == "count" and question["text"] == "How many animals are there?"
    return str(sum(name in ANIMALS for name in names))


def check_mosaics(mosaics, questions, images, labels, classes):
    """Every quadrant is the source image its cell names, pixel for pixel, and every answer is right."""
    assert mosaics.dtype == np.uint8 and mosaics.shape[1:] == (64, 64, 3)
    for image, question in zip(mosaics, questions):
        cells = question["cells"]
        assert len(cells) == 4 and len(set(cells)) == 4  # four distinct source images
        for q, index in enumerate(cells):
            assert np.array_equal(quadrant(image, q), images[index])
        assert question["cell_classes"] == [str(classes[labels[i]]) for i in cells]
        assert question["answer"] == expected_answer(question, labels, classes)


def test_same_seed_is_bit_identical_and_another_seed_differs(cifar_test):
    data = (cifar_test["images"], cifar_test["labels"], cifar_test["classes"])
    mosaics, questions = build_set(*data, 300, seed=0)
    again_mosaics, again_questions = build_set(*data, 300, seed=0)
    assert mosaics.tobytes() == again_mosaics.tobytes()
    assert json.dumps(questions) == json.dumps(again_questions)
    other_mosaics, other_questions = build_set(*data, 300, seed=1)
    assert not np.array_equal(mosaics, other_mosaics)
    assert [q["cells"] for q in questions] != [q["cells"] for q in other_questions]
    assert [q["kind"] for q in questions] == [q["kind"] for q in other_questions]  # the rotation is fixed


def test_quadrants_are_the_named_test_images_and_answers_are_right(cifar_test, full_set):
    mosaics, questions = full_set
    assert len(mosaics) == len(questions) == N
    assert [q["question_id"] for q in questions] == list(range(N))
    assert questions[0]["image"] == "mosaic_00000.png" and questions[-1]["image"] == f"mosaic_{N - 1:05d}.png"
    assert all(q["answer"] == q["answer"].lower() and " " not in q["answer"] for q in questions)
    check_mosaics(mosaics, questions, cifar_test["images"], cifar_test["labels"], cifar_test["classes"])
    # the set spreads over the whole test split: every test image is used, none more than twice
    uses = Counter(i for q in questions for i in q["cells"])
    assert len(uses) == len(cifar_test["labels"]) and max(uses.values()) <= 2


def test_answers_and_kinds_are_balanced(cifar_test, full_set):
    _, questions = full_set
    assert [q["kind"] for q in questions[:6]] == list(KINDS) * 2
    assert Counter(q["kind"] for q in questions) == {kind: N // 3 for kind in KINDS}
    by_kind = {kind: [q for q in questions if q["kind"] == kind] for kind in KINDS}
    assert Counter(q["answer"] for q in by_kind["presence"]) == {"yes": 500, "no": 500}
    assert Counter(q["answer"] for q in by_kind["count"]) == {str(k): 200 for k in range(5)}
    assert Counter(q["answer"] for q in by_kind["position"]) == {name: 100 for name in ANIMALS + VEHICLES}
    assert Counter(q["text"] for q in by_kind["position"]) == {f"What is in the {q}?": 250 for q in QUADRANTS}
    for answer in ("yes", "no"):  # the class asked says nothing about the answer
        asked = Counter(q["text"] for q in by_kind["presence"] if q["answer"] == answer)
        assert len(asked) == 10 and set(asked.values()) == {50}
    assert "Is there an airplane?" in asked and "Is there a cat?" in asked
    # an odd size: everything within one
    _, questions = build_set(cifar_test["images"], cifar_test["labels"], cifar_test["classes"], 301, seed=3)
    kinds = Counter(q["kind"] for q in questions)
    assert sorted(kinds.values()) == [100, 100, 101]
    for kind, values in (("presence", ["yes", "no"]), ("count", [str(k) for k in range(5)])):
        counts = Counter(q["answer"] for q in questions if q["kind"] == kind)
        assert set(counts) == set(values) and max(counts.values()) - min(counts.values()) <= 1


def test_written_set_reads_back_exactly(cifar_test, tmp_path):
    mosaics, questions = build_set(cifar_test["images"], cifar_test["labels"], cifar_test["classes"], 60, seed=5)
    out = write_set(tmp_path / "set", mosaics, questions)
    assert sorted(p.name for p in out.iterdir()) == ["images", "questions.jsonl", "set.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    read = read_questions(out / "questions.jsonl", out)
    assert [q.question_id for q in read] == [q["question_id"] for q in questions]
    assert [(q.kind, q.answer, q.text) for q in read] == [(q["kind"], q["answer"], q["text"]) for q in questions]
    assert [q.image for q in read] == [out / "images" / q["image"] for q in questions]
    for question, image in zip(read, mosaics):
        with Image.open(question.image) as png:
            assert png.format == "PNG" and png.mode == "RGB"
            assert np.array_equal(np.asarray(png), image)
    manifest = json.loads((out / "set.json").read_text())
    assert manifest["kinds"] == {kind: 20 for kind in KINDS} and manifest["chance"]["count"] == pytest.approx(0.2)
    # an earlier set is replaced whole; a folder that is not a set is refused
    write_set(out, mosaics[:3], questions[:3])
    assert len(read_questions(out / "questions.jsonl", out)) == 3 and len(list((out / "images").iterdir())) == 3
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a mosaic VQA set"):
        write_set(tmp_path / "other", mosaics, questions)
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["keep.txt"]


def test_ensure_test_set_builds_once_from_the_test_split(shared_archive, cache_dir, cifar_test):
    folder = ensure_test_set(shared_archive, cache_dir, n_questions=30, seed=0)
    stamp = (folder / "set.json").stat().st_mtime_ns
    assert ensure_test_set(shared_archive, cache_dir, n_questions=30, seed=0) == folder
    assert (folder / "set.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert ensure_test_set(shared_archive, cache_dir, n_questions=30, seed=1) != folder
    mosaics, questions = build_set(cifar_test["images"], cifar_test["labels"], cifar_test["classes"], 30, seed=0)
    read = read_questions(folder / "questions.jsonl", folder)
    assert [(q.text, q.answer) for q in read] == [(q["text"], q["answer"]) for q in questions]
    for question, image in zip(read, mosaics):
        with Image.open(question.image) as png:
            assert np.array_equal(np.asarray(png), image)


def test_training_stream_uses_only_train_images(cifar_train, cifar_test):
    images, labels, classes = cifar_train["images"], cifar_train["labels"], cifar_train["classes"]
    assert len(labels) == 50000
    stream = TrainingMosaics(images, labels, classes, seed=0)
    mosaics, questions = stream.sample(300, np.random.default_rng(0))
    again, _ = stream.sample(300, np.random.default_rng(0))
    assert np.array_equal(mosaics, again)
    check_mosaics(mosaics, questions, images, labels, classes)  # cells index the train split
    kinds = Counter(q["kind"] for q in questions)
    assert kinds == {kind: 100 for kind in KINDS}
    assert Counter(q["answer"] for q in questions if q["kind"] == "count") == {str(k): 20 for k in range(5)}
    test_images = digests(cifar_test["images"])
    quadrants = [quadrant(m, q) for m in mosaics for q in range(4)]
    assert digests(quadrants) <= digests(images[np.unique([i for q in questions for i in q["cells"]])])
    assert not digests(quadrants) & test_images
    weighted = TrainingMosaics(images, labels, classes, seed=0, mix={"position": 1, "presence": 2, "count": 0})
    _, asked = weighted.sample(300, np.random.default_rng(0))
    assert Counter(q["kind"] for q in asked) == {"position": 100, "presence": 200}
    assert Counter(q["answer"] for q in asked if q["kind"] == "presence") == {"yes": 100, "no": 100}
    only = stream.with_mix({"position": 0, "presence": 1, "count": 0})  # the same split and seed, presence alone
    _, asked = only.sample(40, np.random.default_rng(0))
    assert {q["kind"] for q in asked} == {"presence"} and stream.kinds == tuple(KINDS)
    # the iterable stream: (mosaic, text, answer, kind, cell classes), seeded, never a test image
    items = [item for item, _ in zip(TrainingMosaics(images, labels, classes, seed=7, chunk=50), range(120))]
    repeat = [item for item, _ in zip(TrainingMosaics(images, labels, classes, seed=7, chunk=50), range(120))]
    assert all(np.array_equal(a[0], b[0]) and a[1:4] == b[1:4] and np.array_equal(a[4], b[4])
               for a, b in zip(items, repeat))
    assert all(m.shape == (64, 64, 3) and kind in KINDS and isinstance(text, str) for m, text, _, kind, _ in items)
    assert not digests(quadrant(m, q) for m, *_ in items for q in range(4)) & test_images
    for _, text, answer, kind, cells in items:  # the cells' classes are the ones the answers tell
        names = [classes[c] for c in cells]
        if kind == "position":
            assert names[next(i for i, q in enumerate(QUADRANTS) if q in text)] == answer
        elif kind == "presence":
            assert (text.rstrip("?").split()[-1] in names) == (answer == "yes")
        else:
            assert sum(name in ANIMALS for name in names) == int(answer)


def test_cli_writes_a_set_and_prints_the_counts(shared_archive, cache_dir, tmp_path):
    out = tmp_path / "cli"
    result = run_script("-m", "vlm_eff.data.write", "cifar10_vqa", "--archive", str(shared_archive), "--out", str(out),
                        "--questions", "30", "--seed", "0", "--cache-dir", str(cache_dir))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^ +position +10 ", result.stdout, re.M) and "no=5 yes=5" in result.stdout
    assert "0=2 1=2 2=2 3=2 4=2" in result.stdout
    assert len(read_questions(out / "questions.jsonl", out)) == 30
    with pytest.raises(ConfigError, match="missing.tar.gz does not exist"):  # the CLI prints it and exits 2
        ensure_test_set(tmp_path / "missing.tar.gz", cache_dir)


def test_a_resumed_training_stream_draws_fresh_mosaics(cifar_test):
    """The recovery loader of the mosaic stream (data/loading.ReseededLoader): the same seed gives the same batches;
    restored from a checkpoint's state after 3 batches it draws other mosaics, not the first run's again."""
    def loader():
        stream = TrainingMosaics(cifar_test["images"], cifar_test["labels"], cifar_test["classes"], seed=0)
        return ReseededLoader(stream, 0, batch_size=2, collate_fn=lambda items: np.stack([i[0] for i in items]))

    first, again, resumed = loader(), loader(), loader()
    batches = [batch for _, batch in zip(range(3), first)]
    assert first.state_dict() == {"batches": 3}
    assert np.array_equal(next(iter(again)), batches[0])
    resumed.load_state_dict(first.state_dict())
    assert not any(np.array_equal(next(iter(resumed)), batch) for batch in batches)
