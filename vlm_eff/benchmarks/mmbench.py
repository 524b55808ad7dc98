"""MMBench (Liu et al., 2023), as LLaVA-1.5 runs it (scripts/v1_5/eval/mmbench.sh: llava/eval/model_vqa_mmbench.py
--single-pred-prompt) and MMBench scores it: circular evaluation with its rule-based answer matching.

Layout (`data.root` = playground/data/eval/mmbench): the TSV (`mmbench_dev_20230712.tsv`: index, question, hint,
A-D, answer, category, base64 image, ...; `data.questions` names another, e.g. a test TSV). The TSV carries each
question's circular copies (the options rotated, the answer letter with them) as rows of index + k x 1,000,000.
The question as LLaVA's script builds it: the hint (if any) and the question, then "A. <option>" a line for the
options up to the first empty one, then "\\nAnswer with the option's letter from the given choices directly."
(`data.lang=cn`: MMBench-CN's suffix); the answer record keeps round_id, options and option_char.

Matching an answer to an option (MMBench's rule-based step, without its GPT fallback, which counts such an
answer wrong): with .()[],:;!*# {} as spaces, exactly one option letter among its words and that letter among
the last four words; else "answer is X"; else exactly one option's text inside a short answer. A question is
right only if all its circular copies are (score = circular accuracy x 100; `vanilla` = per row).
Splits without answers (test) give the submission file LLaVA's converter writes (an .xlsx).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import re
from collections import defaultdict
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vlm_eff.benchmarks.base import LETTER_ANSWER, Benchmark, Question
from vlm_eff.errors import ConfigError

csv.field_size_limit(2**31 - 1)  # a base64 image is one field, often past csv's 128 KiB default
LETTERS = ("A", "B", "C", "D")
SUFFIX = {"en": LETTER_ANSWER, "cn": "请直接回答选项字母。"}
CIRCULAR = 1_000_000  # a circular copy's index: the question's + k x CIRCULAR
# What pandas (LLaVA's reader) reads as a missing value, and the strings LLaVA's is_none adds.
MISSING = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
           "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
VERBOSE = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
SPACED = ".()[],:;!*#{}"
REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")
DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")  # not in the submission file


def missing(value: str | None) -> bool:
    return value is None or value in MISSING or value.lower() in ("nan", "none")


def option_letter(answer: str, choices: dict[str, str]) -> str | None:
    """The option an answer names by its letter ('Z': a refusal), or None."""
    if any(refusal in answer for refusal in REFUSALS):
        return "Z"
    words = answer
    for mark in SPACED:
        words = words.replace(mark, " ")
    words = words.split()
    named = [letter for letter in choices if letter in words]
    if len(named) == 1 and words.index(named[0]) > len(words) - 5:
        return named[0]
    if not named and "Z" in words:
        return "Z"
    verbose = VERBOSE.search(answer)
    return verbose.group(1).upper() if verbose and verbose.group(1).upper() in choices else None


def option_text(answer: str, choices: dict[str, str]) -> str | None:
    """The one option whose text a short answer contains, or None."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(text) for text in choices.values()):
        return None
    named = [letter for letter, text in choices.items() if text.lower() in answer]
    return named[0] if len(named) == 1 else None


def matched_option(answer: str, choices: dict[str, str]) -> str | None:
    return option_letter(answer, choices) or option_text(answer, choices)


