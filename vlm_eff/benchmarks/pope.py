"""POPE (Li et al., 2023), as LLaVA-1.5 runs and scores it (scripts/v1_5/eval/pope.sh, llava/eval/eval_pope.py).

Layout (`data.root` = playground/data/eval/pope): `llava_pope_test.jsonl` (question_id, image, text with the
short-answer suffix, category), the COCO val2014 images under `val2014/`, and POPE's annotation files
`coco/coco_pope_<category>.json` (one JSON object a line with `label`). A question's label is the line of its
category's annotation file at the question's rank within the category (eval_pope.py pairs them in order).

Reading an answer (eval_pope.py): only its first sentence (up to the first '.'), commas removed, split at
spaces: "no" if a word is "No", "no" or "not", else "yes". Per category: accuracy, precision, recall, F1 and
the share of "yes"; score = the mean F1 over the categories x 100.
"""

from __future__ import annotations

from collections import Counter

from vlm_eff.benchmarks.base import Benchmark, json_line
from vlm_eff.errors import ConfigError

PREFIX, SUFFIX = "coco_pope_", ".json"


def says_yes(text: str) -> bool:
    """eval_pope.py's reading of an answer."""
    first = text.split(".")[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    return not ("No" in words or "not" in words or "no" in words)


def confusion(predictions: list[bool], labels: list[bool]) -> dict:
    """Accuracy, precision, recall, F1 and yes-ratio of yes/no predictions (yes = positive); 0 where undefined."""
    tp = sum(p and t for p, t in zip(predictions, labels))
    fp = sum(p and not t for p, t in zip(predictions, labels))
    tn = sum(not p and not t for p, t in zip(predictions, labels))
    fn = len(labels) - tp - fp - tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"acc": (tp + tn) / len(labels), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(predictions) / len(predictions), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


class POPE(Benchmark):
    name = "pope"
    FILES = {"questions": "LLaVA's POPE question file", "images": "the COCO val2014 images",
             "annotations": "POPE's coco_pope_<category>.json files"}
    REQUIRED = ("question_id", "image", "text", "category")

    def labels(self) -> dict[str, list[bool]]:
        """Each category's labels (True: yes), in its annotation file's order."""
        labels = {}
        for file in sorted(self.path("annotations").glob(f"{PREFIX}*{SUFFIX}")):
            with open(file, encoding="utf-8") as f:
                lines = [json_line(line, f"{file} line {n}") for n, line in enumerate(f, start=1) if line.strip()]
            missing = next((n for n, item in enumerate(lines, start=1) if "label" not in item), None)
            if missing:
                raise ConfigError(f"{file} line {missing} has no label; POPE's annotation lines carry label yes / no")
            labels[file.name[len(PREFIX):-len(SUFFIX)]] = [item["label"] != "no" for item in lines]
        return labels

    def score(self, pairs):
        labels, rank, counts = self.labels(), {}, Counter()
        for question in self.questions:  # each question's rank within its category
            rank[question.index] = counts[question.kind]
            counts[question.kind] += 1
        for category, n in counts.items():
            if category not in labels:
                raise ConfigError(f"data=pope: questions of category {category!r} but no {PREFIX}{category}{SUFFIX} in "
                                  f"{self.path('annotations')}")
            if len(labels[category]) < n:
                raise ConfigError(f"data=pope: {n} questions of category {category!r} but {len(labels[category])} "
                                  f"labels in {PREFIX}{category}{SUFFIX}")
        metrics, f1 = {}, []
        for category in sorted(counts):
            answered = [(question, record) for question, record in pairs if question.kind == category]
            if not answered:
                continue
            result = confusion([says_yes(record["text"]) for _, record in answered],
                               [labels[category][rank[question.index]] for question, _ in answered])
            metrics |= {f"{category}_{key}": value for key, value in result.items()}
            f1.append(result["f1"])
        return {"score": 100 * sum(f1) / len(f1) if f1 else None, **metrics}

