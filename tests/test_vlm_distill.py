"""Label-free recovery of a reduced VLM (train.py objective=distill). In process on the tiny layouts at batch 3:
the teacher-forced pass the student trains through is the generation's own (its logits are the ones `generate`
acts on), and a few steps move only what `objective.train` names. As a user runs it: a saved tiny LLaVA distilled on
real CIFAR-10 images with a question file, the file's answers never read, the export evaluated reduced without
flags, a SIGKILL mid-run resumed where the uninterrupted run goes; the one-line errors."""

import copy
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import pytorch_lightning as pl
import torch
from conftest import ROOT, run_script
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from vlm_requests import LAYOUTS, requests, strategy

from vlm_eff.data.questions import Requests
from vlm_eff.generation import Runner
from vlm_eff.jobs.distill_vlm import train_parts
from vlm_eff.modules import VLMDistillModule
from vlm_eff.results import read_results
from vlm_eff.vlms import layout_of

PREFIXES = (3, 7, 1)  # a batch of 3 prompts of different lengths (left padding)
SITES = {  # a strategy of each site, at a quarter of the tokens
    "encoder": ("tome", {"keep": 0.25}),
    "boundary": ("divprune", {"keep": 0.25}),
    "llm": ("fastv", {"keep": 0.25, "layer": 1}),
}


def cases():
    for name in LAYOUTS:
        for site, (pruning, knobs) in SITES.items():
            if not (site == "encoder" and name == "qwen2_vl_tiny"):  # Qwen's own ViT has no encoder-site strategy
                yield pytest.param(name, pruning, knobs, id=f"{name}-{pruning}")


@pytest.mark.parametrize("name, pruning, knobs", cases())
def test_the_teacher_forced_pass_is_the_generation(tiny_vlms, name, pruning, knobs):
    """forced() on the greedy answer gives, at every answer position, generate's own logits (whose argmax is the next
    generated token)."""
    model = copy.deepcopy(tiny_vlms[name])
    rows, images = requests(model, PREFIXES)
    applied = strategy(model, pruning, **knobs)
    runner = Runner(model, strategy=applied, layout=layout_of(model))
    output = runner.generate(rows, images, 5, stop_at_eos=False, all_logits=True)
    with torch.no_grad():
        logits = runner.forced(rows, images, output.tokens)  # [B, 5, V]
    assert logits.shape[:2] == output.tokens.shape
    torch.testing.assert_close(logits, output.logits, atol=1e-5, rtol=1e-5)  # the distillation targets
    torch.testing.assert_close(logits[:, 0], output.first_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(logits.argmax(-1), output.tokens)


def few_steps(model, parts: set[str], pruning: str, knobs: dict, steps: int = 3, loss: str = "kl"):
    """`steps` distillation steps of `model` reduced by `pruning`, training `parts` -> (the module, the adapted
    model's parameters before training)."""
    layout = layout_of(model)
    teacher = Runner(copy.deepcopy(model).requires_grad_(False))
    lora = {"name": "default", "rank": 4, "alpha": 8, "dropout": 0.0}
    adapters = train_parts(model, layout, OmegaConf.create({"lora": lora}), parts)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    applied = strategy(model, pruning, **knobs)
    batches = [Requests(*requests(model, PREFIXES, seed=s), None, None, None) for s in range(steps)]
    module = VLMDistillModule(Runner(model, strategy=applied, layout=layout), teacher, loss, 2.0, 4, 0,
                              functools.partial(torch.optim.AdamW, lr=1e-2), adapter_only=True)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(batches, batch_size=1, collate_fn=lambda items: items[0]))
    applied.remove_from_vlm(model, layout)
    return module, before, adapters, trainer


@pytest.mark.parametrize("parts", [{"projector"}, {"lora"}, {"projector", "lora"}],
                         ids=lambda parts: "+".join(sorted(parts)))  # sorted: every xdist worker collects the same ids
@pytest.mark.parametrize("name, pruning, knobs", cases())
def test_a_few_steps_move_only_what_objective_train_names(tiny_vlms, name, pruning, knobs, parts):
    model = copy.deepcopy(tiny_vlms[name])
    module, before, _, trainer = few_steps(model, parts, pruning, knobs)
    assert trainer.global_step == 3
    loss = float(trainer.callback_metrics["train/distill_loss"])
    assert loss > 0 and loss == loss
    projector_names = projector_keys(model)
    moved = {key for key, value in model.state_dict().items() if not torch.equal(value, before[key])}
    assert moved, "nothing trained"
    for key in moved:
        is_lora = "lora_" in key
        is_projector = key in projector_names
        assert (is_lora and "lora" in parts) or (is_projector and "projector" in parts), f"{key} moved"
    if "lora" in parts:
        assert any("lora_B" in key for key in moved)  # B starts at zero: the adapters learnt something
        assert all(".language_model." in key for key in moved if "lora_" in key)  # on the language model alone
    if "projector" in parts:
        assert moved & projector_names


