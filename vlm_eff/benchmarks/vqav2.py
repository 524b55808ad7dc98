"""VQAv2 (Goyal et al., 2017), as LLaVA-1.5 runs it (scripts/v1_5/eval/vqav2.sh): every answer through the EvalAI
answer processor (scripts/convert_vqav2_for_submission.py), then the official VQA evaluation.

`data.split=test-dev2015` (default, LLaVA's layout in `data.root` = playground/data/eval/vqav2):
`llava_vqav2_mscoco_test-dev2015.jsonl` (text with the short-answer suffix) and the images under `test2015/`;
the evaluation server scores it, so the run writes the submission file LLaVA's converter writes: every question
of `llava_vqav2_mscoco_test2015.jsonl` (where present; else the test-dev ones) with its processed answer, ''
for those not asked. `data.split=val2014` scores here: the official `v2_OpenEnded_mscoco_val2014_questions.json`
(asked with LLaVA's short-answer suffix), `v2_mscoco_val2014_annotations.json` and the images under `val2014/`.

The official evaluation (GT-Vision-Lab/VQA vqaEval.py as fixed in 2021, a013f00): the answer and the ten human
answers with newlines and tabs as spaces, stripped; where the human answers disagree, all of them and the answer
punctuation and digits / articles processed, else none; soft accuracy; score = its overall accuracy x 100,
rounded to 2 decimals as the official code does (per answer type too).
"""

from __future__ import annotations

import json
from pathlib import Path

from vlm_eff.atomic import write_atomic
from vlm_eff.benchmarks.base import SHORT_ANSWER, Benchmark, converted, json_line, read_json
from vlm_eff.benchmarks.processing import (
    by_answer_type,
    digits_articles,
    evalai,
    punctuation,
    soft_accuracy,
    vqa_eval_prediction,
)


def val_questions(source: Path):
    """The official val questions as LLaVA's question lines (the short-answer suffix appended)."""
    for item in read_json(source, "VQAv2 questions")["questions"]:
        yield {"question_id": item["question_id"], "image": f"COCO_val2014_{item['image_id']:012d}.jpg",
               "text": item["question"] + "\n" + SHORT_ANSWER}


def official_accuracy(prediction: str, answers: list[str]) -> float:
    """The official VQA evaluation of one (EvalAI-processed) answer against the ten human answers: both processed
    only where the human answers disagree."""
    answers = [answer.replace("\n", " ").replace("\t", " ").strip() for answer in answers]
    prediction = prediction.replace("\n", " ").replace("\t", " ").strip()
    if len(set(answers)) > 1:
        answers = [digits_articles(punctuation(answer)) for answer in answers]
        prediction = vqa_eval_prediction(prediction)
    return soft_accuracy(prediction, answers)


class VQAv2(Benchmark):
    name = "vqav2"
    FILES = {"questions": "the question file", "images": "the COCO images", "annotations": "the official annotations"}
    SPLITS = {"test-dev2015": {"questions": "llava_vqav2_mscoco_test-dev2015.jsonl", "images": "test2015",
                               "all_questions": "llava_vqav2_mscoco_test2015.jsonl"},
              "val2014": {"questions": "v2_OpenEnded_mscoco_val2014_questions.json", "images": "val2014",
                          "annotations": "v2_mscoco_val2014_annotations.json"}}

    def question_file(self) -> Path:
        source = self.path("questions")
        return converted(source, self.cache_dir, self.name, val_questions) if source.suffix == ".json" else source

    def score(self, pairs):
        if "annotations" not in self.SPLITS[self.split] and not self.data.get("annotations"):
            return {"score": None}  # test-dev: the evaluation server scores the submission file
        annotations = {a["question_id"]: a
                       for a in read_json(self.path("annotations"), "VQAv2 annotations")["annotations"]}
        return by_answer_type(pairs, annotations, lambda text, annotation: official_accuracy(
            evalai(text), [a["answer"] for a in annotation["answers"]]), f"data=vqav2's {self.path('annotations')}")

    def submission(self, pairs, out_dir: Path) -> Path | None:
        if "annotations" in self.SPLITS[self.split] or self.data.get("annotations"):
            return None
        answers = {record["question_id"]: evalai(record["text"]) for _, record in pairs}
        listed = self.root / str(self.data.get("all_questions") or self.SPLITS[self.split]["all_questions"])
        ids = ([json_line(line, f"{listed} line {n}")["question_id"] for n, line in
                enumerate(listed.read_text(encoding="utf-8").splitlines(), start=1) if line.strip()]
               if listed.is_file() else [question.question_id for question in self.questions])
        path = out_dir / f"vqav2_{self.split}_submission.json"
        write_atomic(path, json.dumps([{"question_id": qid, "answer": answers.get(qid, "")} for qid in ids]))
        return path
