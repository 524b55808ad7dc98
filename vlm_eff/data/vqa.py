"""Visual question answering (`protocol=vqa data=vqa`): LLaVA's question and answer JSONL, and scoring.

Questions (`data.questions`, one JSON object per line, as LLaVA's `model_vqa_loader.py` reads them):
`question_id` (int or str), `image` (a path relative to `data.root`), `text` (the question), and
optionally `answer` (a string), `answers` (a list of acceptable strings, as VQAv2-style files carry)
and `kind` (a short name, e.g. `position`, `count`, that the accuracy is also broken down by).
Other keys are ignored. Answers (`answers.jsonl` in the run dir): LLaVA's answer format plus
`visual_tokens`.

Scoring is exact match after the official VQA answer normalisation (`normalize_answer`), on the whole
generated text, as LLaVA's VQAv2 submission converter does; with several acceptable answers any one
counts. This is not VQAv2's soft score over ten human answers (min(#matching / 3, 1)).
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vlm_eff.errors import ConfigError
from vlm_eff.results import write_atomic

ANSWER_KEYS = ("question_id", "prompt", "text", "answer_id", "model_id", "metadata", "visual_tokens")
KIND = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Question:
    """One question: `question_id` and `image` as the file gives them, `answer` None (no reference), a
    string, or a tuple of acceptable strings; `path` the image's absolute path; `kind` its category."""

    question_id: int | str
    image: str
    text: str
    answer: str | tuple[str, ...] | None
    path: Path
    kind: str | None = None


def read_questions(file: str | Path | None, root: str | Path | None) -> list[Question]:
    """The questions of LLaVA's question JSONL `file`, in file order (blank lines skipped), their images
    under the folder `root`. Anything wrong (file, line, key, type, missing image, repeated id) is a
    one-line ConfigError naming the file and line. Ids 3 and "3" count as the same id."""
    if not file or not Path(file).expanduser().is_file():
        raise ConfigError(f"data.questions={file} does not exist; give LLaVA's question JSONL (one JSON object a line: "
                          "question_id, image, text, optional answer)")
    if not root or not Path(root).expanduser().is_dir():
        raise ConfigError(f"data.root={root} does not exist or is not a folder; set it to the folder the questions' "
                          "image paths are relative to")
    file, root = Path(file).expanduser(), Path(os.path.abspath(Path(root).expanduser()))
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ConfigError(f"data.questions={file} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    questions, seen = [], {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"data.questions={file} line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{where} is not valid JSON ({error.msg} at column {error.colno}); each line must be "
                              "one JSON object") from None
        question = _question(item, where, root)
        key = str(question.question_id)
        if key in seen:
            raise ConfigError(f"{where}: question_id={question.question_id!r} repeats line {seen[key]}'s; "
                              "question ids must be unique")
        seen[key] = number
        questions.append(question)
    if not questions:
        raise ConfigError(f"data.questions={file} has no questions; give one JSON object a line")
    return questions


def _question(item, where: str, root: Path) -> Question:
    """One parsed line as a Question; `where` names the file and line in errors."""
    if not isinstance(item, dict):
        raise ConfigError(f"{where} is a JSON {type(item).__name__}, not an object with question_id, image, text")
    missing = [key for key in ("question_id", "image", "text") if key not in item]
    if missing:
        raise ConfigError(f"{where} has no {', '.join(missing)}; each question needs question_id, image and text")
    question_id, image, text = item["question_id"], item["image"], item["text"]
    if isinstance(question_id, bool) or not isinstance(question_id, (int, str)) or question_id == "":
        raise ConfigError(f"{where}: question_id={question_id!r} must be an integer or a non-empty string")
    for key in ("image", "text"):
        if not isinstance(item[key], str) or not item[key]:
            raise ConfigError(f"{where} (question_id={question_id!r}): {key}={item[key]!r} must be a non-empty string")
    answer = _answer(item, where, question_id)
    kind = item.get("kind")
    if kind is not None and not (isinstance(kind, str) and KIND.fullmatch(kind)):
        raise ConfigError(f"{where} (question_id={question_id!r}): kind={kind!r} must be a name of letters, digits, "
                          "'_' or '-' (or null)")
    path = Path(os.path.abspath(root / image))
    if not path.is_file():
        raise ConfigError(f"{where}: question_id={question_id!r} names image {image!r}, but {path} is not a file "
                          f"under data.root={root}")
    return Question(question_id, image, text, answer, path, kind)


def _answer(item: dict, where: str, question_id) -> str | tuple[str, ...] | None:
    """`answer` (a string or null) and `answers` (a list of strings) as one reference: None, a string, or
    (with `answers`) a tuple of acceptable strings, `answer` first when both are given, repeats dropped."""
    answer, answers = item.get("answer"), item.get("answers")
    if answer is not None and not isinstance(answer, str):
        raise ConfigError(f"{where} (question_id={question_id!r}): answer={answer!r} must be a string (or null); "
                          "several acceptable answers go in answers=[...]")
    if answers is None:
        return answer
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise ConfigError(f"{where} (question_id={question_id!r}): answers={answers!r} must be a non-empty list of "
                          "strings (or null)")
    return tuple(dict.fromkeys(([answer] if answer is not None else []) + answers))