class MMBench(Benchmark):
    name = "mmbench"
    FILES = {"questions": "MMBench's TSV"}
    has_header = multiline_records = True
    columns: list[str] = []

    def header(self, first_line: str) -> None:
        self.columns = next(csv.reader([first_line], delimiter="\t"))
        needed = [c for c in ("index", "question", "A", "B", "image") if c not in self.columns]
        if needed:
            raise ConfigError(f"{self.path('questions')} has no {', '.join(needed)} column(s); MMBench's TSV has index, "
                              "question, hint, A-D, answer, image (base64), ...")

    def row(self, line: str, where: str) -> dict[str, str]:
        values = next(csv.reader([line], delimiter="\t"))
        if len(values) != len(self.columns):
            raise ConfigError(f"{where} has {len(values)} fields for the {len(self.columns)} columns of the header")
        return dict(zip(self.columns, values))

    def parse(self, line: str, index: int, where: str) -> Question:
        row = self.row(line, where)
        try:
            number = int(row["index"])
        except ValueError:
            raise ConfigError(f"{where}: index={row['index']!r} is not an integer") from None
        try:
            image = base64.b64decode(row["image"], validate=True)
            Image.open(io.BytesIO(image))  # the header, to tell an image from other bytes
        except (binascii.Error, ValueError, UnidentifiedImageError) as error:
            raise ConfigError(f"{where} (index {number}): its image column is not a base64-encoded image ({error})") \
                from None
        options = []
        for letter in LETTERS:
            if missing(row.get(letter)):
                break
            options.append(row[letter])
        question = row["question"]
        if not missing(row.get("hint")):
            question = row["hint"] + "\n" + question
        for letter, option in zip(LETTERS, options):
            question += "\n" + letter + ". " + option
        suffix = SUFFIX.get(self.data.get("lang", "en"))
        if suffix is None:
            raise ConfigError(f"data.lang={self.data.lang!r} is unknown; allowed: {', '.join(SUFFIX)}")
        answer = None if missing(row.get("answer")) else row["answer"]
        return Question(index, number, question + "\n" + suffix, image, question, answer, row.get("category"),
                        {"round_id": 0, "options": options, "option_char": list(LETTERS[:len(options)])})

    def score(self, pairs):
        scored = [(question, record) for question, record in pairs if question.answer is not None]
        if not scored:
            return {"score": None}
        groups, categories = defaultdict(list), {}
        for question, record in scored:
            choices = dict(zip(LETTERS, question.record["options"]))
            groups[question.question_id % CIRCULAR].append(matched_option(record["text"], choices) == question.answer)
            if question.question_id < CIRCULAR:
                categories[question.question_id] = question.kind
        right = {group: all(hits) for group, hits in groups.items()}
        by_category = defaultdict(list)
        for group, category in categories.items():
            by_category[category].append(right[group])
        return {"score": 100 * sum(right.values()) / len(right),
                "vanilla": 100 * sum(hit for hits in groups.values() for hit in hits) / len(scored),
                "n_circular_questions": len(right),
                **{f"circular_{category}": 100 * sum(v) / len(v) for category, v in sorted(by_category.items())}}

    def submission(self, pairs, out_dir: Path) -> Path | None:
        """LLaVA's converter's .xlsx (the TSV's columns but hint, category, source, image, comment, l2-category; the
        prediction inserted as the 7th column), for splits without answers."""
        if any(question.answer is not None for question, _ in pairs):
            return None
        from openpyxl import Workbook

        predictions = {question.index: record["text"] for question, record in pairs}
        columns = [c for c in self.columns if c not in DROPPED]
        columns.insert(6, "prediction")
        book = Workbook()
        sheet = book.active
        sheet.append(columns)
        with open(self.question_file(), encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t")
            for position, row in enumerate(reader):
                row["prediction"] = predictions.get(position)
                sheet.append([_cell(row[c]) if c != "prediction" else row[c] for c in columns])
        path = out_dir / f"{Path(self.data.questions).stem}_submission.xlsx"
        buffer = io.BytesIO()
        book.save(buffer)
        from vlm_eff.atomic import replace_atomically

        replace_atomically(path, lambda f: f.write(buffer.getvalue()))
        return path


def _cell(value: str):
    """A TSV value as pandas reads it into the converter's sheet: integers as numbers, missing values empty."""
    if missing(value):
        return None
    return int(value) if value.lstrip("-").isdigit() else value
