"""LLaVA's question / answer JSONL and VQA scoring (vlm_eff.data.vqa), on real files and real images."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_eff.data.vqa import (
    ANSWER_KEYS,
    Question,
    answer_record,
    exact_match,
    normalize_answer,
    read_answers,
    read_questions,
    vqa_accuracy,
    write_answers,
)
from vlm_eff.errors import ConfigError


@pytest.fixture
def root(tmp_path) -> Path:
    """A data root with a real JPEG and a real PNG, one of them in a subfolder."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "sub" / "b.png")
    return folder


def write_lines(path: Path, lines: list) -> Path:
    """Each item a line: a dict as JSON, a string as written."""
    path.write_text("".join((json.dumps(line) if isinstance(line, dict) else line) + "\n" for line in lines))
    return path


def question(question_id, image: str = "a.jpg", text: str = "What is it?", **extra) -> dict:
    return {"question_id": question_id, "image": image, "text": text, **extra}


def error_of(file, root) -> str:
    with pytest.raises(ConfigError) as caught:
        read_questions(file, root)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_reads_questions_with_and_without_answers_int_and_str_ids_and_blank_lines(tmp_path, root):
    file = write_lines(tmp_path / "questions.jsonl", [
        question(7, text="What animal is in the top left?", answer="cat", kind="position"),
        "",
        "   ",
        question("q-2", image="sub/b.png", text="How many dogs?", answers=["2", "two"]),
        question(9, image="sub/../a.jpg", text="Is there a cat?", answer="yes", answers=["yes", "yeah"], extra=1),
        question("10", text="Describe it."),
    ])  # fmt: skip
    questions = read_questions(file, root)
    assert [q.question_id for q in questions] == [7, "q-2", 9, "10"]  # kept as given: int stays int, str stays str
    assert [q.text for q in questions] == ["What animal is in the top left?", "How many dogs?", "Is there a cat?",
                                           "Describe it."]
    assert [q.answer for q in questions] == ["cat", ("2", "two"), ("yes", "yeah"), None]
    assert [q.kind for q in questions] == ["position", None, None, None]
    assert [q.image for q in questions] == ["a.jpg", "sub/b.png", "sub/../a.jpg", "a.jpg"]
    assert [q.path for q in questions] == [root / "a.jpg", root / "sub" / "b.png", root / "a.jpg", root / "a.jpg"]
    assert all(q.path.is_absolute() for q in questions)


def test_a_relative_root_resolves_to_absolute_image_paths(tmp_path, root, monkeypatch):
    file = write_lines(tmp_path / "questions.jsonl", [question(1, image="sub/b.png")])
    monkeypatch.chdir(tmp_path)
    (only,) = read_questions("questions.jsonl", "images")
    assert only.path == root / "sub" / "b.png" and only.path.is_absolute()


def test_missing_question_file_and_root_are_one_line_errors_naming_them(tmp_path, root):
    missing = tmp_path / "nope.jsonl"
    message = error_of(missing, root)
    assert f"data.questions={missing} does not exist" in message
    assert "data.questions=None does not exist" in error_of(None, root)
    file = write_lines(tmp_path / "questions.jsonl", [question(1)])
    message = error_of(file, tmp_path / "no-root")
    assert f"data.root={tmp_path / 'no-root'} does not exist" in message
    assert "data.root=" in error_of(file, root / "a.jpg")  # a file is no root folder


def test_invalid_json_names_the_file_and_line(tmp_path, root):
    file = write_lines(tmp_path / "questions.jsonl", [question(1), "", '{"question_id": 2, "image": "a.jpg",'])
    message = error_of(file, root)
    assert f"data.questions={file} line 3 is not valid JSON" in message


