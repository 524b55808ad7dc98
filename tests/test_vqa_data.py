"""Any question file in LLaVA's format (data=vqa, vlm_eff.benchmarks.generic) and answer files, on real files and
real images: reading and checking questions, exact-match scoring, answer records, matching answers to questions."""

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from vlm_eff.benchmarks.answers import write_answers
from vlm_eff.benchmarks.base import match, read_answer_records
from vlm_eff.benchmarks.generic import VQA, exact_match
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


def generic(file, root) -> VQA:
    return VQA(OmegaConf.create({"name": "vqa", "root": None if root is None else str(root),
                                 "questions": None if file is None else str(file)}))


def read_questions(file, root) -> list:
    return list(generic(file, root).questions)


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
    assert [q.index for q in questions] == [0, 1, 2, 3]  # positions, blank lines skipped
    assert [q.question_id for q in questions] == [7, "q-2", 9, "10"]  # kept as given: int stays int, str stays str
    assert [q.text for q in questions] == ["What animal is in the top left?", "How many dogs?", "Is there a cat?",
                                           "Describe it."]
    assert [q.prompt for q in questions] == [q.text for q in questions]  # asked and recorded as given
    assert [q.answer for q in questions] == ["cat", ("2", "two"), ("yes", "yeah"), None]
    assert [q.kind for q in questions] == ["position", None, None, None]
    assert [q.image for q in questions] == [root / "a.jpg", root / "sub" / "b.png", root / "a.jpg", root / "a.jpg"]
    assert all(q.image.is_absolute() for q in questions)
    assert questions[1].load_image().size == (16, 16) and questions[0].load_image().mode == "RGB"


def test_a_relative_root_resolves_to_absolute_image_paths(tmp_path, root, monkeypatch):
    write_lines(tmp_path / "questions.jsonl", [question(1, image="sub/b.png")])
    monkeypatch.chdir(tmp_path)
    (only,) = read_questions("questions.jsonl", "images")
    assert only.image == root / "sub" / "b.png" and only.image.is_absolute()


def test_missing_question_file_and_root_are_one_line_errors_naming_them(tmp_path, root):
    missing = tmp_path / "nope.jsonl"
    assert f"data.questions={missing} does not exist" in error_of(missing, root)
    assert "data.questions=None does not exist" in error_of(None, root)
    file = write_lines(tmp_path / "questions.jsonl", [question(1)])
    assert f"data.root={tmp_path / 'no-root'} is not a folder" in error_of(file, tmp_path / "no-root")
    assert "data.root=" in error_of(file, root / "a.jpg")  # a file is no root folder
    assert "data=vqa needs data.root=" in error_of(file, None)


def test_invalid_json_names_the_file_and_line(tmp_path, root):
    file = write_lines(tmp_path / "questions.jsonl", [question(1), "", '{"question_id": 2, "image": "a.jpg",'])
    assert f"{file} line 3 is not valid JSON" in error_of(file, root)


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
    assert f"{file} line 3" in message
    assert says in message


def test_a_missing_image_names_the_question_id_and_path(tmp_path, root):
    file = write_lines(tmp_path / "questions.jsonl", [question(1), question("q7", image="sub/missing.jpg")])
    message = error_of(file, root)
    assert "line 2" in message and "question_id='q7'" in message and str(root / "sub" / "missing.jpg") in message
    file = write_lines(tmp_path / "questions.jsonl", [question(1, image="sub")])  # a folder is no image
    assert f"question_id=1 names image {root / 'sub'}, which is not a file" in error_of(file, root)


def test_a_corrupt_image_is_a_one_line_error_naming_the_question(tmp_path, root):
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    file = write_lines(tmp_path / "questions.jsonl", [question("q9", image="broken.jpg")])
    (only,) = read_questions(file, root)
    with pytest.raises(ConfigError) as caught:
        only.load_image()
    assert "question_id='q9'" in str(caught.value) and "broken.jpg" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_repeated_question_ids_are_several_questions_matched_in_order(tmp_path, root):
    """Official files repeat ids (MME, TextVQA): every line is a question; the k-th answer of an id is its k-th."""
    file = write_lines(tmp_path / "questions.jsonl", [question(3, answer="a"), question(4), question(3, answer="b")])
    bench = generic(file, root)
    assert [q.question_id for q in bench.questions] == [3, 4, 3] and bench.questions.ids["3"] == 2
    records = [{"question_id": 3, "text": "a", "prompt": ""}, {"question_id": 3, "text": "x", "prompt": ""}]
    pairs, missing = match(bench.questions, records, "answers")
    assert [(q.index, r["text"]) for q, r in pairs] == [(0, "a"), (2, "x")] and missing == 1
    assert bench.score(pairs)["vqa_acc"] == 1 / 2  # "a" right for the first 3, "x" wrong for the second


def test_an_empty_file_is_an_error(tmp_path, root):
    for text in ("", "\n  \n\n"):
        (tmp_path / "questions.jsonl").write_text(text)
        assert "holds no question" in error_of(tmp_path / "questions.jsonl", root)


