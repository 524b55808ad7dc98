"""SEED-Bench image questions (Li et al., 2023), as LLaVA-1.5 runs them (scripts/v1_5/eval/seed.sh) and scores them
(scripts/convert_seed_for_submission.py).

Layout (`data.root` = playground/data/eval/seed_bench): `llava-seed-bench.jsonl` (question_id, image relative to
data.root, text = the question, "A. <option>" lines and the multiple-choice suffix), the images under
`SEED-Bench-image/`, and SEED-Bench's `SEED-Bench.json` (answers, data_type, question_type_id). Only the image
questions are asked (data_type "image"). An answer is right when its text equals the answer letter exactly.
score = accuracy x 100; the details per question type.
"""

from __future__ import annotations

from collections import defaultdict

from vlm_eff.benchmarks.base import Benchmark, Question, read_json
from vlm_eff.errors import ConfigError


class SeedBench(Benchmark):
    name = "seed_bench"
    FILES = {"questions": "LLaVA's SEED-Bench question file", "annotations": "SEED-Bench's SEED-Bench.json"}

    def __init__(self, data, cache_dir=None):
        super().__init__(data, cache_dir)
        self.truth = read_json(self.path("annotations"), "SEED-Bench annotations")
        self.answers = {str(q["question_id"]): q for q in self.truth["questions"]}

    def parse(self, line: str, index: int, where: str) -> Question | None:
        question = super().parse(line, index, where)
        entry = self.answers.get(str(question.question_id))
        if entry is None:
            raise ConfigError(f"{where}: question_id={question.question_id!r} is not in {self.path('annotations')}")
        if entry.get("data_type", "image") != "image":
            return None  # a video question (LLaVA asks its middle frame): not in the image score
        return question

    def score(self, pairs):
        names = {str(number): name for name, number in self.truth.get("question_type", {}).items()}
        hits, by_type = [], defaultdict(list)
        for _, record in pairs:
            entry = self.answers[str(record["question_id"])]
            hit = record["text"] == entry["answer"]
            hits.append(hit)
            by_type[names.get(str(entry.get("question_type_id")), str(entry.get("question_type_id")))].append(hit)
        return {"score": 100 * sum(hits) / len(hits) if hits else None,
                **{f"accuracy_{kind}": 100 * sum(v) / len(v) for kind, v in sorted(by_type.items())}}
