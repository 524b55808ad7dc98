"""Any question file in LLaVA's format (`data=vqa`), and the project's CIFAR-10 mosaics (`data=cifar10_vqa`).

Questions (`data.questions`, one JSON object a line, as LLaVA's `model_vqa_loader.py` reads them):
`question_id` (int or str), `image` (relative to `data.root`), `text` (asked as it is), and optionally
`answer` (a string), `answers` (a list of acceptable strings) and `kind` (a short name the accuracy is also
broken down by). Other keys are ignored. Score: exact match after the EvalAI answer processing, on the whole
generated text, any acceptable answer counting (`vqa_acc`, a fraction, per kind `vqa_acc_<kind>`;
`score` = 100 x vqa_acc); not VQAv2's soft score (data=vqav2).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vlm_eff.benchmarks.base import Benchmark, Question, json_line, question_id, require
from vlm_eff.benchmarks.processing import evalai
from vlm_eff.errors import ConfigError

KIND = re.compile(r"[A-Za-z0-9_-]+")


def exact_match(prediction: str, answer: str | tuple[str, ...] | list[str]) -> bool:
    """Whether `prediction` equals `answer` (or any of several acceptable answers) after `evalai`."""
    answers = (answer,) if isinstance(answer, str) else answer
    predicted = evalai(prediction)
    return any(predicted == evalai(a) for a in answers)


class VQA(Benchmark):
    name = "vqa"

    def question_file(self) -> Path:
        file = self.data.get("questions")
        if not file or not Path(str(file)).expanduser().is_file():
            raise ConfigError(f"data.questions={file} does not exist; give LLaVA's question JSONL (one JSON object a "
                              "line: question_id, image, text, optional answer)")
        return Path(str(file)).expanduser()

    def parse(self, line: str, index: int, where: str) -> Question:
        item = json_line(line, where)
        require(item, ("question_id", "image", "text"), where)
        qid = question_id(item["question_id"], where)
        for key in ("image", "text"):
            if not isinstance(item[key], str) or not item[key]:
                raise ConfigError(f"{where} (question_id={qid!r}): {key}={item[key]!r} must be a non-empty string")
        kind = item.get("kind")
        if kind is not None and not (isinstance(kind, str) and KIND.fullmatch(kind)):
            raise ConfigError(f"{where} (question_id={qid!r}): kind={kind!r} must be a name of letters, digits, "
                              "'_' or '-' (or null)")
        image = Path(os.path.abspath(self.root / item["image"]))
        return Question(index, qid, item["text"], image, item["text"], reference(item, where, qid), kind)

    def score(self, pairs):
        """Exact match over the answered questions that carry a reference (None when none does)."""
        scored = [(question, record) for question, record in pairs if question.answer is not None]
        right = [exact_match(record["text"], question.answer) for question, record in scored]
        accuracy = sum(right) / len(right) if right else None
        metrics = {"score": None if accuracy is None else 100 * accuracy, "vqa_acc": accuracy, "n_scored": len(right)}
        for kind in dict.fromkeys(question.kind for question, _ in scored if question.kind is not None):
            hits = [hit for (question, _), hit in zip(scored, right) if question.kind == kind]
            metrics[f"vqa_acc_{kind}"] = sum(hits) / len(hits)
        return metrics


def reference(item: dict, where: str, qid) -> str | tuple[str, ...] | None:
    """`answer` (a string or null) and `answers` (a list of strings) as one reference: None, a string, or (with
    `answers`) a tuple of acceptable strings, `answer` first when both are given, repeats dropped."""
    answer, answers = item.get("answer"), item.get("answers")
    if answer is not None and not isinstance(answer, str):
        raise ConfigError(f"{where} (question_id={qid!r}): answer={answer!r} must be a string (or null); several "
                          "acceptable answers go in answers=[...]")
    if answers is None:
        return answer
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise ConfigError(f"{where} (question_id={qid!r}): answers={answers!r} must be a non-empty list of strings "
                          "(or null)")
    return tuple(dict.fromkeys(([answer] if answer is not None else []) + answers))


class CifarVQA(VQA):
    """The mosaic test set, built once into the cache from the CIFAR-10 test split at data.root (the archive or
    folder), unless data.questions names a question file of its own (its images under data.root)."""

    name = "cifar10_vqa"

    def __init__(self, data, cache_dir=None):
        if data.get("questions"):
            super().__init__(data, cache_dir)
            return
        from omegaconf import OmegaConf

        from vlm_eff.data.cifar10_vqa import QUESTION_FILE, ensure_test_set

        if not data.get("root"):
            raise ConfigError("data=cifar10_vqa needs data.root=<the CIFAR-10 archive or folder> to build its test set")
        folder = ensure_test_set(data.root, cache_dir or data.get("cache_dir"), data.n_questions, data.set_seed)
        super().__init__(OmegaConf.merge(data, {"root": str(folder), "questions": str(folder / QUESTION_FILE)}),
                         cache_dir)