def projector_keys(model) -> set[str]:
    """The state-dict keys of the layout's projector in `model`."""
    projector = layout_of(model).projector(model)
    prefix = next(name for name, module in model.named_modules() if module is projector)
    return {f"{prefix}.{key}" for key in projector.state_dict()}



# -- as a user runs it --------------------------------------------------------------------------------------------
def distill_command(tiny_llava_dir, images, questions, run, *overrides) -> list[str]:
    return ["train.py", "objective=distill", "objective.train=projector+lora", "objective.max_new_tokens=4",
            "model=llava_tiny", f"model.path={tiny_llava_dir}", "model.weights=pretrained", "pruning=tome",
            "pruning.keep=0.25", "data=vqa", f"data.root={images}", f"data.questions={questions}",
            "data.batch_size=4", "data.num_workers=0", "trainer.max_steps=6", "checkpoint_every_n_steps=2",
            "optimizer.lr=1e-3", "logger=none", f"hydra.run.dir={run}", f"paths.work_dir={run.parent}", *overrides]


def unanswered(question_set, folder):
    """question_set's question file without its answers."""
    lines = [json.loads(line) for line in (question_set / "questions.jsonl").read_text().splitlines()]
    path = folder / "unanswered.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in line.items() if k != "answer"}) + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def distilled(tiny_llava_dir, question_set, tmp_path_factory):
    """One whole run on the question file with its answers, exported: (run dir, export dir, its output)."""
    folder = tmp_path_factory.mktemp("distilled")
    run, export = folder / "run", folder / "export"
    result = run_script(*distill_command(tiny_llava_dir, question_set / "images", question_set / "questions.jsonl",
                                         run, f"export_dir={export}"))
    assert result.returncode == 0, result.stderr[-3000:]
    return run, export, result


def test_a_run_trains_the_reduced_model_and_exports_it_merged(distilled, tiny_llava_dir):
    run, export, result = distilled
    assert "any answers in the question file are never read" in result.stdout
    (row,) = read_results(run / "results.csv")
    assert row["task"] == "train" and row["objective"] == "distill" and row["strategy"] == "tome"
    assert int(row["n_images"]) == 24 and int(row["trainable_params"]) > 0
    exported, stock = load_file(export / "model.safetensors"), load_file(tiny_llava_dir / "model.safetensors")
    assert exported.keys() == stock.keys()  # the adapters merged: a stock LLaVA checkpoint
    changed = {key for key in stock if not torch.equal(exported[key], stock[key].to(exported[key].dtype))}
    assert any("multi_modal_projector" in key for key in changed)
    assert any("self_attn.q_proj" in key for key in changed)  # a LoRA target, merged
    assert not any("vision_tower" in key or "mlp" in key for key in changed)
    summary = json.loads((export / "training_summary.json").read_text())
    assert summary["steps"] == 6 and summary["objective"]["loss"] == "kl"


def test_the_file_s_answers_are_never_read(distilled, tiny_llava_dir, question_set, tmp_path):
    run, export, _ = distilled
    blind = tmp_path / "run"
    result = run_script(*distill_command(tiny_llava_dir, question_set / "images", unanswered(question_set, tmp_path),
                                         blind, f"export_dir={tmp_path / 'export'}"))
    assert result.returncode == 0, result.stderr[-3000:]
    with_answers, without = load_file(export / "model.safetensors"), load_file(tmp_path / "export" / "model.safetensors")
    assert all(torch.equal(with_answers[key], without[key]) for key in with_answers)