@pytest.mark.parametrize("line, says", [
    ({"image": "a.jpg", "text": "q?"}, "has no question_id"),
    ({"question_id": 5, "text": "q?"}, "has no image"),
    ({"question_id": 5, "image": "a.jpg"}, "has no text"),
    ('["not", "an", "object"]', "is a JSON list"),
    (question(1.5), "question_id=1.5 must be an integer or a non-empty string"),
    (question(True), "question_id=True must be"),
    (question(5, image=3), "image=3 must be a non-empty string"),
    (question(5, text=""), "text='' must be a non-empty string"),
    (question(5, answer=2), "answer=2 must be a string"),
    (question(5, answers="cat"), "answers='cat' must be a non-empty list of strings"),
    (question(5, answers=[]), "answers=[] must be a non-empty list"),
    (question(5, kind="top left"), "kind='top left' must be a name"),
])  # fmt: skip
def test_a_missing_key_or_wrong_type_names_the_line_and_what_is_allowed(tmp_path, root, line, says):
    file = write_lines(tmp_path / "questions.jsonl", [question(1), "", line])
    message = error_of(file, root)
    assert f"data.questions={file} line 3" in message
    assert says in message


def test_a_missing_image_names_the_question_id_and_path(tmp_path, root):
    file = write_lines(tmp_path / "questions.jsonl", [question(1), question("q7", image="sub/missing.jpg")])
    message = error_of(file, root)
    assert "line 2" in message and "question_id='q7'" in message and "'sub/missing.jpg'" in message
    assert str(root / "sub" / "missing.jpg") in message
    file = write_lines(tmp_path / "questions.jsonl", [question(1, image="sub")])  # a folder is no image
    assert "question_id=1 names image 'sub'" in error_of(file, root)


def test_a_repeated_question_id_names_both_lines(tmp_path, root):
    file = write_lines(tmp_path / "questions.jsonl", [question(3), question(4), "", question(3, text="again?")])
    message = error_of(file, root)
    assert "line 4: question_id=3 repeats line 1's" in message
    file = write_lines(tmp_path / "questions.jsonl", [question(3), question("3")])  # 3 and "3": one id
    assert "line 2: question_id='3' repeats line 1's" in error_of(file, root)


def test_an_empty_file_is_an_error(tmp_path, root):
    for text in ("", "\n  \n\n"):
        (tmp_path / "questions.jsonl").write_text(text)
        assert "has no questions" in error_of(tmp_path / "questions.jsonl", root)


def test_normalize_answer_follows_the_official_vqa_processor():
    cases = {
        "The Cat.": "cat",  # lowercase, article, trailing period
        "  an apple\n": "apple",
        "Two": "2",  # number words zero..ten and none
        "none": "0",
        "ten dogs": "10 dogs",
        "eleven": "eleven",  # beyond ten: unchanged
        "3.5": "3.5",  # a period before a digit stays
        "1,000": "1000",  # commas removed
        "black-and-white": "black and white",  # a mark with no space beside it: a space
        "red - blue": "red blue",  # a mark beside a space: removed
        "A (cat)!": "cat",
        "yes?": "yes",
        "dont": "don't",  # contractions restored
        "couldnt've": "couldn't've",
        "man's hat": "man 's hat",  # "'s" split off
        "yes\nno": "yes no",  # the whole text, newlines as spaces
        "answer: cat": "answer: cat",  # ':' is no mark the processor removes
    }
    assert {text: normalize_answer(text) for text in cases} == cases


def test_exact_match_after_normalisation_with_one_or_several_answers():
    assert exact_match("The Cat.", "cat")
    assert exact_match("two", "2") and exact_match("2", "Two")
    assert not exact_match("cats", "cat")
    assert not exact_match("a cat", "dog")
    assert exact_match("Yeah.", ("yes", "yeah"))
    assert not exact_match("no", ("yes", "yeah"))
    assert not exact_match("yes", ())


