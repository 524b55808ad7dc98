"""ScienceQA-IMG (Lu et al., 2022), as LLaVA-1.5 runs and scores it (scripts/v1_5/eval/sqa.sh:
llava/eval/model_vqa_science.py --single-pred-prompt, llava/eval/eval_science_qa.py).

Layout (`data.root` = playground/data/eval/scienceqa): `llava_test_CQM-A.json` (a JSON list of LLaVA
conversations: id, image, the question with context and options), the images under `images/test/`, and
ScienceQA's `problems.json` (answers) and `pid_splits.json`. The questions with an image are asked (the IMG
subset), the question as LLaVA's script builds it: "<image>" removed, then "\\nAnswer with the option's letter
from the given choices directly."; the answer record's prompt starts with "<image>\\n", as the script writes it.

Reading an answer (eval_science_qa.py): the text itself when it is a letter A-E; its first character when the
text is "<letter>. ..."; the letter of exactly one "The answer is X." in it; else none (wrong). A letter past the
problem's choices is wrong. score = accuracy x 100 over the answers whose prompt holds "<image>" (IMG).
"""

from __future__ import annotations

import re
from pathlib import Path

from vlm_eff.benchmarks.base import (
    LETTER_ANSWER,
    Benchmark,
    Question,
    converted,
    json_line,
    question_id,
    read_json,
    require,
)
from vlm_eff.errors import ConfigError

OPTIONS = ("A", "B", "C", "D", "E")
THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def letter(text: str) -> str | None:
    """eval_science_qa.py's reading of an answer: an option letter, or None."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = THE_ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else None


def question_lines(source: Path):
    """The entries of LLaVA's ScienceQA file as question lines (image null for text-only questions)."""
    for entry in read_json(source, "LLaVA's ScienceQA questions"):
        yield {"question_id": entry["id"], "image": entry.get("image"), "value": entry["conversations"][0]["value"]}


class ScienceQA(Benchmark):
    name = "scienceqa"
    FILES = {"questions": "LLaVA's ScienceQA test questions", "images": "ScienceQA's test images",
             "problems": "ScienceQA's problems.json"}

    def question_file(self) -> Path:
        return converted(self.path("questions"), self.cache_dir, self.name, question_lines)

    def parse(self, line: str, index: int, where: str) -> Question | None:
        item = json_line(line, where)
        require(item, ("question_id", "image", "value"), where)
        qid = question_id(item["question_id"], where)
        if item["image"] is None:
            return None  # a text-only question: not in the IMG score
        question = item["value"].replace("<image>", "").strip() + "\n" + LETTER_ANSWER
        return Question(index, qid, question, self.path("images") / item["image"], "<image>\n" + question)

    def score(self, pairs):
        problems = read_json(self.path("problems"), "ScienceQA problems")
        right, image_right = [], []
        for _, record in pairs:
            problem = problems.get(str(record["question_id"]))
            if problem is None:
                raise ConfigError(f"data=scienceqa: question_id={record['question_id']!r} is not in "
                                  f"{self.path('problems')}")
            answer = letter(record["text"])
            hit = answer in OPTIONS[:len(problem["choices"])] and OPTIONS.index(answer) == problem["answer"]
            right.append(hit)
            if "<image>" in record["prompt"]:
                image_right.append(hit)
        return {"score": 100 * sum(image_right) / len(image_right) if image_right else None,
                "accuracy": 100 * sum(right) / len(right) if right else None, "n_img": len(image_right)}