def test_the_export_evaluates_reduced_without_flags(distilled, question_set, tmp_path):
    _, export, _ = distilled
    rows = {}
    for label, extra in (("recorded", ()), ("none", ("pruning=none",))):
        run = tmp_path / label
        result = run_script("evaluate.py", "protocol=vqa", "model=llava_tiny", f"model.path={export}",
                            "model.weights=pretrained", "data=vqa", f"data.root={question_set / 'images'}",
                            f"data.questions={question_set / 'questions.jsonl'}", "data.subset=8",
                            "protocol.max_new_tokens=2", "logger=none", f"hydra.run.dir={run}",
                            f"paths.work_dir={tmp_path}", *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        (rows[label],) = read_results(run / "results.csv")
    assert rows["recorded"]["strategy"] == "tome" and float(rows["recorded"]["visual_tokens"]) == 16
    assert rows["none"]["strategy"] == "none" and float(rows["none"]["visual_tokens"]) == 64


def test_kill_9_in_the_second_epoch_then_rerun_ends_where_the_uninterrupted_run_ends(tiny_llava_dir, question_set,
                                                                                      tmp_path):
    """16 questions at batch 4: 10 steps run three epochs, the later ones on the teacher's cached answers; a run killed
    at its checkpoint after step 5 (inside the second epoch) and rerun ends with the uninterrupted run's teacher answers
    and weights, bit for bit, and times its own steps after its own warm-up."""
    def args(run):
        return distill_command(tiny_llava_dir, question_set / "images", question_set / "questions.jsonl", run,
                               "data.subset=16", "trainer.max_steps=10", "checkpoint_every_n_steps=5")

    straight = run_script(*args(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    run = tmp_path / "killed"
    checkpoint = run / "checkpoints" / "last.ckpt"
    job = subprocess.Popen([sys.executable, *args(run)], cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not checkpoint.exists() and job.poll() is None:
        time.sleep(0.005)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["global_step"] == 5 and len(saved["teacher_answers"]) == 16  # inside epoch 2, every answer cached
    rerun = run_script(*args(run))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stdout
    whole = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    resumed = torch.load(checkpoint, weights_only=False)
    assert whole["global_step"] == resumed["global_step"] == 10  # max_steps decides, over three epochs
    (row,) = read_results(run / "results.csv")
    assert float(row["latency_ms_mean"]) > 0 and int(row["train_steps"]) == 10  # 5 steps: 3 warm-up, 2 timed
    assert whole["teacher_answers"] == resumed["teacher_answers"]
    whole, resumed = whole["state_dict"], resumed["state_dict"]
    assert whole.keys() == resumed.keys() and any("lora_B" in key for key in whole)
    assert [key for key in whole if not torch.equal(resumed[key], whole[key])] == []


def test_the_cifar10_mosaics_training_stream_trains(tiny_llava_dir, shared_archive, cache_dir, tmp_path):
    result = run_script("train.py", "objective=distill", "model=llava_tiny", f"model.path={tiny_llava_dir}",
                        "model.weights=pretrained", "pruning=divprune", "pruning.tokens=8", "data=cifar10_vqa",
                        f"data.root={shared_archive}", "data.batch_size=2", "data.num_workers=0",
                        "trainer.max_steps=2", "logger=none", f"hydra.run.dir={tmp_path / 'run'}",
                        f"paths.work_dir={tmp_path}", env={"VLM_EFF_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = read_results(tmp_path / "run" / "results.csv")
    assert row["strategy"] == "divprune" and int(row["n_images"]) == 4


@pytest.mark.parametrize("overrides, message", [
    (("pruning=none",), "with pruning=none there is nothing to recover"),
    (("objective.train=tower",), "objective.train='tower' is unknown; allowed: projector, lora, projector+lora"),
    (("objective.loss=cosine",), "objective.loss='cosine' is unknown for a generative VLM; allowed: kl, ce"),
    (("objective.temperature=0",), "objective.temperature=0"),
    (("data=cifar10_vqa", "data.questions=null", "trainer.max_steps=-1"), "endless stream of mosaics: set trainer.max_steps"),
])
def test_bad_input_is_one_line(tiny_llava_dir, question_set, tmp_path, overrides, message):
    result = run_script(*distill_command(tiny_llava_dir, question_set / "images", question_set / "questions.jsonl",
                                         tmp_path / "run", *overrides))
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_a_question_file_with_no_usable_question_is_one_line(tiny_llava_dir, question_set, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = run_script(*distill_command(tiny_llava_dir, question_set / "images", empty, tmp_path / "run"))
    assert result.returncode != 0 and "empty.jsonl" in result.stderr and "Traceback" not in result.stderr, \
        result.stderr[-2000:]


def test_the_report_puts_each_reduction_before_and_after_recovery(distilled, tiny_llava_dir, question_set, tmp_path):
    run, export, _ = distilled
    sweep = tmp_path / "sweep"
    shutil.copytree(run, sweep / "train")
    jobs = {"stock": (f"model.path={tiny_llava_dir}", "pruning=none"),
            "before": (f"model.path={tiny_llava_dir}", "pruning=tome", "pruning.keep=0.25"),
            "after": (f"model.path={export}",),  # its recorded reduction
            "unreduced": (f"model.path={export}", "pruning=none"),  # what recovery cost the unreduced model
            "unscored": (f"model.path={export}", f"data.questions={unanswered(question_set, tmp_path)}")}
    for job, overrides in jobs.items():
        result = run_script("evaluate.py", "protocol=vqa", "model=llava_tiny", "model.weights=pretrained", "data=vqa",
                            f"data.root={question_set / 'images'}", f"data.questions={question_set / 'questions.jsonl'}",
                            "data.subset=8", "protocol.max_new_tokens=2", "logger=none", f"hydra.run.dir={sweep / job}",
                            f"paths.work_dir={tmp_path}", *overrides)
        assert result.returncode == 0, result.stderr[-3000:]
    result = subprocess.run([sys.executable, "-m", "vlm_eff.report", str(sweep), "--no-wandb"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    blocks = (sweep / "report.md").read_text().split("\n\n")
    (line,) = [line for line in blocks[0].splitlines() if line.startswith("| tome | 0.25 | encoder |")]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[6] == "6" and float(cells[7]) > 0  # steps, training minutes from the training row
    assert cells[4] and cells[8]  # after, and the recovered weights unreduced
    (papers,) = [block for block in blocks if "mean retention %" in block.splitlines()[0]]
    assert sorted(row.split("|")[1].strip() for row in papers.splitlines()[2:]) == ["none", "tome"]  # no export:
    # its rows are in the recovery table, against the stock model, not against itself unreduced
    assert (sweep / "recovery_vs_steps.png").stat().st_size > 0
