"""evaluate.py end to end on every benchmark's fixture (tests/benchmark_fixtures.py, LLaVA's layout under one
`paths.eval_dir`) with a saved tiny LLaVA: one `-m` sweep over benchmarks x strategies, each job's metrics equal
to `python -m vlm_eff.score`'s on its answers, the papers' table and figure from the report; the splits scored by
a server write their submission files."""

import json

import numpy as np
import pytest
from benchmark_fixtures import FIXTURES
from conftest import run_script
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from vlm_eff.cli import CONF_DIR
from vlm_eff.jobs.score import score
from vlm_eff.report.summary import report
from vlm_eff.results import read_results

SWEPT = ("pope", "mme", "textvqa", "gqa", "scienceqa", "mmbench", "seed_bench")


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory, cifar_test):
    """Every benchmark's fixture under one folder, as LLaVA's playground/data/eval holds them, on real images."""
    folder = tmp_path_factory.mktemp("eval")
    images = [np.asarray(cifar_test["images"][i]) for i in range(8)]
    for make in FIXTURES.values():
        make(folder, images)
    return folder


def model_args(tiny_llava_dir) -> list[str]:
    return ["protocol=vqa", "model=llava_tiny", f"model.path={tiny_llava_dir}", "model.weights=pretrained",
            "data.batch_size=3", "data.num_workers=0", "protocol.max_new_tokens=4", "logger=none"]


@pytest.fixture(scope="module")
def sweep(eval_dir, tiny_llava_dir, tmp_path_factory):
    """The papers' sweep: benchmarks x (stock, DivPrune at 16 of 64 tokens), one command."""
    sweep = tmp_path_factory.mktemp("sweep") / "multirun"
    result = run_script("evaluate.py", "-m", *model_args(tiny_llava_dir), f"data={','.join(SWEPT)}",
                        "pruning=none,divprune", "pruning.tokens=16", f"paths.eval_dir={eval_dir}",
                        f"paths.work_dir={sweep.parent}", f"hydra.sweep.dir={sweep}", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep


def test_every_benchmark_answers_in_llava_format_and_scores_as_the_score_cli(sweep, eval_dir, tmp_path, monkeypatch):
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(jobs) == 2 * len(SWEPT)
    monkeypatch.chdir(tmp_path)  # the score job writes into its run dir: here, outside Hydra
    for job in jobs:
        config = OmegaConf.load(job / ".hydra" / "config.yaml")
        metrics = json.loads((job / "metrics.json").read_text())
        answers = [json.loads(line) for line in (job / "answers.jsonl").read_text().splitlines()]
        assert metrics["benchmark"] == config.data.name and metrics["n_answered"] == len(answers) > 0
        assert all({"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} <= set(a) for a in answers)
        assert {a["visual_tokens"] for a in answers} == ({16} if config.pruning.name == "divprune" else {64})
        (row,) = read_results(job / "results.csv")
        assert row["benchmark"] == config.data.name and float(row["benchmark_score"]) == pytest.approx(metrics["score"])
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("score", overrides=[f"data={config.data.name}", f"paths.eval_dir={eval_dir}",
                                              f"answers={job / 'answers.jsonl'}", "logger=none",
                                              f"paths.work_dir={tmp_path}"])
        assert score(cfg) == metrics  # the same code on the same answers
    mmbench = next(json.loads((j / "answers.jsonl").read_text().splitlines()[0]) for j in jobs
                   if OmegaConf.load(j / ".hydra" / "config.yaml").data.name == "mmbench")
    assert {"round_id", "options", "option_char"} <= set(mmbench)  # LLaVA's MMBench answer keys
    sqa = next(json.loads((j / "answers.jsonl").read_text().splitlines()[0]) for j in jobs
               if OmegaConf.load(j / ".hydra" / "config.yaml").data.name == "scienceqa")
    assert sqa["prompt"].startswith("<image>\n")  # what eval_science_qa.py counts as IMG


def test_the_report_prints_the_papers_table_with_retention(sweep):
    table = report(sweep, use_wandb=False)
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[:3] == ["strategy", "budget", "site"] and header[3:3 + len(SWEPT)] == list(SWEPT)
    assert header[3 + len(SWEPT)] == "mean retention %"
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:3])}
    assert set(rows) == {"none", "divprune"} and rows["divprune"][1:3] == ["16", "boundary"]
    scores = {}  # (strategy, benchmark) -> score, from each job's metrics.json
    for metrics in sweep.glob("*/metrics.json"):
        config = OmegaConf.load(metrics.parent / ".hydra" / "config.yaml")
        scores[config.pruning.name, config.data.name] = json.loads(metrics.read_text())["score"]
    retained = []
    for i, bench in enumerate(SWEPT):  # each cell: the score, and its % of the stock score where that is not 0
        base, reduced = scores["none", bench], scores["divprune", bench]
        assert rows["none"][3 + i] == f"{base:.2f}" + (" (100.0%)" if base else "")
        assert rows["divprune"][3 + i] == f"{reduced:.2f}" + (f" ({100 * reduced / base:.1f}%)" if base else "")
        if base:
            retained.append(100 * reduced / base)
    assert retained and rows["divprune"][3 + len(SWEPT)] == f"{np.mean(retained):.1f}"  # POPE's F1 is never 0 here
    assert (sweep / "score_vs_flops.png").stat().st_size > 10_000


@pytest.mark.parametrize("fixture, submission", [
    ("vqav2_testdev", "vqav2_test-dev2015_submission.json"), ("vizwiz_test", "vizwiz_test_submission.json"),
    ("mmbench_test", "mmbench_test_en_20231003_submission.xlsx"), ("vqav2_val", None), ("vizwiz_val", None),
])  # fmt: skip
def test_splits_scored_by_a_server_write_their_submission_file(tiny_llava_dir, cifar_test, tmp_path, fixture,
                                                                 submission):
    overrides = FIXTURES[fixture](tmp_path, [np.asarray(cifar_test["images"][i]) for i in range(8)])
    run = tmp_path / "run"
    result = run_script("evaluate.py", *model_args(tiny_llava_dir), *overrides, f"paths.work_dir={tmp_path}",
                        f"hydra.run.dir={run}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    if submission:
        assert metrics["score"] is None and metrics["submission"] == str(run / submission)
        assert (run / submission).stat().st_size > 0 and "submission file" in result.stdout
    else:
        assert 0 <= metrics["score"] <= 100 and "submission" not in metrics
