"""What every benchmark shares: a question, the benchmark interface, questions streamed from disk, and
answers matched to questions.

A benchmark reads the files researchers already have, in LLaVA-1.5's evaluation layout (`data.root` is
`playground/data/eval/<bench>/`, the same file names), and scores answers as its official script does.
Its questions are one record a line of a text file (LLaVA's question JSONL, MMBench's TSV, or a JSONL
written once into the cache from a JSON list): one pass indexes where each record starts (and checks
it, images included), later reads parse a record when it is asked for, so memory does not grow with
the number of questions. Question ids may repeat (MME, TextVQA): every record is a question, known by
its position (`Question.index`).
"""

from __future__ import annotations

import hashlib
import io
import json
import operator
import os
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError

from vlm_eff.atomic import write_atomic
from vlm_eff.errors import ConfigError
from vlm_eff.progress import Progress

SHORT_ANSWER = "Answer the question using a single word or phrase."  # LLaVA-1.5's short-answer suffix
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."  # its multiple-choice suffix
ANSWER_FORMATS = (SHORT_ANSWER, LETTER_ANSWER, "请直接回答选项字母。")  # answer-format lines, not the instruction


@dataclass(frozen=True)
class Question:
    """One question as the model is asked it and as the answer file records it."""

    index: int  # position in the benchmark's question order: what resuming and data parallelism key on
    question_id: int | str  # as the file gives it (may repeat: MME, TextVQA)
    text: str  # what the model is asked, the benchmark's answer-format suffix included
    image: Path | bytes  # the image file, or its encoded bytes (MMBench's base64 column)
    prompt: str  # the answer record's `prompt`, as LLaVA's script for the benchmark writes it
    answer: str | tuple[str, ...] | None = None  # a reference the question file carries (data=vqa)
    kind: str | None = None  # a category the score is also broken down by
    record: dict = field(default_factory=dict)  # further answer-record keys (MMBench: round_id, options, ...)

    @property
    def instruction(self) -> str:
        """The question without LLaVA's answer-format lines (what instruction-conditioned reductions read)."""
        text = self.text
        for line in ANSWER_FORMATS:
            text = text.replace("\n" + line, "")
        return text

    def load_image(self) -> Image.Image:
        """The image as RGB; an unreadable one is a one-line error naming the question."""
        try:
            with Image.open(io.BytesIO(self.image) if isinstance(self.image, bytes) else self.image) as image:
                return image.convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            where = "its image bytes" if isinstance(self.image, bytes) else str(self.image)
            raise ConfigError(f"question {self.index} (question_id={self.question_id!r}): cannot read {where}: "
                              f"{error}") from None


def answer_id(question_id, text: str) -> str:
    """LLaVA's answer_id is a random shortuuid; this one is the first 22 hex digits of SHA-1 of
    [question_id, text] as JSON, so that reruns compare."""
    return hashlib.sha1(json.dumps([question_id, text]).encode()).hexdigest()[:22]


