"""The benchmarks of vlm_eff.benchmarks on small folders in their official formats (tests/benchmark_fixtures.py):
each scorer against scores computed here by hand, the way its official script reads answers (quirks included);
matching answers to questions; one-line errors; the submission files; the answer processing of processing.py."""

import json

import numpy as np
import pytest
from benchmark_fixtures import FIXTURES, data_config
from omegaconf import OmegaConf

from vlm_eff.benchmarks import BENCHMARKS, benchmark
from vlm_eff.benchmarks.base import LETTER_ANSWER, match
from vlm_eff.benchmarks.mmbench import matched_option
from vlm_eff.benchmarks.mme import reading
from vlm_eff.benchmarks.pope import says_yes
from vlm_eff.benchmarks.processing import digits_articles, evalai, punctuation, soft_accuracy
from vlm_eff.benchmarks.scienceqa import letter
from vlm_eff.errors import ConfigError


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]


def build(name: str, tmp_path, images):
    """The benchmark of fixture `name`, written under tmp_path."""
    return benchmark(data_config(FIXTURES[name](tmp_path, images), tmp_path / "cache"))


def records(bench, texts) -> list[dict]:
    """Answer records as a run writes them: `texts` is {question_id: text} (ids asked once) or a list of texts in
    question order."""
    questions = list(bench.questions)
    if isinstance(texts, dict):
        by_id = {str(question.question_id): question for question in questions}
        pairs = [(by_id[str(qid)], text) for qid, text in texts.items()]
    else:
        pairs = list(zip(questions, texts, strict=True))
    return [bench.record(question, text, "fixture-model", 576) for question, text in pairs]


def scored(bench, texts) -> dict:
    """The benchmark's metrics of `texts` (see `records`), matched to the questions as python -m vlm_eff.score does."""
    pairs, missing = match(bench.questions, records(bench, texts), "answers")
    assert missing == len(bench.questions) - len(pairs)
    return bench.score(pairs)


