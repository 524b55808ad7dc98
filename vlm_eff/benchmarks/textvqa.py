"""TextVQA val (Singh et al., 2019), as LLaVA-1.5 runs and scores it (scripts/v1_5/eval/textvqa.sh,
llava/eval/eval_textvqa.py with the m4c evaluator).

Layout (`data.root` = playground/data/eval/textvqa): `llava_textvqa_val_v051_ocr.jsonl` (question_id = the
image's id, so repeated for an image's several questions; text = the question, the reference OCR tokens and
the short-answer suffix, one a line), the images under `train_images/`, and the annotations
`TextVQA_0.5.1_val.json`. An answer finds its annotation by (its question_id, the question read back from its
prompt, lower-cased), as eval_textvqa.py does. Score: soft accuracy x 100, the prediction and the ten human
answers through the EvalAI answer processor.
"""

from __future__ import annotations

import re

from vlm_eff.benchmarks.base import Benchmark, read_json
from vlm_eff.benchmarks.processing import evalai, soft_accuracy
from vlm_eff.errors import ConfigError

OCR_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def question_of(prompt: str) -> str:
    """The question in an answer's prompt, lower-cased, as eval_textvqa.py reads it back."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        found = OCR_QUESTION.search(prompt)
        if found:
            return found.group(1).lower()
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        return (lines[1] if prompt.startswith("Reference OCR token:") else lines[0]).lower()
    elif len(lines) == 2:
        return lines[0].lower()
    raise ConfigError(f"data=textvqa: cannot read the question back from the prompt {prompt!r} (LLaVA's TextVQA "
                      "prompts are the question, its OCR tokens and the answer-format line)")


class TextVQA(Benchmark):
    name = "textvqa"
    FILES = {"questions": "LLaVA's TextVQA question file with OCR tokens", "images": "the TextVQA train/val images",
             "annotations": "TextVQA's val annotations"}

    def score(self, pairs):
        annotations = {(str(a["image_id"]), a["question"].lower()): a["answers"]
                       for a in read_json(self.path("annotations"), "TextVQA annotations")["data"]}
        scores = []
        for _, record in pairs:
            key = (str(record["question_id"]), question_of(record["prompt"]))
            if key not in annotations:
                raise ConfigError(f"data=textvqa: no annotation for image {key[0]!r} and question {key[1]!r} in "
                                  f"{self.path('annotations')}")
            scores.append(soft_accuracy(evalai(record["text"]), [evalai(a) for a in annotations[key]]))
        return {"score": 100 * sum(scores) / len(scores) if scores else None}