class Benchmark:
    """One benchmark: where its files are, how a question record reads, and its official score. Subclasses set
    `name`, `FILES` (data config key -> what the file is, named in errors) and, where the file names depend on
    `data.split`, `SPLITS` (split -> data config key -> LLaVA's file name, which `data.<key>` overrides); they
    override `parse` and `score` (and `submission` for splits scored by a server)."""

    name = ""
    FILES: dict[str, str] = {}
    SPLITS: dict[str, dict[str, str]] = {}
    question_key = "questions"  # the data key of the file the questions stream from
    REQUIRED = ("question_id", "image", "text")  # the keys every question line has

    def __init__(self, data: DictConfig, cache_dir: Path | None = None):
        self.data = data
        if not data.get("root"):
            raise ConfigError(f"data={self.name} needs data.root=<the benchmark's folder (LLaVA's layout: "
                              f"playground/data/eval/{self.folder()})>")
        self.root = Path(os.path.abspath(Path(str(data.root)).expanduser()))
        if not self.root.is_dir():
            raise ConfigError(f"data.root={data.root} is not a folder; set it to the {self.name} folder (LLaVA's "
                              f"layout: playground/data/eval/{self.folder()}), or paths.eval_dir=<LLaVA's "
                              "playground/data/eval> for every benchmark")
        self.cache_dir = Path(cache_dir or data.get("cache_dir") or Path.home() / ".cache" / "vlm-eff")
        self.split = data.get("split")
        if self.SPLITS and self.split not in self.SPLITS:
            raise ConfigError(f"data.split={self.split!r} is unknown for data={self.name}; allowed: "
                              f"{', '.join(self.SPLITS)}")
        for key, what in self.FILES.items():  # every file the layout needs, before anything runs
            if not self.SPLITS or self.data.get(key) or key in self.SPLITS[self.split]:
                self.path(key, what)
        self.images_dir = self.path("images") if "images" in self.FILES else self.root  # image paths start here
        self._index: QuestionIndex | None = None

    @classmethod
    def folder(cls) -> str:
        return cls.name

    def path(self, key: str, what: str | None = None) -> Path:
        """The file (or folder) `data.<key>` names (else the split's), relative to data.root; missing: a one-line
        error naming it."""
        value = self.data.get(key) or self.SPLITS.get(self.split, {}).get(key)
        path = self.root / str(value)
        if not value or not path.exists():
            what = what or self.FILES.get(key, key)
            raise ConfigError(f"data={self.name}: no {value} in data.root={self.root} ({what}; LLaVA's layout puts it "
                              f"there; data.{key}=... names another)")
        return path

    # -- questions ------------------------------------------------------------------------------------------------
    def question_file(self) -> Path:
        """The text file the questions stream from, one record a line (a JSON source converts once into the cache)."""
        return self.path(self.question_key)

    def header(self, first_line: str) -> None:
        """Read the file's header line (TSV); JSONL files have none."""

    has_header = False
    multiline_records = False  # records may span lines inside quoted fields (TSV)

    def parse(self, line: str, index: int, where: str) -> Question | None:
        """The question of one record (None: the benchmark does not ask it, e.g. SEED-Bench's video questions);
        `where` names the file and line in errors. Here: a line of LLaVA's question JSONL (question_id, image under
        `images_dir`, text asked and recorded as it is, category as the kind)."""
        item = json_line(line, where)
        require(item, self.REQUIRED, where)
        qid = question_id(item["question_id"], where)
        category = item.get("category")
        return Question(index, qid, item["text"], self.images_dir / item["image"], item["text"],
                        kind=None if category is None else str(category))

    def record_id(self, line: str):
        """The question_id of a record `parse` leaves out (answers to it, as LLaVA's own files have, are skipped)."""
        return json.loads(line)["question_id"]

    @property
    def questions(self) -> QuestionIndex:
        """The questions, indexed once (every record read and checked), each parsed again when asked for."""
        if self._index is None:
            self._index = QuestionIndex(self)
        return self._index

    # -- answers ----------------------------------------------------------------------------------------------------
    def record(self, question: Question, text: str, model_id: str, visual_tokens: int) -> dict:
        """The answer file's line in LLaVA's format (its script for this benchmark), plus visual_tokens."""
        return {"question_id": question.question_id, "prompt": question.prompt, "text": text,
                **question.record, "answer_id": answer_id(question.question_id, text), "model_id": model_id,
                "metadata": {}, "visual_tokens": operator.index(visual_tokens)}  # a count (numpy / torch ints too)

    def score(self, pairs: list[tuple[Question, dict]]) -> dict:
        """The official metrics of the answered questions (each with its answer record): `score` (the number
        papers print; None where the split has no ground truth) and the details."""
        raise NotImplementedError

    def submission(self, pairs: list[tuple[Question, dict]], out_dir: Path) -> Path | None:
        """The file an evaluation server takes, where the split is scored by one (None elsewhere)."""
        return None


class QuestionIndex:
    """Where each question record starts in the benchmark's question file, found in one pass that also checks
    every record (and that its image exists); `[i]` reads and parses record i again. Only the offsets
    stay in memory."""

    def __init__(self, benchmark: Benchmark):
        self.benchmark, self.file = benchmark, benchmark.question_file()
        self.offsets = array("q")
        self.ids: Counter = Counter()  # question_id (as str) -> how many questions carry it
        self.not_asked: set[str] = set()  # ids of records the benchmark does not ask (their answers are not scored)
        for offset, line, number in self._records():
            question = benchmark.parse(line, len(self.offsets), f"{self.file} line {number}")
            if question is None:
                self.not_asked.add(str(benchmark.record_id(line)))
                continue
            if isinstance(question.image, Path) and not question.image.is_file():
                raise ConfigError(f"{self.file} line {number}: question_id={question.question_id!r} names image "
                                  f"{question.image}, which is not a file under data.root={benchmark.root}")
            self.offsets.append(offset)
            self.ids[str(question.question_id)] += 1
        if not self.offsets:
            raise ConfigError(f"{self.file} holds no question of data={benchmark.name}")

    def _records(self) -> Iterator[tuple[int, str, int]]:
        """(byte offset, text, first line number) of every record, the header and blank lines skipped."""
        with open(self.file, "rb") as f:
            number, offset, pending, start, quotes = 0, 0, b"", 0, 0
            for raw in f:
                number += 1
                if not pending:
                    start, first = offset, number
                offset += len(raw)
                pending += raw
                quotes += raw.count(b'"')
                if self.benchmark.multiline_records and quotes % 2:
                    continue  # inside a quoted field: the record goes on on the next line
                record, pending, quotes = pending, b"", 0
                text = _decode(record, self.file, first).rstrip("\r\n")
                if first == 1 and self.benchmark.has_header:
                    self.benchmark.header(text)
                elif text.strip():
                    yield start, text, first

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> Question:
        with open(self.file, "rb") as f:
            f.seek(self.offsets[index])
            raw = f.readline()
            if self.benchmark.multiline_records:
                while raw.count(b'"') % 2:
                    raw += f.readline()
        return self.benchmark.parse(_decode(raw, self.file, None).rstrip("\r\n"), index, f"{self.file} record {index}")

    def __iter__(self) -> Iterator[Question]:
        return (self[i] for i in range(len(self)))


