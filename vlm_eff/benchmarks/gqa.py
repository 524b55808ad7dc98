"""GQA testdev-balanced (Hudson & Manning, 2019), as LLaVA-1.5 runs it (scripts/v1_5/eval/gqa.sh) and scores it:
scripts/convert_gqa_for_eval.py (the answer lower-cased, trailing periods stripped) then GQA's eval.py.

Layout (`data.root` = playground/data/eval/gqa): `llava_gqa_testdev_balanced.jsonl` (question_id, image, text
with the short-answer suffix), the images under `data/images/`, and GQA's `data/testdev_balanced_questions.json`
(question id -> answer, isBalanced, types). Score: accuracy x 100 over the balanced questions (exact string
equality); the details break it down by structural and semantic type.
"""

from __future__ import annotations

from collections import defaultdict

from vlm_eff.benchmarks.base import Benchmark, read_json
from vlm_eff.errors import ConfigError


def prediction(text: str) -> str:
    """convert_gqa_for_eval.py's reading of an answer."""
    return text.rstrip(".").lower()


class GQA(Benchmark):
    name = "gqa"
    FILES = {"questions": "LLaVA's GQA question file", "images": "the GQA images",
             "annotations": "GQA's questions file with the answers"}

    def score(self, pairs):
        gold = read_json(self.path("annotations"), "GQA questions")
        hits, by_type = [], defaultdict(list)
        for _, record in pairs:
            entry = gold.get(str(record["question_id"]))
            if entry is None:
                raise ConfigError(f"data=gqa: question_id={record['question_id']!r} is not in {self.path('annotations')}")
            if not entry.get("isBalanced", True):
                continue
            hit = prediction(record["text"]) == entry["answer"]
            hits.append(hit)
            for kind in ("structural", "semantic"):
                if entry.get("types", {}).get(kind):
                    by_type[f"{kind}_{entry['types'][kind]}"].append(hit)
        return {"score": 100 * sum(hits) / len(hits) if hits else None,
                **{f"accuracy_{key}": 100 * sum(v) / len(v) for key, v in sorted(by_type.items())}}