def one_line_error(call) -> str:
    with pytest.raises(ConfigError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    return message


# -- POPE ---------------------------------------------------------------------------------------------------------
def test_pope_mean_f1_over_categories_reading_the_first_sentence(tmp_path, images):
    bench = build("pope", tmp_path, images)
    metrics = scored(bench, {
        1: "Yes. No.",  # adversarial, label yes: only the first sentence "Yes" is read -> yes: TP
        2: "NO",  # adversarial, no: "NO" is none of the words No / no / not -> yes: FP
        3: "Yes",  # popular, yes: TP
        4: "not sure",  # adversarial, yes: the word "not" -> no: FN
        5: "Yes, no chair",  # adversarial, no: commas removed, the word "no" -> no: TN
        6: "No, there is not.",  # popular, no: TN
        7: "There is a bird",  # random, yes: no negative word -> yes: TP
        8: "There isn't one.",  # random, no: "isn't" is not "not" -> yes: FP
    })
    # adversarial TP 1 FP 1 FN 1 TN 1: precision 1/2, recall 1/2, F1 1/2; popular TP 1 TN 1: F1 1;
    # random TP 1 FP 1: precision 1/2, recall 1, F1 = 2 * 1/2 * 1 / (3/2) = 2/3
    assert metrics["score"] == pytest.approx(100 * (1 / 2 + 1 + 2 / 3) / 3)
    assert metrics["adversarial_f1"] == pytest.approx(1 / 2)
    assert (metrics["adversarial_tp"], metrics["adversarial_fp"], metrics["adversarial_tn"],
            metrics["adversarial_fn"]) == (1, 1, 1, 1)
    assert metrics["popular_f1"] == pytest.approx(1.0)
    assert metrics["random_f1"] == pytest.approx(2 / 3)
    assert metrics["random_yes_ratio"] == pytest.approx(2 / 2)  # both random answers read as yes
    assert metrics["adversarial_acc"] == pytest.approx(2 / 4)


def test_pope_reading_of_single_answers():
    assert says_yes("Yes, there is a dog.")
    assert not says_yes("No, there is not.")
    assert says_yes("Yes. No.")  # the second sentence is never read
    assert not says_yes("not sure")
    assert not says_yes("Yes, no cat")  # the comma goes, "no" is a word
    assert says_yes("Nope")  # no word is exactly No / no / not
    assert says_yes("no.") is False and says_yes(".no") is True  # "" is the first sentence of ".no"


def test_pope_missing_category_file_is_a_one_line_error_naming_it(tmp_path, images):
    bench = build("pope", tmp_path, images)
    (bench.root / "coco" / "coco_pope_random.json").unlink()
    pairs, _ = match(bench.questions, records(bench, {7: "Yes"}), "answers")
    assert "coco_pope_random.json" in one_line_error(lambda: bench.score(pairs))


# -- MME ----------------------------------------------------------------------------------------------------------
def test_mme_perception_and_cognition_from_acc_and_acc_plus(tmp_path, images):
    bench = build("mme", tmp_path, images)
    metrics = scored(bench, [
        "Yes,",  # artwork Vincent, truth Yes: not exactly "yes", but its first four characters hold "yes": right
        "Nope",  # artwork Monet, No: "nope"[:4] holds "no": right
        "I think yes",  # existence train, Yes: "i th" holds neither: other, wrong
        "no",  # existence bed, No: right
        "yes",  # existence bowl, Yes (the release has two spaces before "Please"): right
        "Not really",  # existence cat, No: "not " holds "no": right
        "Yes",  # code_reasoning python, Yes: right
        "Absolutely not",  # code_reasoning c++, No: "abso" holds neither: other, wrong
    ])
    # artwork: acc 2/2, acc+ 1/1 -> 100 * (1 + 1) = 200; existence: acc 3/4, acc+ 1/2 (only the bowl image has both
    # right) -> 125; perception = 200 + 125 = 325. code_reasoning: acc 1/2, acc+ 0/1 -> 50 = cognition.
    assert metrics["artwork"] == pytest.approx(200)
    assert metrics["existence_acc"] == pytest.approx(3 / 4)
    assert metrics["existence_acc_plus"] == pytest.approx(1 / 2)
    assert metrics["score"] == pytest.approx(200 + 100 * (3 / 4 + 1 / 2))
    assert metrics["cognition"] == pytest.approx(100 * (1 / 2 + 0))


def test_mme_reading_is_the_first_four_characters():
    assert reading("Yes") == "yes" and reading("NO") == "no"
    assert reading("Yes,") == "yes"
    assert reading("Nope") == "no"
    assert reading("None") == "no"  # "none"[:4] holds "no"
    assert reading("I think yes") == "other"  # "yes" is past the first four characters
    assert reading("Noted, yes") == "no"  # "note" holds "no" and not "yes"


# -- TextVQA ------------------------------------------------------------------------------------------------------
TEXTVQA_ANSWERS = [
    "Dakota.",  # -> "dakota"; the references through EvalAI: dakota x7 + "Dakota." -> 8 match: 1
    "Two.",  # -> "2"; two x2 and 2 -> 3 match of 10: each left-out 2 leaves 2 (2/3), each left-out three 3 (1)
    "1,000",  # -> "1000"; "1,000" and "1000" -> 2 match: left-out match 1/3 (x2), others 2/3 (x8)
    "black-and-white",  # -> "black and white"; 4 + 2 ("black-and-white") match: 1
    "ten dogs",  # -> "10 dogs"; 1 match: left out 0, the nine others 1/3
    "a dog",  # -> "dog"; cat x10: 0
]
TEXTVQA_EXPECTED = 100 * (1 + (3 * 2 / 3 + 7 * 1) / 10 + (2 * 1 / 3 + 8 * 2 / 3) / 10 + 1 + 9 * (1 / 3) / 10 + 0) / 6


def test_textvqa_soft_accuracy_with_evalai_processing(tmp_path, images):
    bench = build("textvqa", tmp_path, images)
    assert [q.question_id for q in bench.questions][:2] == ["003a8ae2ef43b901"] * 2  # one image, two questions
    assert scored(bench, TEXTVQA_ANSWERS)["score"] == pytest.approx(TEXTVQA_EXPECTED)


def test_textvqa_repeated_question_id_finds_its_annotation_by_prompt(tmp_path, images):
    """Answers to an image's two questions in the other order pair with the wrong question by position, yet each
    is scored against its own annotation: found, as eval_textvqa.py finds it, by the question in its prompt."""
    bench = build("textvqa", tmp_path, images)
    answers = records(bench, TEXTVQA_ANSWERS)
    answers[0], answers[1] = answers[1], answers[0]
    pairs, missing = match(bench.questions, answers, "answers")
    assert missing == 0 and pairs[0][1]["text"] == "Two."  # the lenses answer paired with the brand question
    assert bench.score(pairs)["score"] == pytest.approx(TEXTVQA_EXPECTED)


def test_textvqa_missing_annotations_file_is_a_one_line_error_naming_it(tmp_path, images):
    overrides = FIXTURES["textvqa"](tmp_path, images)
    (tmp_path / "textvqa" / "TextVQA_0.5.1_val.json").unlink()
    message = one_line_error(lambda: benchmark(data_config(overrides, tmp_path / "cache")))
    assert "TextVQA_0.5.1_val.json" in message and "data.annotations" in message


# -- GQA ----------------------------------------------------------------------------------------------------------
def test_gqa_accuracy_over_balanced_questions_after_llava_conversion(tmp_path, images):
    bench = build("gqa", tmp_path, images)
    metrics = scored(bench, {
        "201307251": "Yes.",  # yes: trailing period stripped, lower-cased -> "yes": right
        "201640614": "Left...",  # left: every trailing period stripped: right
        "202225914": "The girl",  # girl: "the girl" is not "girl": wrong
        "20968379": "NO",  # no: lower-cased: right
        "20059891": "blue",  # red, but not balanced: not scored
    })
    assert metrics["score"] == pytest.approx(100 * 3 / 4)
    assert metrics["accuracy_structural_verify"] == pytest.approx(100 * 2 / 2)
    assert metrics["accuracy_structural_query"] == pytest.approx(100 * 1 / 2)  # the unbalanced query left out
    assert metrics["accuracy_semantic_rel"] == pytest.approx(100 * 1 / 2)
    assert "accuracy_semantic_attr" not in metrics  # its only question is unbalanced


# -- ScienceQA ----------------------------------------------------------------------------------------------------
def test_scienceqa_img_accuracy_with_llava_letter_reading(tmp_path, images):
    bench = build("scienceqa", tmp_path, images)
    assert [q.question_id for q in bench.questions] == ["5", "7", "9", "11", "13", "15"]  # 17 has no image
    first = bench.questions[0]  # "<image>" at the end of the conversation: removed, the letter line appended
    assert first.text == "Context: N/A\nWhich choice is right for problem 5?\nA. iron\nB. glass\nC. wood\n" + \
        LETTER_ANSWER
    assert first.prompt == "<image>\n" + first.text
    metrics = scored(bench, {
        "5": "B",  # answer B: a letter: right
        "7": "A. attract",  # A: "<letter>. ...": right
        "9": "The answer is C.",  # C: one "The answer is X.": right
        "11": "The answer is A. The answer is B.",  # A: two "The answer is" -> FAILED: wrong
        "13": "E",  # C (3 choices): E is past the choices: wrong
        "15": "The answer is B",  # B: the pattern needs a character after the letter -> FAILED: wrong
    })
    assert metrics["score"] == pytest.approx(100 * 3 / 6)
    assert metrics["n_img"] == 6


def test_scienceqa_letter_forms():
    assert letter("B") == "B" and letter("B. glass") == "B" and letter("The answer is C.") == "C"
    assert letter("B.") is None  # too short for "<letter>. " and no "The answer is"
    assert letter("b") is None and letter("(B)") is None
    assert letter("The answer is A. The answer is B.") is None
    assert letter("The answer is F!") == "F"  # read, then wrong as past the choices


# -- MMBench ------------------------------------------------------------------------------------------------------
def test_mmbench_questions_read_from_the_tsv_as_llava_builds_them(tmp_path, images):
    bench = build("mmbench", tmp_path, images)
    rows = {q.question_id: q for q in bench.questions}
    assert sorted(rows) == [0, 1, 2, 1000000, 1000001, 1000002, 2000000, 2000001, 2000002, 3000000, 3000002]
    hinted = rows[2]  # the hint, quoted by the TSV writer for its quote and newline, goes before the question
    assert hinted.text == 'The sign says "meow"\nin big letters.\nWhich animal is named?\nA. cat\nB. dog\nC. bird\n' \
        'D. fish\n' + LETTER_ANSWER
    assert hinted.prompt + "\n" + LETTER_ANSWER == hinted.text and hinted.answer == "D"
    three = rows[1000001]  # only A-C: the empty D column ends the options; the options rotated one place
    assert three.text == "Where is the cat?\nA. right\nB. middle\nC. left\n" + LETTER_ANSWER
    assert three.answer == "C" and three.kind == "object_localization"
    record = bench.record(three, "C", "m", 4)
    assert (record["round_id"], record["options"], record["option_char"]) == (0, ["right", "middle", "left"],
                                                                              ["A", "B", "C"])
    assert three.load_image().size == (32, 32)


def test_mmbench_circular_accuracy_one_wrong_rotation_fails_the_question(tmp_path, images):
    bench = build("mmbench", tmp_path, images)
    metrics = scored(bench, {
        0: "B",  # answer B: right
        1000000: "A",  # A: right
        2000000: "The answer is D",  # D: the only option letter among the words, within the last four: right
        3000000: "C. blue",  # C: right
        1: "A",  # A: right
        1000001: "C",  # C: right
        2000001: "D",  # B: no option D here (A-C only), no option text in "d": unmatched, wrong
        2: "D",  # D: right
        1000002: "C",  # C: right
        2000002: "I choose B",  # B: "I" is no option letter, B is: right
        3000002: "Fish.",  # A (fish): no letter, the text of exactly one option: right
    })
    # circular: question 0 right in all 4 rotations, 1 wrong in one, 2 right in all 4 -> 2/3; vanilla: 10 of 11 rows
    assert metrics["score"] == pytest.approx(100 * 2 / 3)
    assert metrics["vanilla"] == pytest.approx(100 * 10 / 11)
    assert metrics["n_circular_questions"] == 3
    assert metrics["circular_object_localization"] == pytest.approx(0)
    assert metrics["circular_ocr"] == pytest.approx(100)


def test_mmbench_rule_based_matching_quirks():
    choices = {"A": "blue car", "B": "red car", "C": "green car"}
    assert matched_option("A red car.", choices) == "A"  # the article is read as the letter A
    assert matched_option("B or C", choices) is None  # two letters, no "answer is", no option text alone
    assert matched_option("The correct answer is **C**, green", choices) == "C"
    assert matched_option("B is what I would pick as the answer", choices) is None  # B not in the last four words
    assert matched_option("Sorry, I can't help with images of people yet.", choices) == "Z"
    assert matched_option("red car", choices) == "B"  # no letter: the one option text it contains


def test_mmbench_broken_base64_image_is_a_one_line_error_naming_the_row(tmp_path, images):
    overrides = FIXTURES["mmbench"](tmp_path, images)
    tsv = tmp_path / "mmbench" / "mmbench_dev_20230712.tsv"
    lines = tsv.read_text(encoding="utf-8").split("\n")
    fields = lines[5].split("\t")  # the row of index 1 (header, then the four rows of question 0)
    assert fields[0] == "1"
    fields[9] = "not*base64!"
    lines[5] = "\t".join(fields)
    tsv.write_text("\n".join(lines), encoding="utf-8")
    bench = benchmark(data_config(overrides, tmp_path / "cache"))
    message = one_line_error(lambda: bench.questions)
    assert "line 6" in message and "index 1)" in message and "image" in message


def test_mmbench_test_split_writes_the_submission_xlsx(tmp_path, images):
    from openpyxl import load_workbook

    bench = build("mmbench_test", tmp_path, images)
    pairs, missing = match(bench.questions, records(bench, {0: "B", 1000001: "The answer is C", 2: "D"}), "answers")
    assert missing == 8 and bench.score(pairs)["score"] is None  # no answer column: the server scores it
    path = bench.submission(pairs, tmp_path)
    assert path.name == "mmbench_test_en_20231003_submission.xlsx"
    sheet = load_workbook(path).active
    table = [list(row) for row in sheet.iter_rows(values_only=True)]
    # the TSV's columns but hint, category, image, source, l2-category, comment; the prediction inserted 7th
    assert table[0] == ["index", "question", "A", "B", "C", "D", "prediction", "split"]
    assert [row[0] for row in table[1:]] == [0, 1000000, 2000000, 3000000, 1, 1000001, 2000001, 2, 1000002,
                                             2000002, 3000002]
    by_index = {row[0]: row for row in table[1:]}
    assert by_index[0] == [0, "What color is the car?", "red", "blue", "green", "white", "B", "test"]
    assert by_index[1000001] == [1000001, "Where is the cat?", "right", "middle", "left", None,
                                 "The answer is C", "test"]
    assert by_index[2][6] == "D" and by_index[1][6] is None  # unanswered rows: empty prediction


# -- VQAv2 --------------------------------------------------------------------------------------------------------
def test_vqav2_val_official_evaluation(tmp_path, images):
    bench = build("vqav2_val", tmp_path, images)
    assert bench.questions[0].text == "How many dogs?\nAnswer the question using a single word or phrase."
    metrics = scored(bench, {
        1000: "Two.",  # 2 x10 agree (nothing processed): EvalAI gives "2": 10 match: 1
        1001: "two",  # two x10 agree: unprocessed "two" never equals the answer's "2": 0
        1002: "2",  # disagreeing references processed: two -> 2 (x4), three -> 3: each left-out subset has 3+: 1
        1003: "Black and white",  # processed: both black(-)and white match: left-out match 1/3 (x2), gray 2/3 (x8)
        1004: "No, it is not.",  # "no it is not" is none of yes / no: 0
    })
    per_question = [1, 0, 1, (2 * 1 / 3 + 8 * 2 / 3) / 10, 0]
    assert metrics["score"] == round(100 * sum(per_question) / 5, 2)
    assert metrics["accuracy_number"] == round(100 * (1 + 0 + 1) / 3, 2)
    assert metrics["accuracy_other"] == round(100 * 0.6, 2)
    assert metrics["accuracy_yes/no"] == 0


def test_vqav2_test_dev_writes_the_submission_of_every_test2015_question(tmp_path, images):
    bench = build("vqav2_testdev", tmp_path, images)
    assert len(bench.questions) == 4
    pairs, missing = match(bench.questions, records(bench, {
        262144000: "Yes, it is!",  # comma and "!" removed -> "yes it is"
        262144001: "Two.",  # -> "2"
        262145000: "The Black-and-White cat",  # article dropped, hyphens as spaces -> "black and white cat"
    }), "answers")
    assert missing == 1 and bench.score(pairs)["score"] is None
    path = bench.submission(pairs, tmp_path)
    assert json.loads(path.read_text()) == [  # llava_vqav2_mscoco_test2015.jsonl's order, '' where not answered
        {"question_id": 262144000, "answer": "yes it is"}, {"question_id": 262147000, "answer": ""},
        {"question_id": 262144001, "answer": "2"}, {"question_id": 262145000, "answer": "black and white cat"},
        {"question_id": 262146000, "answer": ""}, {"question_id": 262148000, "answer": ""}]


# -- VizWiz -------------------------------------------------------------------------------------------------------
def test_vizwiz_val_soft_accuracy_references_as_given(tmp_path, images):
    bench = build("vizwiz_val", tmp_path, images)
    assert bench.questions[0].text == "What is this?\nWhen the provided information is insufficient, respond with " \
        "'Unanswerable'.\nAnswer the question using a single word or phrase."
    metrics = scored(bench, {
        "VizWiz_val_00000000.jpg": "Unanswerable",  # -> "unanswerable": 7 match: 1
        "VizWiz_val_00000001.jpg": "Coca Cola",  # -> "coca cola": only the two lower-case references match:
        # left-out match 1/3 (x2), others 2/3 (x8)
        "VizWiz_val_00000002.jpg": "two",  # -> "2": 10 match: 1
        "VizWiz_val_00000003.jpg": "A can of soup.",  # -> "can of soup": 0
    })
    assert metrics["score"] == round(100 * (1 + (2 * 1 / 3 + 8 * 2 / 3) / 10 + 1 + 0) / 4, 2)
    assert metrics["accuracy_other"] == round(100 * (0.6 + 0) / 2, 2)
    assert metrics["accuracy_unanswerable"] == 100 and metrics["accuracy_number"] == 100


def test_vizwiz_test_writes_the_submission_naming_each_image(tmp_path, images):
    bench = build("vizwiz_test", tmp_path, images)
    pairs, missing = match(bench.questions, records(bench, {"VizWiz_test_00000000.jpg": "Unanswerable.",
                                                            "VizWiz_test_00000001.jpg": "Dark blue!"}), "answers")
    assert missing == 1 and bench.score(pairs)["score"] is None
    assert json.loads(bench.submission(pairs, tmp_path).read_text()) == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "unanswerable"},
        {"image": "VizWiz_test_00000001.jpg", "answer": "dark blue"},
        {"image": "VizWiz_test_00000002.jpg", "answer": ""}]