def _decode(raw: bytes, file: Path, line: int | None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{file}" + (f" line {line}" if line else "") + f" is not UTF-8 text ({error.reason})") from None


def json_line(line: str, where: str) -> dict:
    """One JSONL record as a dict; anything else is a one-line error naming the line."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{where} is not valid JSON ({error.msg} at column {error.colno}); each line must be one "
                          "JSON object") from None
    if not isinstance(item, dict):
        raise ConfigError(f"{where} is a JSON {type(item).__name__}, not an object")
    return item


def require(item: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys if key not in item]
    if missing:
        raise ConfigError(f"{where} has no {', '.join(missing)}; each record needs {', '.join(keys)}")


def question_id(value, where: str):
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise ConfigError(f"{where}: question_id={value!r} must be an integer or a non-empty string")
    return value


def converted(source: Path, cache_dir: Path, name: str, lines) -> Path:
    """A JSONL of `lines(source)` (an iterable of dicts) written once into the cache, keyed by the source's
    path, size and modification time: JSON sources (lists in one document) stream like JSONL ones."""
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{lines.__name__}".encode()).hexdigest()[:12]
    path = cache_dir / "benchmarks" / f"{name}-{key}.jsonl"
    if not path.is_file():
        write_atomic(path, "".join(json.dumps(item) + "\n" for item in lines(source)))
    return path


def read_json(path: Path, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} ({what}) is not valid JSON: {error}") from None


# -- answers matched to questions ---------------------------------------------------------------------------------
def read_answer_records(path: Path) -> list[dict]:
    """An answers JSONL (LLaVA's answer format: question_id, prompt, text, ...) in file order; a line that is no
    JSON object with question_id and text is a one-line error naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"answers={path} does not exist; give an answers JSONL in LLaVA's answer format")
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{path} line {number} is not valid JSON ({error.msg} at column {error.colno})") \
                    from None
            if not (isinstance(record, dict) and isinstance(record.get("question_id"), (int, str))
                    and isinstance(record.get("text"), str)):
                raise ConfigError(f"{path} line {number} is not an answer record (a JSON object with question_id "
                                  "and text)")
            records.append(record)
    return records


def match(questions: QuestionIndex, records: list[dict], where: str,
          progress: Progress | None = None) -> tuple[list[tuple[Question, dict]], int]:
    """Each answer record paired with its question -> (pairs in question order, questions left unanswered).
    Records match questions by question_id, the k-th record of an id the k-th question of it (ids repeat in
    MME and TextVQA; LLaVA's answer files keep the question order). Answers to questions the benchmark's file
    has but its score leaves out are skipped; an id the file does not have, or more answers to an id than it
    has questions, is a one-line error."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    for number, record in enumerate(records, start=1):
        key = str(record["question_id"])
        if key in questions.not_asked and key not in questions.ids:
            continue  # a question the score leaves out (ScienceQA's text-only, SEED-Bench's video questions)
        if key not in questions.ids:
            raise ConfigError(f"{where}: answer {number} has question_id={record['question_id']!r}, which "
                              f"data={questions.benchmark.name} does not ask")
        by_id[key].append(record)
        if len(by_id[key]) > questions.ids[key]:
            raise ConfigError(f"{where}: question_id={record['question_id']!r} is answered {len(by_id[key])} times "
                              f"(answer {number}); the benchmark asks it {questions.ids[key]} time(s)")
    taken: Counter = Counter()
    pairs, missing = [], 0
    for question in questions:
        if progress is not None:
            progress.update(1)
        key = str(question.question_id)
        answers = by_id.get(key, [])
        if taken[key] < len(answers):
            pairs.append((question, answers[taken[key]]))
        else:
            missing += 1
        taken[key] += 1
    return pairs, missing
