"""2x2 CIFAR-10 mosaics with one-word questions: a VQA set with a known chance level per kind.

A mosaic tiles four CIFAR-10 images of one split into one image (32 px cells -> 64 x 64 RGB; with 4 px
patches that is 16 x 16 = 256 patch tokens), quadrants in the order top left, top right, bottom left,
bottom right (`QUADRANTS`; a question's `cells` lists the four source indices in that order). Each
mosaic carries one question of one kind (`QUESTIONS`); answers are one lower-case word, balanced so
that guessing without looking scores exactly `CHANCE`:

- `position`  "What is in the top left?"      -> the class in that quadrant (10 answers, 10 % each)
- `presence`  "Is there a cat?"               -> "yes" / "no", exactly half each (within one for odd
              counts); "no" mosaics hold no image of the class asked; the class asked is balanced
              over the ten classes within the "yes" and within the "no" questions
- `count`     "How many animals are there?"   -> "0".."4" (bird, cat, deer, dog, frog, horse are
              animals; airplane, automobile, ship, truck vehicles), each count equally often: the
              number of animal cells is drawn first (balanced), then which cells, then their classes

`build_set` makes an evaluation set (kinds in the fixed rotation position, presence, count, ...; every
source image of a class used once before any is used again); `write_set` writes it as PNGs plus LLaVA's
question JSONL; `ensure_test_set` builds the CIFAR-10 *test*-split set once into the cache, so that
`data=vqa data.root=<dir> data.questions=<dir>/questions.jsonl` can point at it. `TrainingMosaics` draws
training examples from the *train* split, so training never sees a test image. Everything is seeded
(numpy Generator): the same inputs and seed give bit-identical output.

Over 350 lines on purpose: the set's question kinds, their sampling, the test-set writer and the training
stream share one definition of a mosaic and its answers; split, they could drift apart.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlm_eff.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump whenever the generated sets change; it keys the cache of `ensure_test_set`
DEFAULT_QUESTIONS = 3000  # 1,000 per kind
DEFAULT_SEED = 0
KINDS = ("position", "presence", "count")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
QUESTIONS = {  # the phrasings, one per kind
    "position": "What is in the {quadrant}?",
    "presence": "Is there {article} {name}?",
    "count": "How many animals are there?",
}
YES, NO = "yes", "no"
ANIMALS = ("bird", "cat", "deer", "dog", "frog", "horse")
VEHICLES = ("airplane", "automobile", "ship", "truck")
MAX_COUNT = len(QUADRANTS)
CHANCE = {"position": 1 / (len(ANIMALS) + len(VEHICLES)), "presence": 1 / 2, "count": 1 / (MAX_COUNT + 1)}
MANIFEST = "set.json"  # written last into a set's folder: a complete set has it
QUESTION_FILE = "questions.jsonl"
IMAGE_DIR = "images"

# pick(rng, class index, k) -> k distinct indices of images of that class
Picker = Callable[[np.random.Generator, int, int], np.ndarray]


def article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def check_mix(mix) -> None:
    """`data.train_mix`: every kind of `KINDS` with a relative frequency, integers >= 0, not all 0."""
    shares = list(mix.values()) if isinstance(mix, dict) and set(mix) == set(KINDS) else []
    if not shares or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in shares) or not sum(shares):
        raise ConfigError(f"data.train_mix={mix!r} must give each of {', '.join(KINDS)} an integer >= 0 (not all 0), "
                          "e.g. {position: 1, presence: 2, count: 1}")


def balanced(rng: np.random.Generator, n: int, values: Sequence) -> list:
    """`n` draws of `values` in random order, each value `n // len(values)` or one more times."""
    if n <= 0:
        return []
    blocks = [rng.permutation(len(values)) for _ in range(-(-n // len(values)))]
    return [values[i] for i in np.concatenate(blocks)[:n]]


def mosaic(cells: Sequence[np.ndarray]) -> np.ndarray:
    """Four [S, S, 3] images (top left, top right, bottom left, bottom right) as one [2S, 2S, 3]."""
    top_left, top_right, bottom_left, bottom_right = cells
    return np.concatenate([np.concatenate([top_left, top_right], axis=1),
                           np.concatenate([bottom_left, bottom_right], axis=1)], axis=0)


def quadrant(image: np.ndarray, index: int) -> np.ndarray:
    """Cell `index` (0 top left .. 3 bottom right) of a [2S, 2S, 3] mosaic."""
    size = image.shape[0] // 2
    row, col = divmod(index, 2)
    return image[row * size : (row + 1) * size, col * size : (col + 1) * size]


class _Split:
    """A split checked for mosaics: the images, labels, class names, and the class index of every name."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]):
        images, labels, classes = np.asarray(images), np.asarray(labels), [str(c) for c in classes]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
            raise ConfigError(f"mosaic source images must be uint8 [n, S, S, 3], got {images.dtype} "
                              f"{list(images.shape)}")
        if labels.shape != (len(images),):
            raise ConfigError(f"{len(images)} images but labels of shape {list(labels.shape)}")
        missing = sorted(set(ANIMALS + VEHICLES) - set(classes))
        if missing:
            raise ConfigError(f"mosaic questions need the CIFAR-10 classes; {missing} missing from {classes}")
        self.images, self.labels, self.classes = images, labels, classes
        self.index = {name: i for i, name in enumerate(classes)}
        self.members = {self.index[name]: np.flatnonzero(labels == self.index[name]) for name in ANIMALS + VEHICLES}
        short = [self.classes[c] for c, m in self.members.items() if len(m) < MAX_COUNT]
        if short:
            raise ConfigError(f"classes {short} have fewer than {MAX_COUNT} images; a mosaic may need that many")


