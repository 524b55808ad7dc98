"""Small benchmark folders in each benchmark's official file format and LLaVA-1.5's evaluation layout
(`playground/data/eval/<bench>/`, the file names conf/data/<bench>.yaml defaults to), with real image files.

`make_<bench>(directory, images)` writes the folder under `directory` (its images cycled from `images`, HxWx3 uint8
arrays) and returns the overrides that select it (`["data=pope", "data.root=..."]`, plus `data.split=` /
`data.questions=` where needed); `data_config(overrides, cache_dir)` turns them into the data config
`vlm_eff.benchmarks.benchmark` takes. FIXTURES names every maker. Each maker's docstring lists its questions with
their ground truth: tests/test_benchmarks.py computes its expected scores by hand from them.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data"
SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."


def data_config(overrides: list[str], cache_dir: Path) -> DictConfig:
    """conf/data/<name>.yaml (`data=<name>`) with the `data.<key>=<value>` overrides, caching under `cache_dir`."""
    name = next(o.split("=", 1)[1] for o in overrides if o.startswith("data="))
    config = OmegaConf.load(CONF_DATA / f"{name}.yaml")
    config.cache_dir = str(cache_dir)
    keys = OmegaConf.from_dotlist([o[len("data."):] for o in overrides if o.startswith("data.")])
    return OmegaConf.merge(config, keys)


def save_image(path: Path, images: list[np.ndarray], number: int) -> Path:
    """images[number % len(images)] written to `path` (PNG or JPEG by its suffix), folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(images[number % len(images)]).save(path)
    return path


