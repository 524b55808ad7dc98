"""MME (Fu et al., 2023), as LLaVA-1.5 runs it (scripts/v1_5/eval/mme.sh) and MME's calculation tool scores it
after LLaVA's converter (convert_answer_to_mme.py, eval_tool/calculation.py).

Layout (`data.root` = playground/data/eval/MME): `llava_mme.jsonl` (question_id = "<subtask>/<image file>", the
image's two questions on consecutive lines with the same id, text with the short-answer suffix, category) and
the official release `MME_Benchmark_release_version/`, which holds the images and the ground truth: per subtask
folder, `<image>.txt` files of "question<TAB>Yes|No" lines (beside the images, or under questions_answers_YN/
where the images are under images/).

The converter finds an answer's ground truth by (subtask, image, question): the answer's prompt without the
short-answer suffix, with " Please answer yes or no." appended where missing (two spaces where the release
has two). The tool reads a lower-cased answer as "yes" or "no" when it is exactly that, else by its first four
characters ("yes" in them first, then "no"), else "other" (always wrong). Per subtask: acc (share of questions
right) and acc+ (share of images with both questions right); its score is (acc + acc+) x 100.
score = perception (the sum over the 10 perception subtasks, at most 2000), `cognition` beside it (4 subtasks).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from vlm_eff.benchmarks.base import SHORT_ANSWER, Benchmark, Question
from vlm_eff.errors import ConfigError

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
YES_OR_NO = "Please answer yes or no."


def reading(answer: str) -> str:
    """The calculation tool's reading of an answer: "yes", "no" or "other"."""
    answer = answer.lower()
    if answer in ("yes", "no"):
        return answer
    return "yes" if "yes" in answer[:4] else "no" if "no" in answer[:4] else "other"


def ground_truth(release: Path) -> dict[tuple[str, str, str], str]:
    """(subtask, "<image>.txt", question) -> "yes" / "no", from the release folder."""
    truth = {}
    for folder in sorted(p for p in release.iterdir() if p.is_dir()):
        answers = folder / "questions_answers_YN" if (folder / "images").is_dir() else folder
        for file in sorted(answers.glob("*.txt")):
            for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                fields = line.strip().split("\t")
                if len(fields) != 2:
                    raise ConfigError(f"{file} line {number} is not 'question<TAB>answer'")
                truth[folder.name, file.name, fields[0]] = fields[1].lower()
    return truth


class MME(Benchmark):
    name = "mme"
    FILES = {"questions": "LLaVA's MME question file", "images": "MME's release folder (images and ground truth)"}

    @classmethod
    def folder(cls) -> str:
        return "MME"

    def parse(self, line: str, index: int, where: str) -> Question:
        question = super().parse(line, index, where)
        return question if question.kind else replace(question, kind=str(question.question_id).split("/")[0])

    def truth_of(self, truth: dict, record: dict) -> str:
        """The converter's lookup of an answer's ground truth."""
        subtask = str(record["question_id"]).split("/")[0]
        file = str(record["question_id"]).split("/")[-1].split(".")[0] + ".txt"
        prompt = record["prompt"]
        if SHORT_ANSWER in prompt:
            prompt = prompt.replace(SHORT_ANSWER, "").strip()
        if YES_OR_NO not in prompt:
            prompt = prompt + " " + YES_OR_NO
            if (subtask, file, prompt) not in truth:
                prompt = prompt.replace(" " + YES_OR_NO, "  " + YES_OR_NO)
        if (subtask, file, prompt) not in truth:
            raise ConfigError(f"data=mme: no ground truth for question_id={record['question_id']!r} {prompt!r} in "
                              f"{self.path('images') / subtask}")
        return truth[subtask, file, prompt]

    def score(self, pairs):
        truth = ground_truth(self.path("images"))
        right: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))  # subtask -> image -> hits
        for _, record in pairs:
            subtask = str(record["question_id"]).split("/")[0]
            right[subtask][str(record["question_id"])].append(reading(record["text"]) == self.truth_of(truth, record))
        metrics = {}
        for subtask, images in right.items():
            hits = [hit for image in images.values() for hit in image]
            acc, acc_plus = sum(hits) / len(hits), sum(all(image) for image in images.values()) / len(images)
            metrics |= {f"{subtask}_acc": acc, f"{subtask}_acc_plus": acc_plus, subtask: 100 * (acc + acc_plus)}
        perception = [metrics[s] for s in PERCEPTION if s in metrics]
        cognition = [metrics[s] for s in COGNITION if s in metrics]
        return {"score": sum(perception) if perception else None, "cognition": sum(cognition) if cognition else None,
                **metrics}