def _random_picker(split: _Split) -> Picker:
    """Distinct images of the class, uniformly at random (a training stream)."""
    return lambda rng, c, k: rng.choice(split.members[c], size=k, replace=False)


def _cycling_picker(split: _Split, rng: np.random.Generator) -> Picker:
    """Images of the class in a random order, each used once before any is used again (an evaluation set
    covers the split evenly); the images of one call are distinct."""
    order = {c: rng.permutation(m) for c, m in split.members.items()}
    position = dict.fromkeys(order, 0)

    def pick(rng: np.random.Generator, c: int, k: int) -> np.ndarray:
        taken = list(order[c][position[c] : position[c] + k])
        position[c] += len(taken)
        if len(taken) < k:  # a new round; the ones just taken go last in it, never twice in one mosaic
            rest = np.setdiff1d(split.members[c], taken)
            order[c] = np.concatenate([rng.permutation(rest), np.asarray(taken, dtype=rest.dtype)])
            position[c] = k - len(taken)
            taken += list(order[c][: position[c]])
        return np.asarray(taken, dtype=np.int64)

    return pick


def _plan(kinds: Sequence[str], rng: np.random.Generator) -> list[dict]:
    """Per question, its kind, text, answer and the four cell class names, answers balanced per kind."""
    by_kind = {kind: [i for i, k in enumerate(kinds) if k == kind] for kind in KINDS}
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ConfigError(f"unknown question kinds {sorted(unknown)}; the kinds are {list(KINDS)}")
    names = ANIMALS + VEHICLES
    plans: list[dict] = [{} for _ in kinds]
    # position: the quadrant asked and the class there, each balanced
    indices = by_kind["position"]
    for i, where, name in zip(indices, balanced(rng, len(indices), range(4)), balanced(rng, len(indices), names)):
        plans[i] = {"quadrant": where, "name": name}
    # presence: yes / no balanced; the class asked balanced within each
    indices = by_kind["presence"]
    answers = balanced(rng, len(indices), (YES, NO))
    asked = {a: iter(balanced(rng, answers.count(a), names)) for a in (YES, NO)}
    for i, answer in zip(indices, answers):
        plans[i] = {"answer": answer, "name": next(asked[answer])}
    # count: the number of animal cells balanced over 0..4
    indices = by_kind["count"]
    for i, count in zip(indices, balanced(rng, len(indices), range(MAX_COUNT + 1))):
        plans[i] = {"count": count}
    for kind, plan in zip(kinds, plans):
        if kind == "position":
            cells = [names[j] for j in rng.integers(0, len(names), size=4)]
            cells[plan["quadrant"]] = plan["name"]
            plan.update(text=QUESTIONS[kind].format(quadrant=QUADRANTS[plan["quadrant"]]), answer=plan["name"])
        elif kind == "presence":
            name = plan["name"]
            if plan["answer"] == YES:
                cells = [names[j] for j in rng.integers(0, len(names), size=4)]
                cells[int(rng.integers(0, 4))] = name
            else:
                others = [n for n in names if n != name]
                cells = [others[j] for j in rng.integers(0, len(others), size=4)]
            plan.update(text=QUESTIONS[kind].format(article=article(name), name=name))
        else:
            animal = np.zeros(4, dtype=bool)
            animal[rng.choice(4, size=plan["count"], replace=False)] = True
            cells = [ANIMALS[rng.integers(0, len(ANIMALS))] if a else VEHICLES[rng.integers(0, len(VEHICLES))]
                     for a in animal]
            plan.update(text=QUESTIONS[kind], answer=str(plan["count"]))
        plan.update(kind=kind, cell_classes=cells)
    return plans