# The official VQA answer processor (EvalAI's, which LLaVA's m4c_evaluator.py carries and its VQAv2
# submission converter applies): these characters only; ':', "'", '*', '#', '%', '&', '$' stay.
PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
PERIOD = re.compile(r"\.(?!\d)")  # a period not followed by a digit ("3.5" keeps its own)
NUMBERS = {word: str(n) for n, word in enumerate("zero one two three four five six seven eight nine ten".split())}
NUMBERS["none"] = "0"
ARTICLES = frozenset({"a", "an", "the"})
# Contractions the official table restores, written with their apostrophes; a spelling with one of the
# apostrophes left out maps back ("dont" -> "don't", "couldnt've" -> "couldn't've"). Its I-forms are
# left out: the table keys them capitalised, so after lowercasing they never apply.
CONTRACTED = """ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
    haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've
    mustn't must've needn't not've o'clock oughtn't shan't she'd've should've shouldn't shouldn't've
    somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've
    something'll that's there'd there'd've there're there's they'd they'd've they'll they're they've 'twas
    wasn't we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've
    who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd
    you'd've you'll you're you've""".split()
CONTRACTIONS = {form[:i] + form[i + 1 :]: form for form in CONTRACTED for i, c in enumerate(form) if c == "'"}


def normalize_answer(text: str) -> str:
    """`text` as the official VQA (EvalAI) answer processor normalises it, in its order:

    1. lowercase; ',' and '?' removed; "'s" split off as its own word ("man's" -> "man 's"); newlines
       and tabs as spaces;
    2. each of ; / [ ] " { } ( ) = + \\ _ - > < @ ` ! removed where the text has it next to a space
       anywhere, else replaced by a space ("black-and-white" -> "black and white");
    3. periods removed unless a digit follows ("cat." -> "cat", "3.5" stays);
    4. per word: number words zero..ten and "none" as digits, articles a / an / the dropped,
       contractions missing an apostrophe restored ("dont" -> "don't"); words joined by single spaces.

    The whole text counts (no cut at the first line or sentence), as in LLaVA's VQAv2 scoring; step 3
    also covers GQA's stripping of a trailing period."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    spaced = text
    for mark in PUNCTUATION:
        text = text.replace(mark, "" if f"{mark} " in spaced or f" {mark}" in spaced else " ")
    text = PERIOD.sub("", text)
    words = (NUMBERS.get(word, word) for word in text.split())
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def exact_match(prediction: str, answer: str | tuple[str, ...] | list[str]) -> bool:
    """Whether `prediction` equals `answer` (or any of several acceptable answers) after `normalize_answer`."""
    answers = (answer,) if isinstance(answer, str) else answer
    predicted = normalize_answer(prediction)
    return any(predicted == normalize_answer(a) for a in answers)


def vqa_accuracy(predictions: dict[int | str, str], questions: list[Question]) -> dict:
    """Exact-match accuracy over the questions with an answer: `vqa_acc` (a fraction in [0, 1]; None when
    no question has an answer), `vqa_acc_<kind>` for each kind among them (questions without a kind count
    only overall), and `n_answered`, how many questions were scored. A question missing from
    `predictions` (keyed by question_id) counts as wrong."""
    scored = [q for q in questions if q.answer is not None]
    correct = {q.question_id: exact_match(predictions.get(q.question_id, ""), q.answer) for q in scored}
    metrics = {"vqa_acc": sum(correct.values()) / len(scored) if scored else None, "n_answered": len(scored)}
    for kind in dict.fromkeys(q.kind for q in scored if q.kind is not None):
        hits = [correct[q.question_id] for q in scored if q.kind == kind]
        metrics[f"vqa_acc_{kind}"] = sum(hits) / len(hits)
    return metrics


def answer_record(question: Question, text: str, model_id: str, prompt: str, visual_tokens: int) -> dict:
    """One line of `answers.jsonl` in LLaVA's answer format: question_id, prompt (LLaVA writes the
    question's text there), text (the generated answer), answer_id, model_id, metadata ({}), plus
    visual_tokens (how many the LLM received). LLaVA's answer_id is a random shortuuid; this one is
    deterministic, the first 22 hex digits of SHA-1 of [question_id, text] as JSON, so reruns compare."""
    key = json.dumps([question.question_id, text]).encode()
    return {
        "question_id": question.question_id,
        "prompt": prompt,
        "text": text,
        "answer_id": hashlib.sha1(key).hexdigest()[:22],
        "model_id": model_id,
        "metadata": {},
        "visual_tokens": operator.index(visual_tokens),  # an int (a numpy / torch integer too), never a float
    }


def write_answers(path: str | Path, records: list[dict]) -> None:
    """`records` (pass them in question order) as JSONL at `path`, one object a line, written atomically."""
    write_atomic(Path(path), "".join(json.dumps(record) + "\n" for record in records))


def read_answers(path: str | Path) -> dict[int | str, dict]:
    """An answers JSONL as question_id -> its record, in file order (LLaVA's converters key it so too);
    blank lines skipped. A line that is no JSON object with question_id and text, or a repeated
    question_id, is a one-line ConfigError naming the line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"answers file {path} does not exist")
    answers: dict[int | str, dict] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} line {number} is not valid JSON ({error.msg} at column {error.colno})") from None
        if not (isinstance(record, dict) and isinstance(record.get("question_id"), (int, str)) and "text" in record):
            raise ConfigError(f"{path} line {number} is not an answer record (a JSON object with question_id, text)")
        if record["question_id"] in answers:
            raise ConfigError(f"{path} line {number}: question_id={record['question_id']!r} answered twice")
        answers[record["question_id"]] = record
    return answers