def write_jsonl(path: Path, items: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")


# -- POPE -------------------------------------------------------------------------------------------------------------
POPE_QUESTIONS = [  # (llava question_id, category, object, label), in llava_pope_test.jsonl's order
    (1, "adversarial", "dog", "yes"), (2, "adversarial", "cat", "no"), (3, "popular", "car", "yes"),
    (4, "adversarial", "bench", "yes"), (5, "adversarial", "chair", "no"), (6, "popular", "cup", "no"),
    (7, "random", "bird", "yes"), (8, "random", "kite", "no")]


def make_pope(directory: Path, images: list[np.ndarray]) -> list[str]:
    """pope/: llava_pope_test.jsonl (categories interleaved), val2014/COCO_val2014_*.jpg and POPE's
    coco/coco_pope_{adversarial,popular,random}.json (one JSON object a line, label yes / no, in the category's
    question order). Questions (question_id, category, "Is there a <object> in the image?", label):
    1 adversarial dog yes, 2 adversarial cat no, 3 popular car yes, 4 adversarial bench yes, 5 adversarial chair no,
    6 popular cup no, 7 random bird yes, 8 random kite no."""
    root = directory / "pope"
    llava, per_category = [], {}
    for number, (qid, category, thing, label) in enumerate(POPE_QUESTIONS):
        image = f"COCO_val2014_{100 + number:012d}.jpg"
        save_image(root / "val2014" / image, images, number)
        question = f"Is there a {thing} in the image?"
        llava.append({"question_id": qid, "image": image, "text": question + "\n" + SHORT, "category": category})
        lines = per_category.setdefault(category, [])
        lines.append({"question_id": len(lines) + 1, "image": image, "text": question, "label": label})
    write_jsonl(root / "llava_pope_test.jsonl", llava)
    for category, lines in per_category.items():
        write_jsonl(root / "coco" / f"coco_pope_{category}.json", lines)
    return ["data=pope", f"data.root={root}"]


# -- MME --------------------------------------------------------------------------------------------------------------
MME_QUESTIONS = [  # (subtask, image file, question as the release has it, answer), two a image, consecutive
    ("artwork", "10002.jpg", "Is this artwork created by Vincent van Gogh? Please answer yes or no.", "Yes"),
    ("artwork", "10002.jpg", "Is this artwork created by Claude Monet? Please answer yes or no.", "No"),
    ("existence", "000000006040.jpg", "Is there a train in this image? Please answer yes or no.", "Yes"),
    ("existence", "000000006040.jpg", "Is there a bed in this image? Please answer yes or no.", "No"),
    ("existence", "000000018150.jpg", "Is there a bowl in this image?  Please answer yes or no.", "Yes"),
    ("existence", "000000018150.jpg", "Is there a cat in this image? Please answer yes or no.", "No"),
    ("code_reasoning", "0020.png", "Is a python code shown in the picture? Please answer yes or no.", "Yes"),
    ("code_reasoning", "0020.png", "Is a c++ code shown in the picture? Please answer yes or no.", "No")]
MME_IMAGES_FOLDER = ("artwork",)  # subtasks laid out as images/ + questions_answers_YN/; the others: .txt beside


def make_mme(directory: Path, images: list[np.ndarray]) -> list[str]:
    """MME/: llava_mme.jsonl (question_id "<subtask>/<image>", the question without " Please answer yes or no."
    plus the short-answer line, category) and MME_Benchmark_release_version/ with both layouts: artwork/images/ +
    artwork/questions_answers_YN/, and existence/, code_reasoning/ with each image's .txt beside it ("question<TAB>
    Yes|No" lines; the 000000018150 bowl question has the release's two spaces before "Please").
    Questions in order: artwork 10002 (Vincent: Yes, Monet: No), existence 000000006040 (train: Yes, bed: No),
    existence 000000018150 (bowl: Yes, cat: No), code_reasoning 0020.png (python: Yes, c++: No)."""
    root = directory / "MME"
    release = root / "MME_Benchmark_release_version"
    llava, truth = [], {}
    for number, (subtask, file, question, answer) in enumerate(MME_QUESTIONS):
        image = f"{subtask}/images/{file}" if subtask in MME_IMAGES_FOLDER else f"{subtask}/{file}"
        txt = (f"{subtask}/questions_answers_YN/" if subtask in MME_IMAGES_FOLDER else f"{subtask}/") + \
            file.rsplit(".", 1)[0] + ".txt"
        if not (release / image).is_file():
            save_image(release / image, images, number)
        truth.setdefault(txt, []).append(f"{question}\t{answer}")
        asked = question.replace("Please answer yes or no.", "").strip()
        llava.append({"question_id": f"{subtask}/{file}", "image": image, "text": asked + "\n" + SHORT,
                      "category": subtask})
    for txt, lines in truth.items():
        (release / txt).parent.mkdir(parents=True, exist_ok=True)
        (release / txt).write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_jsonl(root / "llava_mme.jsonl", llava)
    return ["data=mme", f"data.root={root}"]


# -- TextVQA ----------------------------------------------------------------------------------------------------------
TEXTVQA_QUESTIONS = [  # (image_id, question, OCR tokens or None, the ten answers)
    ("003a8ae2ef43b901", "what is the brand of this camera?", ["dakota", "digital"],
     ["dakota"] * 7 + ["dakota digital"] * 2 + ["Dakota."]),
    ("003a8ae2ef43b901", "how many lenses are shown?", ["dakota", "digital"], ["two"] * 2 + ["2"] + ["three"] * 7),
    ("00685bc495504d61", "what number is on the jersey?", None, ["1,000", "1000"] + ["10"] * 8),
    ("0068a1e2a0a2d4f0", "what colors is the sign?", ["stop"],
     ["black and white"] * 4 + ["black-and-white"] * 2 + ["white"] * 4),
    ("0068a1e2a0a2d4f0", "how many dogs are on the sign?", ["stop"], ["10 dogs"] + ["10"] * 9),
    ("0072e6b3c4f50e9d", "what animal is on the can?", ["meow"], ["cat"] * 10)]


def make_textvqa(directory: Path, images: list[np.ndarray]) -> list[str]:
    """textvqa/: llava_textvqa_val_v051_ocr.jsonl (question_id = the image id, repeated for an image's two questions;
    text = question, "Reference OCR token: ..." line where the image has tokens, short-answer line),
    train_images/<image_id>.jpg and TextVQA_0.5.1_val.json. Questions (image, question: the ten answers):
    003a8ae2ef43b901 brand: dakota x7, dakota digital x2, "Dakota."; 003a8ae2ef43b901 lenses: two x2, 2, three x7;
    00685bc495504d61 jersey (no OCR line): "1,000", "1000", 10 x8; 0068a1e2a0a2d4f0 colors: black and white x4,
    black-and-white x2, white x4; 0068a1e2a0a2d4f0 dogs: "10 dogs", 10 x9; 0072e6b3c4f50e9d animal: cat x10."""
    root = directory / "textvqa"
    llava, data = [], []
    for number, (image_id, question, tokens, answers) in enumerate(TEXTVQA_QUESTIONS):
        image = root / "train_images" / f"{image_id}.jpg"
        if not image.is_file():
            save_image(image, images, number)
        ocr = [f"Reference OCR token: {', '.join(tokens)}"] if tokens else []
        llava.append({"question_id": image_id, "image": f"{image_id}.jpg", "text": "\n".join([question, *ocr, SHORT])})
        data.append({"question": question, "image_id": image_id, "image_classes": ["Poster"], "image_width": 32,
                     "image_height": 32, "answers": answers, "question_tokens": question.rstrip("?").split(),
                     "question_id": 34602 + number, "set_name": "val"})
    write_jsonl(root / "llava_textvqa_val_v051_ocr.jsonl", llava)
    write_json(root / "TextVQA_0.5.1_val.json", {"dataset_type": "val", "dataset_name": "textvqa",
                                                  "dataset_version": "0.5.1", "data": data})
    return ["data=textvqa", f"data.root={root}"]


# -- GQA --------------------------------------------------------------------------------------------------------------
GQA_QUESTIONS = [  # (question id, image id, question, answer, isBalanced, structural, semantic)
    ("201307251", "n161313", "Is it an outdoors scene?", "yes", True, "verify", "global"),
    ("201640614", "n235859", "On which side is the car?", "left", True, "query", "rel"),
    ("202225914", "n288870", "Who is wearing the shirt?", "girl", True, "query", "rel"),
    ("20968379", "n288870", "Is there a fence?", "no", True, "verify", "obj"),
    ("20059891", "n235859", "What color is the car?", "red", False, "query", "attr")]


def make_gqa(directory: Path, images: list[np.ndarray]) -> list[str]:
    """gqa/: llava_gqa_testdev_balanced.jsonl, data/images/<imageId>.jpg and GQA's
    data/testdev_balanced_questions.json (question id -> question, imageId, answer, isBalanced, types, ...).
    Questions (id: answer, balanced, structural/semantic type): 201307251: yes, balanced, verify/global;
    201640614: left, balanced, query/rel; 202225914: girl, balanced, query/rel; 20968379: no, balanced, verify/obj;
    20059891: red, NOT balanced, query/attr."""
    root = directory / "gqa"
    llava, gold = [], {}
    for number, (qid, image_id, question, answer, balanced, structural, semantic) in enumerate(GQA_QUESTIONS):
        image = root / "data" / "images" / f"{image_id}.jpg"
        if not image.is_file():
            save_image(image, images, number)
        llava.append({"question_id": qid, "image": f"{image_id}.jpg", "text": question + "\n" + SHORT})
        gold[qid] = {"semantic": [], "entailed": [], "equivalent": [qid], "question": question, "imageId": image_id,
                     "isBalanced": balanced, "groups": {"global": None, "local": "10q-shirt_wear"}, "answer": answer,
                     "semanticStr": "", "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
                     "types": {"detailed": f"{semantic}{structural.capitalize()}", "semantic": semantic,
                               "structural": structural}, "fullAnswer": f"The answer is {answer}."}
    write_jsonl(root / "llava_gqa_testdev_balanced.jsonl", llava)
    write_json(root / "data" / "testdev_balanced_questions.json", gold)
    return ["data=gqa", f"data.root={root}"]


# -- ScienceQA --------------------------------------------------------------------------------------------------------
SCIENCEQA_PROBLEMS = [  # (problem id, has an image, choices, answer index)
    ("5", True, ["iron", "glass", "wood"], 1), ("7", True, ["attract", "repel", "neither", "both"], 0),
    ("9", True, ["Asia", "Africa", "Europe"], 2), ("11", True, ["yes", "no"], 0),
    ("13", True, ["rough", "smooth", "soft"], 2), ("15", True, ["a solid", "a liquid"], 1),
    ("17", False, ["true", "false"], 0)]


def make_scienceqa(directory: Path, images: list[np.ndarray]) -> list[str]:
    """scienceqa/: llava_test_CQM-A.json (LLaVA's conversations; entries with an image have "image":
    "<id>/image.png" and "<image>" in the question), images/test/<id>/image.png, ScienceQA's problems.json and
    pid_splits.json. Problems (id: choices, answer): 5: 3 choices, B; 7: 4, A; 9: 3, C; 11: 2, A; 13: 3, C;
    15: 2, B; 17 (text only, not asked): 2, A."""
    root = directory / "scienceqa"
    entries, problems = [], {}
    for number, (pid, has_image, choices, answer) in enumerate(SCIENCEQA_PROBLEMS):
        question = f"Which choice is right for problem {pid}?"
        options = "\n".join(f"{'ABCDE'[i]}. {choice}" for i, choice in enumerate(choices))
        value = f"Context: N/A\n{question}\n{options}"
        entry = {"id": pid, "conversations": [{"from": "human", "value": value},
                                              {"from": "gpt", "value": "ABCDE"[answer]}]}
        if has_image:
            save_image(root / "images" / "test" / pid / "image.png", images, number)
            entry["image"] = f"{pid}/image.png"
            entry["conversations"][0]["value"] = f"<image>\n{value}" if number % 2 else f"{value}\n<image>"
        entries.append(entry)
        problems[pid] = {"question": question, "choices": choices, "answer": answer, "hint": "",
                         "image": "image.png" if has_image else None, "task": "closed choice", "grade": "grade3",
                         "subject": "natural science", "topic": "physics", "category": "Materials",
                         "skill": "Identify materials", "lecture": "", "solution": "", "split": "test"}
    write_json(root / "llava_test_CQM-A.json", entries)
    write_json(root / "problems.json", problems)
    write_json(root / "pid_splits.json", {"train": [], "val": [], "test": [pid for pid, *_ in SCIENCEQA_PROBLEMS],
                                          "trainval": [], "minitrain": [], "minival": [], "minitest": []})
    return ["data=scienceqa", f"data.root={root}"]


# -- MMBench ----------------------------------------------------------------------------------------------------------
MMBENCH_QUESTIONS = [  # (index, hint or None, question, options, answer letter, category)
    (0, None, "What color is the car?", ["red", "blue", "green", "white"], "B", "attribute_recognition"),
    (1, None, "Where is the cat?", ["left", "right", "middle"], "A", "object_localization"),
    (2, 'The sign says "meow"\nin big letters.', "Which animal is named?", ["cat", "dog", "bird", "fish"], "D", "ocr")]
MMBENCH_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
                   "l2-category", "comment", "split"]


