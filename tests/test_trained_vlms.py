"""The small VLMs the project ships (checkpoints/<model>/, trained here on CIFAR-10 mosaics), as a user runs
them: evaluate.py reproduces the stock exact match their cards quote (scripts/results/s11_vlm_reference.sh wrote it to
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


@pytest.mark.skipif("tiny_llava_cifar10" not in SHIPPED, reason="the CLIP twin is not in checkpoints/")
def test_a_short_label_free_recovery_raises_the_exact_match_at_12_5_percent(tmp_path, shared_archive, cache_dir):
    """Issue 35 on real trained weights: the CLIP twin reduced by ToMe to 32 of its 256 visual tokens (original
    positions), then 60 steps of `train.py objective=distill` (projector + LoRA, the unreduced model's answers,
    about a minute on 2 cores): the export, evaluated with no pruning flags (it records its reduction), answers
    the seeded 300-question subset better by more than the standard error of its exact match."""
    reduce = ("pruning=tome", "pruning.keep=0.125", "pruning.positions=original")
    before = evaluate(tmp_path / "before", shared_archive, cache_dir, "tiny_llava_cifar10", "data.subset=300", *reduce)
    export = tmp_path / "export"
    trained = run_script("train.py", "objective=distill", "objective.train=projector+lora", "lora=default",
                         "model=tiny_llava_cifar10", "data=cifar10_vqa", f"data.root={shared_archive}",
                         "data.batch_size=16", "optimizer.lr=5e-4", "scheduler=null", "trainer.max_steps=60",
                         "logger=none", f"hydra.run.dir={tmp_path / 'train'}", f"export_dir={export}", *reduce,
                         env={"VLM_EFF_CACHE": str(cache_dir)}, timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    after = evaluate(tmp_path / "after", shared_archive, cache_dir, "tiny_llava_cifar10", "data.subset=300",
                     f"model.path={export}")
    assert {a["visual_tokens"] for a in after["answers"]} == {32}  # the recorded reduction, applied by itself
    p_before, p_after = before["metrics"]["vqa_acc"], after["metrics"]["vqa_acc"]
    standard_error = (p_after * (1 - p_after) / 300) ** 0.5
    assert p_after - p_before > standard_error, (p_before, p_after, standard_error)