def test_vizwiz_submission_names_the_image_field_not_the_question_id(tmp_path, images):
    """LLaVA's converter writes each question's `image`; a question file whose ids are not file names keeps them."""
    overrides = FIXTURES["vizwiz_test"](tmp_path, images)
    questions = tmp_path / "vizwiz" / "llava_test.jsonl"
    lines = [json.loads(line) for line in questions.read_text().splitlines()]
    questions.write_text("".join(json.dumps({**line, "question_id": n}) + "\n" for n, line in enumerate(lines)))
    bench = benchmark(data_config(overrides, tmp_path / "cache"))
    pairs, _ = match(bench.questions, records(bench, {1: "Red"}), "answers")
    assert json.loads(bench.submission(pairs, tmp_path).read_text())[1] == {"image": "VizWiz_test_00000001.jpg",
                                                                          "answer": "red"}


# -- SEED-Bench ---------------------------------------------------------------------------------------------------
def test_seed_bench_image_accuracy_exact_letter(tmp_path, images):
    bench = build("seed_bench", tmp_path, images)
    assert [q.question_id for q in bench.questions] == [101669, 101670, 101671, 101672]  # the video one not asked
    metrics = scored(bench, {
        101669: "A",  # answer A: right
        101670: "B.",  # B: not exactly "B": wrong
        101671: "C",  # C: right
        101672: "The answer is D",  # D: wrong
    })
    assert metrics["score"] == pytest.approx(100 * 2 / 4)
    assert metrics["accuracy_Instances Counting"] == pytest.approx(100)
    assert metrics["accuracy_Scene Understanding"] == pytest.approx(100 * 1 / 2)
    assert metrics["accuracy_Text Understanding"] == pytest.approx(0)