def test_exact_match_after_the_evalai_processing_with_one_or_several_answers():
    assert exact_match("The Cat.", "cat")
    assert exact_match("two", "2") and exact_match("2", "Two")
    assert not exact_match("cats", "cat")
    assert not exact_match("a cat", "dog")
    assert exact_match("Yeah.", ("yes", "yeah"))
    assert not exact_match("no", ("yes", "yeah"))
    assert not exact_match("yes", ())


def test_generic_score_overall_and_per_kind_on_a_hand_built_set(tmp_path, root):
    file = write_lines(tmp_path / "questions.jsonl", [
        question(1, answer="cat", kind="position"), question(2, answer="dog", kind="position"),
        question("3", answers=["yes", "yeah"], kind="presence"), question(4, answer="2", kind="count"),
        question(5, answer="1", kind="count"), question(6, kind="count"),  # no answer: not scored
    ])  # fmt: skip
    bench = generic(file, root)
    records = [{"question_id": qid, "text": text, "prompt": ""} for qid, text in
               [(1, "The cat."), (2, "cats"), ("3", "Yeah"), (4, "two"), (5, "3"), (6, "a picture")]]
    pairs, missing = match(bench.questions, records, "answers")
    # right: 1 (the cat. -> cat), 3 (yeah), 4 (two -> 2); wrong: 2 (cats), 5 (3 for 1)
    assert missing == 0 and bench.score(pairs) == {
        "score": 100 * 3 / 5, "vqa_acc": 3 / 5, "n_scored": 5, "vqa_acc_position": 1 / 2, "vqa_acc_presence": 1.0,
        "vqa_acc_count": 1 / 2}  # fmt: skip
    assert bench.score(pairs[-1:]) == {"score": None, "vqa_acc": None, "n_scored": 0}


def test_answer_records_round_trip_in_llava_answer_format(tmp_path, root):
    file = write_lines(tmp_path / "questions.jsonl", [
        question(1, answer="cat"), question("q2", image="sub/b.png", text="How many?"), question(3, text="Où?"),
    ])  # fmt: skip
    bench = generic(file, root)
    texts = ["A cat.", "two", "là-bas\nensuite"]
    records = [bench.record(q, t, "llava-tiny", np.int64(64 - i)) for i, (q, t) in enumerate(zip(bench.questions, texts))]
    path = tmp_path / "run" / "answers.jsonl"
    write_answers(path, records)
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    for line, q, text, tokens in zip(lines, bench.questions, texts, (64, 63, 62)):
        record = json.loads(line)
        assert tuple(record) == ("question_id", "prompt", "text", "answer_id", "model_id", "metadata", "visual_tokens")
        assert record["question_id"] == q.question_id and record["prompt"] == q.text and record["text"] == text
        assert record["model_id"] == "llava-tiny" and record["metadata"] == {}
        assert record["visual_tokens"] == tokens and type(record["visual_tokens"]) is int
    assert len({json.loads(line)["answer_id"] for line in lines}) == 3
    assert read_answer_records(path) == records
    assert not list(tmp_path.joinpath("run").glob(".answers.jsonl.*"))  # no temporary file left behind


def test_answer_id_is_deterministic_and_depends_on_question_and_text(tmp_path, root):
    bench = generic(write_lines(tmp_path / "q.jsonl", [question(1), question("1", text="other")]), root)
    q1, q1_str = bench.questions
    first = bench.record(q1, "cat", "m", 5)["answer_id"]
    assert first == bench.record(q1, "cat", "other model", 9)["answer_id"]
    assert len(first) == 22 and first != bench.record(q1, "dog", "m", 5)["answer_id"]
    assert first != bench.record(q1_str, "cat", "m", 5)["answer_id"]
    with pytest.raises(TypeError):
        bench.record(q1, "cat", "m", 5.0)  # visual_tokens is a count


def test_reading_and_matching_bad_answers_files_is_a_one_line_error(tmp_path, root):
    bench = generic(write_lines(tmp_path / "q.jsonl", [question(1), question(2)]), root)
    cases = [
        (['{"question_id": 1, "text": "a"}', "{oops"], "line 2 is not valid JSON"),
        (['{"question_id": 1, "text": "a"}', '{"text": "b"}'], "line 2 is not an answer record"),
        (['{"question_id": 1, "text": "a"}', "", '{"question_id": 1, "text": "b"}'],
         "question_id=1 is answered 2 times"),
        (['{"question_id": 7, "text": "a"}'], "question_id=7, which data=vqa does not ask"),
    ]  # fmt: skip
    for lines, says in cases:
        path = write_lines(tmp_path / "answers.jsonl", lines)
        with pytest.raises(ConfigError, match=says) as caught:
            match(bench.questions, read_answer_records(path), str(path))
        assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="does not exist"):
        read_answer_records(tmp_path / "missing.jsonl")
