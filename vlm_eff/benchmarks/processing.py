"""Answer processing as the official VQA-style scorers do it, quirks included.

- `evalai`: the EvalAI answer processor (LLaVA's m4c_evaluator.py carries it; LLaVA's VQAv2 and VizWiz
  submission converters apply it to every prediction; TextVQA's evaluator to predictions and references).
- `punctuation` / `digits_articles`: the official VQA evaluation's own two steps (vqaEval.py, and the VizWiz
  evaluation written from it): VQAv2's applies both to the prediction and the references only where the
  references disagree; VizWiz's to the prediction always, to the references never.
- `soft_accuracy`: min(#matching references / 3, 1), averaged over the ten leave-one-out subsets.
- `by_answer_type`: VQAv2's and VizWiz's metrics, overall and per answer type.
"""

from __future__ import annotations

import re
from collections import defaultdict

from vlm_eff.errors import ConfigError

PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
PERIOD = re.compile(r"\.(?!\d)")  # a period not followed by a digit ("3.5" keeps its own)
DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")  # where the text has one, every mark is removed rather than spaced
PERIODS_REMOVED = 32  # the official code passes re.UNICODE (32) where re.sub takes its count
NUMBERS = {word: str(n) for n, word in enumerate("zero one two three four five six seven eight nine ten".split())}
NUMBERS["none"] = "0"
ARTICLES = frozenset({"a", "an", "the"})
# Contractions the official table restores, written with their apostrophes: each spelling with one of the
# apostrophes left out maps back ("dont" -> "don't", "couldnt've" -> "couldn't've"). The table's I-forms are
# keyed capitalised, so after lowercasing they never apply; its one reversed entry is kept as it is.
CONTRACTED = """ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
    haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've
    mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't shouldn't've
    somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've
    something'll that's there'd there'd've there're there's they'd they'd've they'll they're they've 'twas
    wasn't we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've
    who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd
    you'd've you'll you're you've""".split()
CONTRACTIONS = {form[:i] + form[i + 1:]: form for form in CONTRACTED for i, c in enumerate(form) if c == "'"}
CONTRACTIONS["somebody'd"] = "somebodyd"  # sic, in the official table


def punctuation(text: str) -> str:
    """Each of ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? ! removed where the text has it next to a space (or
    holds a digit, a comma, a digit), else replaced by a space; then periods not before a digit removed."""
    removed = DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        out = out.replace(mark, "" if removed or f"{mark} " in text or f" {mark}" in text else " ")
    return PERIOD.sub("", out, count=PERIODS_REMOVED)


def digits_articles(text: str) -> str:
    """Per lower-cased word: number words zero..ten and "none" as digits, articles dropped, contractions
    missing an apostrophe restored; words joined by single spaces."""
    words = (NUMBERS.get(word, word) for word in text.lower().split())
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def evalai(text: str) -> str:
    """The EvalAI answer processor: lowercase, ',' and '?' removed, "'s" split off ("man's" -> "man 's"),
    newlines and tabs as spaces, then `punctuation` and `digits_articles`. The whole text counts."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return digits_articles(punctuation(text))


def vqa_eval_prediction(text: str) -> str:
    """What the official VQA evaluation makes of a submitted answer before comparing it."""
    return digits_articles(punctuation(text.replace("\n", " ").replace("\t", " ").strip()))


def soft_accuracy(prediction: str, references: list[str]) -> float:
    """VQA accuracy of `prediction` against the human answers `references` (compared as given): the mean over
    each reference left out of min(#others equal to the prediction / 3, 1)."""
    matches = sum(reference == prediction for reference in references)
    return sum(min(1.0, (matches - (reference == prediction)) / 3) for reference in references) / len(references)


def by_answer_type(pairs, annotations: dict, accuracy, where: str) -> dict:
    """VQAv2's and VizWiz's metrics: `accuracy(answer text, annotation)` of every answered question (its
    annotation in `annotations` by question id; a missing one is a one-line error naming `where`), as the
    overall `score` and `accuracy_<answer_type>`, in %; no answered question: score None."""
    accuracies, by_type = [], defaultdict(list)
    for _, record in pairs:
        annotation = annotations.get(record["question_id"])
        if annotation is None:
            raise ConfigError(f"question_id={record['question_id']!r} has no annotation in {where}")
        accuracies.append(accuracy(record["text"], annotation))
        by_type[annotation.get("answer_type", "")].append(accuracies[-1])
    if not accuracies:
        return {"score": None}
    return {"score": round(100 * sum(accuracies) / len(accuracies), 2),
            **{f"accuracy_{kind}": round(100 * sum(v) / len(v), 2) for kind, v in sorted(by_type.items()) if kind}}