# -- matching answers, errors -------------------------------------------------------------------------------------
def test_match_counts_unanswered_questions(tmp_path, images):
    bench = build("pope", tmp_path, images)
    pairs, missing = match(bench.questions, records(bench, {8: "no", 2: "no", 3: "yes"}), "answers")
    assert missing == 8 - 3
    assert [question.question_id for question, _ in pairs] == [2, 3, 8]  # question order, not the file's


def test_match_rejects_an_unknown_id_and_an_id_answered_too_often(tmp_path, images):
    bench = build("mme", tmp_path, images)
    answers = records(bench, ["yes"] * 8)
    unknown = one_line_error(lambda: match(bench.questions, [*answers, {**answers[0], "question_id": "OCR/1.jpg"}],
                                           "answers=a.jsonl"))
    assert "answers=a.jsonl" in unknown and "'OCR/1.jpg'" in unknown and "answer 9" in unknown
    again = one_line_error(lambda: match(bench.questions, [*answers[:2], answers[0]], "answers=a.jsonl"))
    assert "'artwork/10002.jpg' is answered 3 times" in again and "2 time(s)" in again


@pytest.mark.parametrize("name, skipped", [("scienceqa", "17"), ("seed_bench", "102000")])
def test_answers_to_questions_the_score_leaves_out_are_skipped_as_the_official_scripts_do(tmp_path, images, name,
                                                                                            skipped):
    """LLaVA's own answer files answer ScienceQA's text-only and SEED-Bench's video questions too; the IMG / image
    score leaves them out."""
    bench = build(name, tmp_path, images)
    answers = records(bench, ["A"] * len(bench.questions))
    extra = {**answers[0], "question_id": int(skipped) if name == "seed_bench" else skipped}
    pairs, missing = match(bench.questions, [*answers, extra], "answers")
    assert len(pairs) == len(bench.questions) and missing == 0
    assert bench.score(pairs) == bench.score(match(bench.questions, answers, "answers")[0])


