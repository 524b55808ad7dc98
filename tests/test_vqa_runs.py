"""Real runs of the vqa protocol at the size benchmarks come in, as a user starts them: a saved tiny LLaVA with its
processor answering real CIFAR-10 images; a run killed with SIGKILL and started again answers only what is missing;
two gloo processes answer like one; `python -m vlm_eff.score` scores the answers as evaluate.py did; greedy answers
at batch 8 with left padding equal those at batch 1; profile.py runs every shipped VLM and every tiny layout."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import N_QUESTIONS, ROOT, run_script
from vlm_requests import LAYOUTS, requests

from vlm_eff.generation import Runner
from vlm_eff.results import read_results


def command(tiny_llava_dir, question_set, run, *overrides, work_dir=None):
    return ["evaluate.py", "protocol=vqa", "model=llava_tiny", f"model.path={tiny_llava_dir}", "model.weights=pretrained",
            "data=vqa", f"data.root={question_set / 'images'}", f"data.questions={question_set / 'questions.jsonl'}",
            "data.batch_size=4", "data.num_workers=0", "protocol.max_new_tokens=6", "logger=none",
            f"paths.work_dir={work_dir or run.parent}", f"hydra.run.dir={run}", *overrides]


@pytest.fixture(scope="module")
def uninterrupted(tiny_llava_dir, question_set, tmp_path_factory):
    """One whole run: its run dir and its output."""
    run = tmp_path_factory.mktemp("whole") / "run"
    result = run_script(*command(tiny_llava_dir, question_set, run, "data.num_workers=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return run, result


def test_a_whole_run_streams_answers_and_shows_its_progress(uninterrupted, tiny_llava_dir):
    run, result = uninterrupted
    answers = [json.loads(line) for line in (run / "answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == list(range(N_QUESTIONS))
    assert all(a["visual_tokens"] == 64 and a["model_id"] == tiny_llava_dir.name for a in answers)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["benchmark"] == "vqa" and metrics["n_answered"] == N_QUESTIONS and metrics["score"] is not None
    (row,) = read_results(run / "results.csv")
    assert row["benchmark"] == "vqa" and float(row["benchmark_score"]) == pytest.approx(metrics["score"])
    assert "[evaluate] first batch took" in result.stderr and "the other 15 batches: about" in result.stderr
    assert f"[evaluate] done: {N_QUESTIONS} requests in 16 batches" in result.stderr


def wait_for_answers(path, at_least: int, process, timeout_s: float = 120) -> int:
    """Poll a part file until it holds `at_least` lines (the run still going); returns how many it had."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file():
            lines = path.read_bytes().count(b"\n")
            if lines >= at_least:
                return lines
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    raise AssertionError(f"{path} never reached {at_least} answers")


def start(args, env=None):
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "WANDB_MODE": "offline", **(env or {})})


def kill_mid_run(args, run) -> int:
    """Start a run, SIGKILL it once a few batches are answered; returns the answers it had written."""
    process = start(args)
    done = wait_for_answers(run / "answers.parts" / "rank-0.jsonl", 8, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "answers.jsonl").exists()  # killed before the end
    return done


def test_a_run_killed_with_sigkill_and_started_again_answers_only_what_is_missing(
        tiny_llava_dir, question_set, uninterrupted, tmp_path):
    whole = (uninterrupted[0] / "answers.jsonl").read_text()
    run = tmp_path / "killed"
    args = command(tiny_llava_dir, question_set, run)
    done = kill_mid_run(args, run)
    again = run_script(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"continuing the answers in {run}" in again.stdout
    left = int(again.stdout.split("questions answered there, ")[1].split()[0])
    assert done <= N_QUESTIONS - left < N_QUESTIONS  # what was on disk at the kill (or a batch more) was kept
    assert f"[evaluate] done: {left} requests" in again.stderr  # only the missing ones asked
    assert (run / "answers.jsonl").read_text() == whole  # each question once, in question order, the same answers
    assert json.loads((run / "metrics.json").read_text()) == json.loads((uninterrupted[0] / "metrics.json").read_text())

    other = run_script(*args, "protocol.max_new_tokens=3")  # the same run dir, other settings: refused
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1] == (f"error: {run} holds the answers of another configuration (it "
                                                    "differs in protocol.max_new_tokens); give another run dir, or "
                                                    "resume=false to answer again there")


