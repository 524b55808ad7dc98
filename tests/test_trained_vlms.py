"""The small VLMs the project ships (checkpoints/<model>/, trained here on CIFAR-10 mosaics), as a user runs
them: evaluate.py reproduces the stock exact match their cards quote (scripts/vlm_reference.sh wrote it to
reference_vqa.json) on the seeded 300-question subset of the test set, every question kind above its chance
level; and one frontier point per site (encoder, boundary, language model) runs through the CLI."""

import json

import pytest
from conftest import ROOT, run_script

from vlm_eff.data.cifar10_vqa import CHANCE, KINDS
from vlm_eff.results import read_results

SHIPPED = [name for name in ("tiny_llava_cifar10", "tiny_llava_siglip_cifar10")
           if (ROOT / "checkpoints" / name / "reference_vqa.json").is_file()]
pytestmark = pytest.mark.skipif(not SHIPPED, reason="no trained small VLM in checkpoints/")


def evaluate(tmp_path, archive, cache_dir, model: str, *overrides: str) -> dict:
    """evaluate.py protocol=vqa on the mosaic test set; the run dir's metrics, answers and results row."""
    run = tmp_path / "run"
    result = run_script("evaluate.py", "protocol=vqa", f"model={model}", "data=cifar10_vqa", f"data.root={archive}",
                        "logger=none", f"hydra.run.dir={run}", *overrides, env={"VLM_EFF_CACHE": str(cache_dir)},
                        timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = [json.loads(line) for line in (run / "answers.jsonl").read_text().splitlines()]
    (row,) = read_results(run / "results.csv")
    return {"metrics": json.loads((run / "metrics.json").read_text()), "answers": answers, "row": row}


@pytest.mark.parametrize("model", SHIPPED)
def test_stock_exact_match_is_reproduced_on_the_subset(tmp_path, shared_archive, cache_dir, model):
    reference = json.loads((ROOT / "checkpoints" / model / "reference_vqa.json").read_text())["subset_300"]
    run = evaluate(tmp_path, shared_archive, cache_dir, model, "data.subset=300", "pruning=none")
    assert len(run["answers"]) == 300 and all(a["visual_tokens"] == 256 for a in run["answers"])
    metrics = run["metrics"]
    assert abs(metrics["vqa_acc"] - reference["vqa_acc"]) <= 0.005, (metrics, reference)
    for kind in KINDS:
        assert metrics[f"vqa_acc_{kind}"] > CHANCE[kind], (kind, metrics)


@pytest.mark.parametrize("model", SHIPPED)
@pytest.mark.parametrize("site, overrides, tokens", [
    ("encoder", ("pruning=tome", "pruning.keep=0.25"), 64),
    ("boundary", ("pruning=visionzip", "pruning.tokens=64"), 64),
    ("llm", ("pruning=fastv", "pruning.keep=0.25"), 256),  # FastV drops inside the LM: 256 tokens enter it
])
def test_one_frontier_point_per_site(tmp_path, shared_archive, cache_dir, model, site, overrides, tokens):
    run = evaluate(tmp_path, shared_archive, cache_dir, model, "data.subset=24", *overrides)
    assert len(run["answers"]) == 24 and {a["visual_tokens"] for a in run["answers"]} == {tokens}
    assert run["row"]["site"] == site and run["row"]["vqa_acc"] != ""
    assert all(a["text"].strip() for a in run["answers"])  # every question answered