def test_unknown_benchmark_lists_the_known_ones(tmp_path):
    message = one_line_error(lambda: benchmark(OmegaConf.create({"name": "mmmu", "root": str(tmp_path)})))
    assert "data=mmmu" in message
    assert all(name in message for name in BENCHMARKS) and "pope" in BENCHMARKS and "seed_bench" in BENCHMARKS


# -- processing.py ------------------------------------------------------------------------------------------------
def test_punctuation_removes_or_spaces_marks():
    assert punctuation("a,b") == "a b"  # not next to a space: a space
    assert punctuation("a, b") == "a b"  # next to a space: removed
    assert punctuation("x - y") == "x  y"
    assert punctuation("1,000 and x-y") == "1000 and xy"  # digit, comma, digit: every mark removed
    assert punctuation("3.5 m.") == "3.5 m"  # a period before a digit stays
    assert punctuation("." * 40) == "." * (40 - 32)  # re.UNICODE (32) passed as the count: 32 periods removed


def test_digits_articles():
    assert digits_articles("The Two  dogs") == "2 dogs"
    assert digits_articles("none of an apple") == "0 of apple"
    assert digits_articles("dont stop") == "don't stop"
    assert digits_articles("couldnt've") == "couldn't've"
    assert digits_articles("Im") == "im"  # the table's capitalised key never applies after lower-casing
    assert digits_articles("somebody'd") == "somebodyd"  # the table's one reversed entry
    assert digits_articles("eleven") == "eleven"  # only zero..ten


def test_evalai_answer_processor():
    assert evalai("Two.") == "2"
    assert evalai("ten dogs") == "10 dogs"
    assert evalai("black-and-white") == "black and white"
    assert evalai("1,000") == "1000"  # commas go first
    assert evalai("Man's hat?") == "man 's hat"
    assert evalai("A dog, the cat!") == "dog cat"
    assert evalai("yes\nno") == "yes no"
    assert evalai("N/A") == "n"  # "n a": the article goes


def test_soft_accuracy_leave_one_out():
    assert soft_accuracy("a", ["a"] * 10) == 1
    assert soft_accuracy("a", ["a"] * 3 + ["b"] * 7) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert soft_accuracy("a", ["a"] * 2 + ["b"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert soft_accuracy("a", ["a"] + ["b"] * 9) == pytest.approx(9 * (1 / 3) / 10)
    assert soft_accuracy("c", ["a"] * 5 + ["b"] * 5) == 0
