"""VizWiz-VQA (Gurari et al., 2018), as LLaVA-1.5 runs it (scripts/v1_5/eval/vizwiz.sh): every answer through the
EvalAI answer processor (scripts/convert_vizwiz_for_submission.py), then VizWiz's evaluation.

`data.split=test` (default, LLaVA's layout in `data.root` = playground/data/eval/vizwiz): `llava_test.jsonl`
(question_id = the image's file name; text with LLaVA's "unanswerable" and short-answer lines) and the images
under `test/`; the evaluation server scores it: the run writes the submission file ({image, answer} per
question). `data.split=val` scores here: VizWiz's `val.json` (asked with the same two lines), the images
under `val/`. VizWiz's evaluation: the answer's punctuation and digits / articles processed, the ten human
answers as given ("unanswerable" among them); soft accuracy; score = overall accuracy x 100, rounded to 2
decimals as its code does (per answer type too).
"""

from __future__ import annotations

import json
from pathlib import Path

from vlm_eff.atomic import write_atomic
from vlm_eff.benchmarks.base import SHORT_ANSWER, Benchmark, converted, read_json
from vlm_eff.benchmarks.processing import by_answer_type, evalai, soft_accuracy, vqa_eval_prediction

UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."


def val_questions(source: Path):
    """VizWiz's val annotations as LLaVA's question lines."""
    for item in read_json(source, "VizWiz annotations"):
        yield {"question_id": item["image"], "image": item["image"],
               "text": item["question"] + "\n" + UNANSWERABLE + "\n" + SHORT_ANSWER}


class VizWiz(Benchmark):
    name = "vizwiz"
    FILES = {"questions": "the question file", "images": "the VizWiz images"}
    SPLITS = {"test": {"questions": "llava_test.jsonl", "images": "test"},
              "val": {"questions": "val.json", "images": "val"}}

    def scored_here(self) -> bool:
        return self.path("questions").suffix == ".json"  # VizWiz's annotations, answers included

    def question_file(self) -> Path:
        source = self.path("questions")
        return converted(source, self.cache_dir, self.name, val_questions) if self.scored_here() else source

    def score(self, pairs):
        if not self.scored_here():
            return {"score": None}  # test: the evaluation server scores the submission file
        annotations = {a["image"]: a for a in read_json(self.path("questions"), "VizWiz annotations")}
        return by_answer_type(pairs, annotations, lambda text, annotation: soft_accuracy(
            vqa_eval_prediction(evalai(text)), [a["answer"] for a in annotation["answers"]]),
            f"data=vizwiz's {self.path('questions')}")

    def submission(self, pairs, out_dir: Path) -> Path | None:
        if self.scored_here():
            return None
        answers = {question.index: evalai(record["text"]) for question, record in pairs}
        images = self.path("images")  # each entry names the question's image, as LLaVA's converter writes it
        path = out_dir / f"vizwiz_{self.split}_submission.json"
        write_atomic(path, json.dumps([{"image": question.image.relative_to(images).as_posix(),
                                        "answer": answers.get(question.index, "")} for question in self.questions]))
        return path