def test_vqa_accuracy_overall_and_per_kind_on_a_hand_built_set(tmp_path, root):
    path = root / "a.jpg"
    questions = [
        Question(1, "a.jpg", "What is in the top left?", "cat", path, "position"),
        Question(2, "a.jpg", "What is in the top right?", "dog", path, "position"),
        Question("3", "a.jpg", "Is there a frog?", ("yes", "yeah"), path, "presence"),
        Question(4, "a.jpg", "How many cats?", "2", path, "count"),
        Question(5, "a.jpg", "How many dogs?", "1", path, "count"),
        Question(6, "a.jpg", "Describe it.", None, path, "count"),  # no answer: not scored
    ]
    predictions = {1: "The cat.", 2: "cats", "3": "Yeah", 4: "two", 6: "a picture"}  # 5: missing, so wrong
    # right: 1 (the cat. -> cat), 3 (yeah), 4 (two -> 2); wrong: 2 (cats), 5 (missing)
    assert vqa_accuracy(predictions, questions) == {
        "vqa_acc": 3 / 5, "n_answered": 5, "vqa_acc_position": 1 / 2, "vqa_acc_presence": 1.0, "vqa_acc_count": 1 / 2,
    }  # fmt: skip
    no_kinds = [Question(q.question_id, q.image, q.text, q.answer, q.path) for q in questions]
    assert vqa_accuracy(predictions, no_kinds) == {"vqa_acc": 3 / 5, "n_answered": 5}
    assert vqa_accuracy(predictions, [questions[-1]]) == {"vqa_acc": None, "n_answered": 0}


def test_answers_round_trip_in_llava_answer_format(tmp_path, root):
    file = write_lines(tmp_path / "questions.jsonl", [
        question(1, answer="cat"), question("q2", image="sub/b.png", text="How many?"), question(3, text="Où?"),
    ])  # fmt: skip
    questions = read_questions(file, root)
    texts = ["A cat.", "two", "là-bas\nensuite"]
    records = [answer_record(q, t, "llava-tiny", q.text, np.int64(64 - i))
               for i, (q, t) in enumerate(zip(questions, texts))]
    path = tmp_path / "run" / "answers.jsonl"
    write_answers(path, records)
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    for line, q, text, tokens in zip(lines, questions, texts, (64, 63, 62)):
        record = json.loads(line)
        assert tuple(record) == ANSWER_KEYS == (
            "question_id", "prompt", "text", "answer_id", "model_id", "metadata", "visual_tokens",
        )  # fmt: skip
        assert record["question_id"] == q.question_id and record["prompt"] == q.text and record["text"] == text
        assert record["model_id"] == "llava-tiny" and record["metadata"] == {}
        assert record["visual_tokens"] == tokens and type(record["visual_tokens"]) is int
    assert len({json.loads(line)["answer_id"] for line in lines}) == 3
    read = read_answers(path)
    assert list(read) == [1, "q2", 3]
    assert list(read.values()) == records
    assert not list(tmp_path.joinpath("run").glob(".answers.jsonl.*"))  # no temporary file left behind


def test_answer_id_is_deterministic_and_depends_on_question_and_text(root):
    q1 = Question(1, "a.jpg", "q?", None, root / "a.jpg")
    q1_str = Question("1", "a.jpg", "q?", None, root / "a.jpg")
    first = answer_record(q1, "cat", "m", "q?", 5)["answer_id"]
    assert first == answer_record(q1, "cat", "other model", "other prompt", 9)["answer_id"]
    assert len(first) == 22 and first != answer_record(q1, "dog", "m", "q?", 5)["answer_id"]
    assert first != answer_record(q1_str, "cat", "m", "q?", 5)["answer_id"]
    with pytest.raises(TypeError):
        answer_record(q1, "cat", "m", "q?", 5.0)  # visual_tokens is a count


def test_reading_bad_answers_files_is_a_one_line_error(tmp_path):
    cases = [
        (['{"question_id": 1, "text": "a"}', "{oops"], "line 2 is not valid JSON"),
        (['{"question_id": 1, "text": "a"}', '{"text": "b"}'], "line 2 is not an answer record"),
        (['{"question_id": 1, "text": "a"}', "", '{"question_id": 1, "text": "b"}'],
         "line 3: question_id=1 answered twice"),
    ]  # fmt: skip
    for lines, says in cases:
        path = write_lines(tmp_path / "answers.jsonl", lines)
        with pytest.raises(ConfigError, match=says) as caught:
            read_answers(path)
        assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="does not exist"):
        read_answers(tmp_path / "missing.jsonl")