def mmbench_rows(images: list[np.ndarray], split: str) -> list[dict]:
    """Every question of MMBENCH_QUESTIONS and its circular copies (index + k x 1,000,000: the options rotated k
    places, the answer letter with them), as TSV rows."""
    rows = []
    for number, (index, hint, question, options, answer, category) in enumerate(MMBENCH_QUESTIONS):
        buffer = io.BytesIO()
        Image.fromarray(images[number % len(images)]).save(buffer, format="JPEG")
        encoded = base64.b64encode(buffer.getvalue()).decode()
        right = options["ABCD".index(answer)]
        for k in range(len(options)):
            rotated = options[k:] + options[:k]
            rows.append({"index": index + k * 1_000_000, "question": question, "hint": hint or "",
                         **{letter: (rotated[i] if i < len(rotated) else "") for i, letter in enumerate("ABCD")},
                         "answer": "ABCD"[rotated.index(right)], "category": category, "image": encoded,
                         "source": "fixture", "l2-category": "perception", "comment": "", "split": split})
    return rows


def write_tsv(path: Path, rows: list[dict], columns: list[str]) -> None:
    """As pandas' to_csv(sep="\\t", index=False) writes it: minimal quoting (a field with a tab, a quote or a newline
    quoted, its quotes doubled), missing values empty, "\\n" line ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[row[c] for c in columns] for row in rows])


def make_mmbench(directory: Path, images: list[np.ndarray]) -> list[str]:
    """mmbench/mmbench_dev_20230712.tsv: base64 JPEG images, each question's circular copies (index + k x 1,000,000,
    the options rotated, the answer letter with them). Questions: 0 (4 options red/blue/green/white, answer B, rows
    0 B, 1000000 A, 2000000 D, 3000000 C); 1 (only A-C: left/right/middle, answer A, rows 1 A, 1000001 C,
    2000001 B); 2 (hint with an embedded quote and newline, cat/dog/bird/fish, answer D, rows 2 D, 1000002 C,
    2000002 B, 3000002 A)."""
    root = directory / "mmbench"
    write_tsv(root / "mmbench_dev_20230712.tsv", mmbench_rows(images, "dev"), MMBENCH_COLUMNS)
    return ["data=mmbench", f"data.root={root}"]


def make_mmbench_test(directory: Path, images: list[np.ndarray]) -> list[str]:
    """mmbench/mmbench_test_en_20231003.tsv: the rows of make_mmbench without the answer column (split test)."""
    root = directory / "mmbench"
    columns = [c for c in MMBENCH_COLUMNS if c != "answer"]
    write_tsv(root / "mmbench_test_en_20231003.tsv", mmbench_rows(images, "test"), columns)
    return ["data=mmbench", f"data.root={root}", "data.questions=mmbench_test_en_20231003.tsv"]


# -- VQAv2 ------------------------------------------------------------------------------------------------------------
VQAV2_TESTDEV = [(262144000, 262144, "Is the ball flying towards the batter?"),
                 (262144001, 262144, "How many players are there?"),
                 (262145000, 262145, "What color is the cat?"), (262146000, 262146, "What is on the plate?")]
VQAV2_TEST_ONLY = [(262147000, 262147, "Is it raining?"), (262148000, 262148, "What sport is this?")]


def make_vqav2_testdev(directory: Path, images: list[np.ndarray]) -> list[str]:
    """vqav2/: llava_vqav2_mscoco_test-dev2015.jsonl (question ids 262144000, 262144001, 262145000, 262146000),
    llava_vqav2_mscoco_test2015.jsonl (all of test2015: those four with 262147000 after the first and 262148000 at
    the end) and test2015/COCO_test2015_*.jpg."""
    root = directory / "vqav2"

    def line(qid, image_id, question):
        return {"question_id": qid, "image": f"COCO_test2015_{image_id:012d}.jpg", "text": question + "\n" + SHORT,
                "category": "default"}

    for number, (_, image_id, _) in enumerate(VQAV2_TESTDEV + VQAV2_TEST_ONLY):
        save_image(root / "test2015" / f"COCO_test2015_{image_id:012d}.jpg", images, number)
    write_jsonl(root / "llava_vqav2_mscoco_test-dev2015.jsonl", [line(*q) for q in VQAV2_TESTDEV])
    everything = [VQAV2_TESTDEV[0], VQAV2_TEST_ONLY[0], *VQAV2_TESTDEV[1:], VQAV2_TEST_ONLY[1]]
    write_jsonl(root / "llava_vqav2_mscoco_test2015.jsonl", [line(*q) for q in everything])
    return ["data=vqav2", f"data.root={root}", "data.split=test-dev2015"]


VQAV2_VAL = [  # (question_id, image_id, question, answer_type, the ten human answers)
    (1000, 100, "How many dogs?", "number", ["2"] * 10),
    (1001, 100, "How many cats?", "number", ["two"] * 10),
    (1002, 101, "How many birds?", "number", ["two"] * 2 + ["2"] * 2 + ["three"] * 6),
    (1003, 102, "What colors is the cow?", "other", ["black-and-white", "black and white"] + ["gray"] * 8),
    (1004, 103, "Is it sunny?", "yes/no", ["yes"] * 9 + ["no"])]


def make_vqav2_val(directory: Path, images: list[np.ndarray]) -> list[str]:
    """vqav2/: the official v2_OpenEnded_mscoco_val2014_questions.json and v2_mscoco_val2014_annotations.json (ten
    answers each, answer_type, question_type, multiple_choice_answer) and val2014/COCO_val2014_*.jpg. Questions
    (id, answer_type: the ten answers): 1000 number: 2 x10; 1001 number: two x10; 1002 number: two x2, 2 x2,
    three x6; 1003 other: black-and-white, black and white, gray x8; 1004 yes/no: yes x9, no."""
    root = directory / "vqav2"
    questions, annotations = [], []
    for number, (qid, image_id, question, answer_type, answers) in enumerate(VQAV2_VAL):
        image = root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg"
        if not image.is_file():
            save_image(image, images, number)
        questions.append({"image_id": image_id, "question": question, "question_id": qid})
        annotations.append({"question_type": " ".join(question.split()[:2]).lower(),
                            "multiple_choice_answer": max(set(answers), key=answers.count),
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                        for i, a in enumerate(answers)],
                            "image_id": image_id, "answer_type": answer_type, "question_id": qid})
    info = {"description": "fixture", "version": "2.0", "year": 2017}
    common = {"info": info, "license": {"name": "CC BY 4.0"}, "data_subtype": "val2014"}
    write_json(root / "v2_OpenEnded_mscoco_val2014_questions.json",
               {**common, "task_type": "Open-Ended", "data_type": "mscoco", "questions": questions})
    write_json(root / "v2_mscoco_val2014_annotations.json", {**common, "data_type": "mscoco",
                                                             "annotations": annotations})
    return ["data=vqav2", f"data.root={root}", "data.split=val2014"]


# -- VizWiz -----------------------------------------------------------------------------------------------------------
VIZWIZ_TEST = ["What is this?", "What color is this shirt?", "Can you read the label?"]
VIZWIZ_VAL = [  # (question, answer_type, answerable, the ten human answers)
    ("What is this?", "unanswerable", 0, ["unanswerable"] * 7 + ["blurry"] * 3),
    ("What drink is this?", "other", 1, ["coca cola"] * 2 + ["Coca Cola"] * 4 + ["coke"] * 4),
    ("How many coins are there?", "number", 1, ["2"] * 10),
    ("What is in this can?", "other", 1, ["soup"] * 10)]


def make_vizwiz_test(directory: Path, images: list[np.ndarray]) -> list[str]:
    """vizwiz/: llava_test.jsonl (question_id = image = VizWiz_test_<8 digits>.jpg, text = question, LLaVA's
    "Unanswerable" line, short-answer line) and test/VizWiz_test_*.jpg; three questions."""
    root = directory / "vizwiz"
    lines = []
    for number, question in enumerate(VIZWIZ_TEST):
        image = f"VizWiz_test_{number:08d}.jpg"
        save_image(root / "test" / image, images, number)
        lines.append({"question_id": image, "image": image, "text": "\n".join([question, UNANSWERABLE, SHORT])})
    write_jsonl(root / "llava_test.jsonl", lines)
    return ["data=vizwiz", f"data.root={root}", "data.split=test"]


def make_vizwiz_val(directory: Path, images: list[np.ndarray]) -> list[str]:
    """vizwiz/: VizWiz's val.json (image, question, ten answers with confidence, answer_type, answerable) and
    val/VizWiz_val_*.jpg. Questions (image number, answer_type: answers): 0 unanswerable: unanswerable x7,
    blurry x3; 1 other: "coca cola" x2, "Coca Cola" x4, coke x4; 2 number: 2 x10; 3 other: soup x10."""
    root = directory / "vizwiz"
    items = []
    for number, (question, answer_type, answerable, answers) in enumerate(VIZWIZ_VAL):
        image = f"VizWiz_val_{number:08d}.jpg"
        save_image(root / "val" / image, images, number)
        items.append({"image": image, "question": question,
                      "answers": [{"answer_confidence": "yes", "answer": a} for a in answers],
                      "answer_type": answer_type, "answerable": answerable})
    write_json(root / "val.json", items)
    return ["data=vizwiz", f"data.root={root}", "data.split=val"]


# -- SEED-Bench -------------------------------------------------------------------------------------------------------
SEED_TYPES = {"Scene Understanding": 1, "Instance Identity": 2, "Instance Attributes": 3, "Instance Location": 4,
              "Instances Counting": 5, "Spatial Relation": 6, "Instance Interaction": 7, "Visual Reasoning": 8,
              "Text Understanding": 9, "Action Recognition": 10, "Action Prediction": 11,
              "Procedure Understanding": 12}
SEED_QUESTIONS = [  # (question_id, data_type, question_type_id, answer)
    ("101669", "image", 5, "A"), ("101670", "image", 1, "B"), ("101671", "image", 1, "C"),
    ("101672", "image", 9, "D"), ("102000", "video", 10, "A")]


def make_seed_bench(directory: Path, images: list[np.ndarray]) -> list[str]:
    """seed_bench/: SEED-Bench.json (questions with answer, choice_a-d, data_id, data_type, question_type_id; the
    question_type name -> id map), llava-seed-bench.jsonl (integer question ids where they are numbers, as LLaVA's
    converter writes them; image relative to the folder), SEED-Bench-image/*.jpg and, for the video question, its
    middle frame SEED-Bench-video-image/*.png. Questions (id: type, answer): 101669: Instances Counting, A;
    101670: Scene Understanding, B; 101671: Scene Understanding, C; 101672: Text Understanding, D;
    102000: a video question (Action Recognition, A), not asked."""
    root = directory / "seed_bench"
    llava, questions = [], []
    for number, (qid, data_type, type_id, answer) in enumerate(SEED_QUESTIONS):
        choices = {f"choice_{c}": f"option {c}" for c in "abcd"}
        if data_type == "image":
            data_id, image = f"{qid}_2591111986.jpg", f"SEED-Bench-image/{qid}_2591111986.jpg"
        else:
            data_id, image = f"{qid}.mp4", f"SEED-Bench-video-image/{qid}.png"
        save_image(root / image, images, number)
        question = f"What does question {qid} ask?"
        questions.append({"answer": answer, **choices, "data_id": data_id, "data_type": data_type,
                          "question": question, "question_id": qid, "question_type_id": type_id})
        options = "\n".join(f"{c.upper()}. {choices[f'choice_{c}']}" for c in "abcd")
        llava.append({"image": image, "text": f"{question}\n{options}\n{LETTER}",
                      "category": next(n for n, i in SEED_TYPES.items() if i == type_id),
                      "question_id": int(qid) if qid.isdigit() else qid})
    write_json(root / "SEED-Bench.json", {"questions": questions, "question_type": SEED_TYPES})
    write_jsonl(root / "llava-seed-bench.jsonl", llava)
    return ["data=seed_bench", f"data.root={root}"]


FIXTURES = {"pope": make_pope, "mme": make_mme, "textvqa": make_textvqa, "gqa": make_gqa,
            "scienceqa": make_scienceqa, "mmbench": make_mmbench, "mmbench_test": make_mmbench_test,
            "vqav2_testdev": make_vqav2_testdev, "vqav2_val": make_vqav2_val, "vizwiz_test": make_vizwiz_test,
            "vizwiz_val": make_vizwiz_val, "seed_bench": make_seed_bench}