def _generate(split: _Split, kinds: Sequence[str], rng: np.random.Generator, pick: Picker):
    """Mosaics uint8 [n, 2S, 2S, 3] and their question dicts (without question_id / image)."""
    plans = _plan(kinds, rng)
    size = split.images.shape[1]
    mosaics = np.empty((len(plans), 2 * size, 2 * size, 3), dtype=np.uint8)
    questions = []
    for i, plan in enumerate(plans):
        cells = np.empty(4, dtype=np.int64)
        for name in dict.fromkeys(plan["cell_classes"]):  # each class once: its images distinct in the mosaic
            where = [q for q, n in enumerate(plan["cell_classes"]) if n == name]
            cells[where] = pick(rng, split.index[name], len(where))
        mosaics[i] = mosaic(split.images[cells])
        questions.append({"text": plan["text"], "answer": plan["answer"], "kind": plan["kind"],
                          "cells": [int(c) for c in cells], "cell_classes": list(plan["cell_classes"])})
    return mosaics, questions


def image_name(index: int, total: int) -> str:
    return f"mosaic_{index:0{max(5, len(str(max(total - 1, 0))))}d}.png"


def build_set(images: np.ndarray, labels: np.ndarray, classes: Sequence[str], n_questions: int = DEFAULT_QUESTIONS,
              seed: int = DEFAULT_SEED) -> tuple[np.ndarray, list[dict]]:
    """An evaluation set from one split: mosaics uint8 [n, 2S, 2S, 3] and one question dict per mosaic
    (question_id 0.., image "mosaic_00000.png", text, answer, kind, cells: the four source indices
    top left .. bottom right, cell_classes: their class names), kinds in the rotation of `KINDS`."""
    if isinstance(n_questions, bool) or not isinstance(n_questions, (int, np.integer)) or n_questions < 1:
        raise ConfigError(f"n_questions={n_questions!r} must be a positive integer")
    split = _Split(images, labels, classes)
    rng = np.random.default_rng(seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(n_questions)]
    mosaics, questions = _generate(split, kinds, rng, _cycling_picker(split, rng))
    for i, question in enumerate(questions):
        question.update(question_id=i, image=image_name(i, n_questions))
    keys = ("question_id", "image", "text", "answer", "kind", "cells", "cell_classes")
    return mosaics, [{key: q[key] for key in keys} for q in questions]


def summary(questions: Sequence[dict]) -> dict:
    """Questions per kind and, per kind, how often each answer occurs (answers sorted)."""
    kinds = Counter(q["kind"] for q in questions)
    answers = {kind: dict(sorted(Counter(q["answer"] for q in questions if q["kind"] == kind).items()))
               for kind in kinds}
    return {"kinds": dict(kinds), "answers": answers}