def test_resume_true_continues_the_latest_unfinished_run_of_the_same_settings(
        tiny_llava_dir, question_set, uninterrupted, tmp_path):
    killed = tmp_path / "outputs" / "2026-01-01" / "00-00-00"  # where Hydra puts runs under paths.work_dir
    kill_mid_run(command(tiny_llava_dir, question_set, killed, work_dir=tmp_path), killed)
    fresh = tmp_path / "outputs" / "2026-01-01" / "00-00-01"
    result = run_script(*command(tiny_llava_dir, question_set, fresh, "resume=true", work_dir=tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"continuing the answers in {killed}" in result.stdout
    assert (killed / "answers.jsonl").read_text() == (uninterrupted[0] / "answers.jsonl").read_text()


def test_two_gloo_processes_answer_and_score_like_one(tiny_llava_dir, question_set, uninterrupted, tmp_path):
    run = tmp_path / "ddp"
    result = run_script(*command(tiny_llava_dir, question_set, run, "trainer.devices=2"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in output and "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    parts = [(run / "answers.parts" / f"rank-{r}.jsonl").read_text().splitlines() for r in (0, 1)]
    assert [len(p) for p in parts] == [N_QUESTIONS // 2] * 2  # shared out, no sampler padding
    assert (run / "answers.jsonl").read_text() == (uninterrupted[0] / "answers.jsonl").read_text()
    assert json.loads((run / "metrics.json").read_text()) == json.loads((uninterrupted[0] / "metrics.json").read_text())
    assert len(read_results(run / "results.csv")) == 1  # global rank 0 alone writes the row


def test_score_cli_scores_the_answers_as_evaluate_did(question_set, uninterrupted, tmp_path):
    run = uninterrupted[0]
    data = ["data=vqa", f"data.root={question_set / 'images'}", f"data.questions={question_set / 'questions.jsonl'}",
            "logger=none", f"paths.work_dir={tmp_path}"]
    scored = run_script("-m", "vlm_eff.score", *data, f"answers={run / 'answers.jsonl'}", f"hydra.run.dir={tmp_path / 's'}")
    assert scored.returncode == 0, scored.stderr[-3000:]
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert metrics == json.loads((run / "metrics.json").read_text())
    (row,) = read_results(tmp_path / "s" / "results.csv")
    assert row["task"] == "score" and float(row["benchmark_score"]) == pytest.approx(metrics["score"])

    part = tmp_path / "part.jsonl"
    part.write_text("".join((run / "answers.jsonl").read_text().splitlines(keepends=True)[:40]))
    scored = run_script("-m", "vlm_eff.score", *data, f"answers={part}", f"hydra.run.dir={tmp_path / 'p'}")
    assert scored.returncode == 0 and "24 of 64 questions have no answer: scored on the 40 answered" in scored.stdout
    assert json.loads((tmp_path / "p" / "metrics.json").read_text())["n_missing"] == 24
    strict = run_script("-m", "vlm_eff.score", *data, f"answers={part}", "strict=true", f"hydra.run.dir={tmp_path / 't'}")
    assert strict.returncode == 2 and strict.stderr.strip().splitlines()[-1] == (
        f"error: answers={part} answers 40 of the 64 questions of data=vqa (24 missing); strict=false scores what is "
        "there")


@pytest.mark.parametrize("name", LAYOUTS)
def test_greedy_answers_at_batch_8_with_left_padding_equal_those_at_batch_1(tiny_vlms, name):
    model = tiny_vlms[name]
    prefixes = (3, 9, 1, 6, 12, 2, 7, 4)
    rows, images = requests(model, prefixes)
    runner = Runner(model)
    together = runner.generate(rows, images, 5, stop_at_eos=False).tokens  # [8, 5]
    layout_keys = {"llava": ("pixel_values",), "llava_onevision": ("pixel_values", "image_sizes")}
    for b in range(len(prefixes)):
        if name == "qwen2_vl_tiny":  # flattened patches: each image's own rows of pixel_values
            counts = images["image_grid_thw"].prod(-1).tolist()
            start = sum(counts[:b])
            alone = {"pixel_values": images["pixel_values"][start: start + counts[b]],
                     "image_grid_thw": images["image_grid_thw"][b: b + 1]}
        else:
            alone = {k: images[k][b: b + 1] for k in layout_keys[runner.layout.name]}
        single = runner.generate([rows[b]], alone, 5, stop_at_eos=False).tokens  # [1, 5]
        assert torch.equal(single[0], together[b]), (name, b)


PROFILED = ["tiny_llava_cifar10", "tiny_llava_siglip_cifar10", "llava_tiny", "onevision_tiny", "qwen2_vl_tiny"]


@pytest.mark.parametrize("name", PROFILED)
def test_profile_times_every_shipped_vlm_and_every_tiny_layout_with_a_valid_request(name, tmp_path):
    """The request is valid for the model (its processor and chat template, or ids inside its vocabulary: a 46-word
    model once died with an IndexError); the first batch says how long the rest will take."""
    result = run_script("profile.py", f"model={name}", "runs=2", "warmup=1", "gen_tokens=2", "data.batch_size=2",
                        "logger=none", f"paths.work_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    shipped = (ROOT / "checkpoints" / name).is_dir()
    assert ("prompt from the model's processor and chat template" if shipped else
            "prompt from ids drawn inside the vocabulary") in result.stdout
    assert "[profile] first batch took" in result.stderr and "the other 2 batches: about" in result.stderr
    (row,) = read_results(tmp_path / "run" / "results.csv")
    assert float(row["ttft_ms"]) > 0 and int(row["n_images"]) == 4


def test_profile_model_path_takes_any_small_vlm_checkpoint_with_its_processor(tiny_llava_dir, tmp_path):
    result = run_script("profile.py", "model=llava_tiny", f"model.path={tiny_llava_dir}", "runs=1", "warmup=1",
                        "gen_tokens=2", "data.batch_size=2", "logger=none", f"paths.work_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pretrained weights" in result.stdout and "prompt from the model's processor and chat template" in result.stdout