def write_set(out_dir: str | Path, mosaics: np.ndarray, questions: Sequence[dict], manifest: dict | None = None,
              replace: bool = True) -> Path:
    """The set as `out_dir/images/<image>` (PNG) and `out_dir/questions.jsonl` (image paths relative to
    `out_dir`), plus `set.json` (the per-kind counts and `manifest`). It is written into a temporary folder
    beside `out_dir` and renamed into place: readers see a whole set or none. An existing set (a folder with
    set.json) is replaced (`replace`) or kept as it is; any other non-empty folder is refused."""
    out_dir = Path(os.path.abspath(Path(out_dir).expanduser()))
    if len(mosaics) != len(questions):
        raise ConfigError(f"{len(mosaics)} mosaics but {len(questions)} questions")
    if out_dir.exists() and not _replaceable(out_dir):
        raise ConfigError(f"{out_dir} exists and is not a mosaic VQA set (no {MANIFEST}); give a new or empty folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the set the usual permissions
        (tmp / IMAGE_DIR).mkdir()
        lines = []
        for image, question in zip(mosaics, questions):
            name = Path(question["image"]).name
            Image.fromarray(np.asarray(image, dtype=np.uint8), mode="RGB").save(tmp / IMAGE_DIR / name, format="PNG")
            lines.append(json.dumps({**question, "image": f"{IMAGE_DIR}/{name}"}) + "\n")
        (tmp / QUESTION_FILE).write_text("".join(lines), encoding="utf-8")
        info = {"format": FORMAT_VERSION, "n_questions": len(questions), "chance": CHANCE, **summary(questions),
                **(manifest or {})}
        (tmp / MANIFEST).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        _publish(tmp, out_dir, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _replaceable(path: Path) -> bool:
    return path.is_dir() and ((path / MANIFEST).is_file() or not any(path.iterdir()))


def _publish(tmp: Path, out_dir: Path, replace: bool) -> None:
    """Rename the finished set `tmp` to `out_dir` (a missing or empty folder, or an older set)."""
    try:
        os.rename(tmp, out_dir)  # onto a missing or empty folder
        return
    except OSError:
        if not _replaceable(out_dir):
            raise ConfigError(f"{out_dir} exists and is not a mosaic VQA set (no {MANIFEST}); give a new or empty "
                              "folder") from None
    if not replace:  # a job running beside this one wrote it first
        shutil.rmtree(tmp, ignore_errors=True)
        return
    aside = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
    os.rename(out_dir, aside / "set")
    os.rename(tmp, out_dir)
    shutil.rmtree(aside, ignore_errors=True)


def default_cache_dir() -> Path:
    """The project's cache (conf/paths: $VLM_EFF_CACHE, else ~/.cache/vlm-eff)."""
    return Path(os.environ.get("VLM_EFF_CACHE") or Path.home() / ".cache" / "vlm-eff")


def source_stamp(source: Path) -> str:
    """Identifies the dataset: an archive by its path, size and modification time, a folder by its path."""
    source = source.resolve()
    stat = source.stat()
    key = f"{source}:{stat.st_size}:{stat.st_mtime_ns}" if source.is_file() else str(source)
    return hashlib.sha1(key.encode()).hexdigest()[:10]


def ensure_test_set(archive: str | Path, cache_dir: str | Path | None = None, n_questions: int = DEFAULT_QUESTIONS,
                    seed: int = DEFAULT_SEED, split: str = "test") -> Path:
    """The mosaic set of the CIFAR-10 `split` (the test split) at `archive` (a .tar.gz or a folder,
    as `load_split` reads it), built once into `cache_dir/cifar10_vqa/`, keyed by the dataset, the number
    of questions, the seed and `FORMAT_VERSION`; returns its folder (`data.root`; `data.questions` is its
    questions.jsonl)."""
    from vlm_eff.data.cifar10 import load_split

    archive = Path(archive).expanduser()
    if not archive.exists():
        raise ConfigError(f"CIFAR-10 archive {archive} does not exist; give the .tar.gz or the extracted folder")
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    name = f"{split}-{n_questions}q-seed{seed}-v{FORMAT_VERSION}-{source_stamp(archive)}"
    target = cache_dir / "cifar10_vqa" / name
    if (target / MANIFEST).is_file():
        return target
    log.info("building %d mosaic questions from CIFAR-10 %s into %s", n_questions, split, target)
    images, labels, classes = load_split(archive, split, cache_dir)
    mosaics, questions = build_set(images, labels, classes, n_questions, seed)
    manifest = {"source": str(archive.resolve()), "split": split, "seed": seed}
    return write_set(target, mosaics, questions, manifest, replace=False)


class TrainingMosaics(torch.utils.data.IterableDataset):
    """Training examples from a split that is not evaluated on (the CIFAR-10 *train* split): mosaics with
    a question each, drawn like `build_set`'s (answers balanced per kind within each draw) but from
    independent random images. `sample(n, generator)` gives a batch; iterating gives an endless seeded
    stream of (mosaic uint8 [2S, 2S, 3], question text, answer, kind, the four cells' class indices int64 [4]),
    each DataLoader worker its own.
    `mix` gives each kind's relative frequency (integers; default 1 each)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str], seed: int = 0,
                 chunk: int = 300, mix: dict[str, int] | None = None):
        super().__init__()
        self.split = _Split(images, labels, classes)
        self.seed, self.chunk = seed, chunk
        self.generator = np.random.default_rng(seed)
        self.kinds = self._drawn(dict.fromkeys(KINDS, 1) if mix is None else dict(mix))

    @staticmethod
    def _drawn(mix: dict[str, int]) -> tuple[str, ...]:
        """The kinds one draw cycles through, each as often as its share: (position, presence, presence, count)."""
        check_mix(mix)
        return tuple(kind for kind in KINDS for _ in range(mix[kind]))

    def with_mix(self, mix: dict[str, int]) -> TrainingMosaics:
        """The same stream (split, seed) with another `mix`."""
        stream = copy.copy(self)
        stream.generator = np.random.default_rng(self.seed)
        stream.kinds = self._drawn(dict(mix))
        return stream

    def sample(self, n: int, generator: np.random.Generator | None = None) -> tuple[np.ndarray, list[dict]]:
        """`n` mosaics uint8 [n, 2S, 2S, 3] and their questions (text, answer, kind, cells, cell_classes),
        kinds in the proportions of `mix` (within one per share) in random order; drawn from `generator`
        (default: this dataset's own, seeded from `seed`)."""
        rng = self.generator if generator is None else generator
        kinds = balanced(rng, n, self.kinds)
        return _generate(self.split, kinds, rng, _random_picker(self.split))

    def __iter__(self) -> Iterator[tuple[np.ndarray, str, str, str, np.ndarray]]:
        worker = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, worker.id if worker else 0])
        while True:
            mosaics, questions = self.sample(self.chunk, rng)
            for image, question in zip(mosaics, questions):
                cells = np.array([self.split.index[c] for c in question["cell_classes"]])  # [4]
                yield image, question["text"], question["answer"], question["kind"], cells
