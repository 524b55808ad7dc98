"""train.py on a generative VLM, as a user runs it: a few steps of visual instruction tuning of the small LLaVA on
real CIFAR-10 train mosaics, the export with its processor, and evaluate.py protocol=vqa on the exported model
with the mosaic test set built from the CIFAR-10 test split (data=cifar10_vqa)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, model_config, run_script
from hydra import compose, initialize_config_dir
from transformers import AutoModel, LlavaForConditionalGeneration

from vlm_eff.cli import CONF_DIR
from vlm_eff.data.cifar10_vqa import QUADRANTS, TrainingMosaics
from vlm_eff.errors import ConfigError
from vlm_eff.jobs.train_vlm import language_stage, teach_language, tower_stage, weights_of
from vlm_eff.models import random_model
from vlm_eff.results import read_results
from vlm_eff.tiny_vlm import processor, word_tokenizer
from vlm_eff.tiny_vlm_training import (
    InstructionModule,
    TowerModule,
    ask_with_word_grid,
    ask_with_words,
    quadrants,
    subject,
)
from vlm_eff.vlms import layout_of

CPU = torch.device("cpu")


def train_config(tmp_path: Path, *overrides: str):
    """train.py's config for the small LLaVA's recipe, as Hydra composes it, with `overrides`."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=["experiment=tiny_llava_cifar10", "logger=none", "device=cpu",
                                           f"paths.work_dir={tmp_path}", *overrides])


def small_llava(cifar_test: dict):
    """A fresh small LLaVA, its processor and a mosaic stream from the CIFAR-10 test images."""
    torch.manual_seed(0)
    model = random_model(model_config("tiny_llava_cifar10"))
    proc = processor(word_tokenizer(), ROOT / "checkpoints" / "tiny_clip_cifar10", 64, 4, "default")
    return model, proc, TrainingMosaics(cifar_test["images"], cifar_test["labels"], cifar_test["classes"], seed=0)


@pytest.mark.parametrize("model, dual_encoder, has_cls", [("tiny_llava_cifar10", "tiny_clip_cifar10", True),
                                                        ("tiny_llava_siglip_cifar10", "tiny_siglip_cifar10", False)])
def test_train_export_and_evaluate_the_small_llava(tmp_path, shared_archive, cache_dir, model, dual_encoder, has_cls):
    export = tmp_path / "export"
    env = {"VLM_EFF_CACHE": str(cache_dir)}
    result = run_script("train.py", f"experiment={model}", f"data.root={shared_archive}",
                        "trainer.max_steps=3", "data.batch_size=4", "checkpoint_every_n_steps=2", "logger=none",
                        "tower_stage.steps=2", "tower_stage.batch_size=4", "language_stage.steps=3",
                        "language_stage.presence_steps=2", "language_stage.task_steps=2",
                        "++language_stage.position_steps=2", "++language_stage.grid_steps=2",
                        "language_stage.batch_size=8", "++language_stage.read_from=null",  # taught here
                        f"export_dir={export}", f"hydra.run.dir={tmp_path / 'run'}", env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 steps" in result.stdout and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    summary = json.loads((export / "training_summary.json").read_text())
    assert summary["steps"] == 3 and summary["tower"] == "frozen in stage 3" and summary["tower_stage"]["steps"] == 2
    assert summary["language_stage"]["steps"] == 3 and summary["language_stage"]["task_steps"] == 2
    accuracy = summary["language_stage"]["accuracy"]
    assert set(accuracy) == {"subject", "presence", "position", "task", "grid"} and summary["align_weight"] == 1.0
    assert accuracy["presence"].keys() == {"presence"} and accuracy["position"].keys() == {"position"}
    # the tower: the trained small CLIP's or SigLIP's (position embeddings interpolated from 8 x 8 to 16 x 16),
    # moved by the 2 steps of stage 1 (Adam: about lr per weight per step), then frozen through stage 2
    tower = LlavaForConditionalGeneration.from_pretrained(export).model.vision_tower
    clip = AutoModel.from_pretrained(ROOT / "checkpoints" / dual_encoder).vision_model
    stage1 = weights_of(tmp_path / "run" / "tower_stage" / "checkpoints" / "last.ckpt", "tower.")
    layer = "encoder.layers.0.self_attn.q_proj.weight"
    assert torch.equal(tower.state_dict()[layer], stage1[layer].to(torch.float16))
    start = clip.state_dict()[layer].float()  # the small CLIP is stored in fp16
    assert not torch.equal(stage1[layer], start) and torch.allclose(stage1[layer], start, atol=2e-3)
    assert tower.embeddings.position_embedding.weight.shape == (has_cls + 16 * 16, 192)

    result = run_script("evaluate.py", "protocol=vqa", f"model={model}", f"model.path={export}",
                        "data=cifar10_vqa", f"data.root={shared_archive}", "data.subset=12", "data.batch_size=6",
                        "protocol.max_new_tokens=3", "pruning=divprune", "pruning.keep=0.25", "logger=none",
                        f"paths.work_dir={tmp_path}", env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = next(tmp_path.rglob("outputs/*/*/answers.jsonl")).parent
    answers = [json.loads(line) for line in (run / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 12 and all(a["visual_tokens"] == 64 for a in answers)  # 25 % of 256
    (row,) = read_results(run / "results.csv")
    assert row["site"] == "boundary" and row["vqa_acc"] != "" and int(row["n_images"]) == 12
    kinds = json.loads((run / "metrics.json").read_text())
    assert {"vqa_acc_position", "vqa_acc_presence", "vqa_acc_count"} <= set(kinds)


def test_stage_one_checkpoints_and_given_more_steps_goes_on_from_its_checkpoint(tmp_path, cifar_test, capsys):
    """Stage 1 ends with its Lightning checkpoint and summary in the run dir; rerun with one step more, it goes on
    from there for that one step (the tower as saved, then one AdamW step of about lr per weight)."""
    cfg = train_config(tmp_path, "tower_stage.steps=3", "tower_stage.batch_size=2", "checkpoint_every_n_steps=2")
    saved, (model, proc, stream) = tmp_path / "tower_stage", small_llava(cifar_test)
    accuracy = tower_stage(cfg, model, proc, stream, CPU, None, saved, resumed=False)
    last = saved / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 3
    summary = json.loads((saved / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["cell_accuracy_last_50_steps"] == accuracy and 0 <= accuracy <= 1
    before = weights_of(last, "tower.")
    layer, tower = "encoder.layers.0.self_attn.q_proj.weight", layout_of(model).vision(model)
    assert torch.equal(tower.state_dict()[layer], before[layer])
    assert not any(p.requires_grad for p in tower.parameters())  # frozen after

    cfg.tower_stage.steps = 4
    model, _, _ = small_llava(cifar_test)
    tower_stage(cfg, model, proc, stream, CPU, None, saved, resumed=False)
    assert "stage 1, the tower on mosaic cells, steps 4-4" in capsys.readouterr().out
    assert json.loads((saved / "summary.json").read_text())["steps"] == 4
    after = weights_of(last, "tower.")
    assert torch.equal(layout_of(model).vision(model).state_dict()[layer], after[layer])
    step = (after[layer] - before[layer]).abs()
    assert 0 < step.max() < 1e-3  # one AdamW step at lr 3e-4 from the saved tower, not a fresh start


def test_the_language_stage_teaches_the_lookup_past_the_chat_words(tmp_path, cifar_test):
    """Stage 2 on a fresh small Llama: within 150 text-only steps the answer to "USER: {question} ASSISTANT:" is
    the question's subject, for every kind (the binding probe, docs/RESULTS.md 11.1: without it, reading a quadrant stalls)."""
    model, proc, stream = small_llava(cifar_test)
    _, questions = stream.sample(30, np.random.default_rng(0))
    for question in questions:
        quadrant = [q for q in QUADRANTS if q in question["text"]]
        expected = {"position": quadrant[0] if quadrant else None, "count": "animals",
                    "presence": question["text"].split()[-1].rstrip("?")}[question["kind"]]
        assert subject(question) == expected
    tower = {k: v.clone() for k, v in model.model.vision_tower.state_dict().items()}
    user, answer = ask_with_words(questions[0])  # the second part: the image as its cells' class words
    assert user == " ".join(questions[0]["cell_classes"]) + "\n" + questions[0]["text"]
    assert answer == questions[0]["answer"]
    grid, answer = ask_with_word_grid(questions[0], quadrants(16))  # the last: one word per visual token
    words = grid.split("\n")[0].split()  # 16 x 16, row by row: rows 0-7 hold the top cells, 8-15 the bottom
    assert len(words) == 256 and answer == questions[0]["answer"] and grid.endswith("\n" + questions[0]["text"])
    top_left, top_right, bottom_left, bottom_right = questions[0]["cell_classes"]
    assert words[:8] == [top_left] * 8 and words[8:16] == [top_right] * 8
    assert words[128:136] == [bottom_left] * 8 and words[-1] == bottom_right
    ids = proc.tokenizer(grid)["input_ids"]  # one token per visual token, as many as the tower hands over
    assert len(ids) == len(proc.tokenizer(questions[0]["text"])["input_ids"]) + 256
    assert proc.tokenizer.unk_token_id not in ids
    cfg = train_config(tmp_path, "language_stage.steps=150", "language_stage.presence_steps=0",
                       "language_stage.position_steps=0", "language_stage.task_steps=0", "language_stage.grid_steps=0",
                       "language_stage.lr=1e-3", "language_stage.batch_size=32")
    accuracy = teach_language(cfg, model, proc, stream, CPU, None, tmp_path)
    assert set(accuracy) == {"subject"} and set(accuracy["subject"]) == {"position", "presence", "count"}
    assert min(accuracy["subject"].values()) > 0.9  # the last 50 steps: whole answers (subject and </s>) right
    assert all(torch.equal(tower[k], v) for k, v in model.model.vision_tower.state_dict().items())
    saved = weights_of(tmp_path / "language_model.ckpt", "language.language_model.")  # what a fresh stage 3 reads
    assert torch.equal(saved["layers.0.mlp.up_proj.weight"], model.model.language_model.layers[0].mlp.up_proj.weight)


def test_alignment_moves_the_projector_to_the_class_words_not_the_words(cifar_test):
    """Stage 3's `align_weight`: every visual token (the projector's output read through the tied output
    embedding) is trained to name its cell's class; the gradient reaches the projector, never the embeddings
    (the language model's words stay where stage 2 put them)."""
    torch.manual_seed(0)
    model = random_model(model_config("tiny_llava_cifar10"))
    proc = processor(word_tokenizer(), ROOT / "checkpoints" / "tiny_clip_cifar10", 64, 4, "default")
    stream = TrainingMosaics(cifar_test["images"], cifar_test["labels"], cifar_test["classes"], seed=0)
    batch = next(iter(torch.utils.data.DataLoader(stream, batch_size=4)))
    assert batch[4].shape == (4, 4)  # the cells' class indices
    grads = {}
    for weight in (0.0, 1.0):
        model.zero_grad()
        module = InstructionModule(model, proc, list(cifar_test["classes"]), align_weight=weight)
        module.training_step(batch, 0).backward()
        grads[weight] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    embed = "model.language_model.embed_tokens.weight"
    assert torch.equal(grads[0.0][embed], grads[1.0][embed])
    projector = "model.multi_modal_projector.linear_2.weight"
    assert (grads[1.0][projector] - grads[0.0][projector]).abs().max() > 1e-4
    # on their own, a few steps of the alignment loss make the visual tokens name their cells' classes
    module = InstructionModule(model, proc, list(cifar_test["classes"]), align_weight=1.0)
    optimizer = torch.optim.Adam(model.model.multi_modal_projector.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_the_tower_stage_warms_up_holds_then_decays_to_zero():
    """Stage 1's rate (transformers' warmup-stable-decay schedule): up over the first tenth, held, then down to
    1/200 of it at the last of 1,000 steps."""
    model = random_model(model_config("tiny_llava_cifar10"))
    layout = layout_of(model)
    module = TowerModule(layout.vision(model), layout.tower_family(model.config), 1, 16, 10, lr=1.0, steps=1000)
    schedule = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    factors = np.array([schedule.lr_lambdas[0](step) for step in range(1000)])
    assert np.all(np.diff(factors[:101]) > 0) and factors[100] == 1.0  # warm-up over the first tenth
    assert np.all(factors[100:800] == 1.0)
    assert np.all(np.diff(factors[800:]) < 0) and factors[-1] == pytest.approx(1 / 200)  # the last step


STAGE_TWO = ("language_stage.steps=2", "language_stage.presence_steps=0", "language_stage.position_steps=0",
             "language_stage.task_steps=0", "language_stage.batch_size=2")


def test_a_fresh_stage_three_reads_stage_two_taught_with_the_same_settings(tmp_path, cifar_test, capsys):
    """Stage 2 is saved in the run dir with its settings: a fresh stage 3 with the same ones reads it; other
    settings teach it again."""
    taught = tmp_path / "language_stage"

    def stage_two(grid_steps: int) -> str:
        cfg = train_config(tmp_path, *STAGE_TWO, f"language_stage.grid_steps={grid_steps}")
        model, proc, stream = small_llava(cifar_test)
        language_stage(cfg, model, proc, stream, CPU, None, taught, resumed=False)
        return capsys.readouterr().out

    assert "stage 2, the language model on text, 2 + 0 + 0 + 0 + 1 steps" in stage_two(1)
    first = weights_of(taught / "language_model.ckpt", "language.")
    summary = json.loads((taught / "summary.json").read_text())
    assert summary["recipe"]["language_stage"]["grid_steps"] == 1 and set(summary["accuracy"]) == {"subject", "grid"}
    assert f"stage 2 read from {taught}" in stage_two(1)
    unchanged = weights_of(taught / "language_model.ckpt", "language.")
    assert all(torch.equal(first[name], weight) for name, weight in unchanged.items())
    assert "stage 2, the language model on text, 2 + 0 + 0 + 0 + 2 steps" in stage_two(2)
    again = weights_of(taught / "language_model.ckpt", "language.")
    assert json.loads((taught / "summary.json").read_text())["recipe"]["language_stage"]["grid_steps"] == 2
    assert not torch.equal(first["language_model.layers.0.mlp.up_proj.weight"],
                           again["language_model.layers.0.mlp.up_proj.weight"])


def test_the_siglip_twin_reads_stage_two_from_the_clip_twins_run(tmp_path, cifar_test, capsys):
    """experiment=tiny_llava_siglip_cifar10 takes stage 2 from `language_stage.read_from` (the CLIP twin's run):
    read when taught there with the same settings, a one-line error otherwise, never taught again."""
    taught = tmp_path / "clip" / "language_stage"
    clip, proc, stream = small_llava(cifar_test)
    language_stage(train_config(tmp_path, *STAGE_TWO, "language_stage.grid_steps=0"), clip, proc, stream, CPU, None,
                   taught, resumed=False)
    written = (taught / "language_model.ckpt").stat().st_mtime_ns

    def siglip_config(*overrides: str):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=["experiment=tiny_llava_siglip_cifar10", "logger=none", "device=cpu",
                                               f"paths.work_dir={tmp_path}", *STAGE_TWO, "language_stage.grid_steps=0",
                                               f"language_stage.read_from={taught}", *overrides])

    siglip = random_model(model_config("tiny_llava_siglip_cifar10"))
    capsys.readouterr()
    language_stage(siglip_config(), siglip, proc, stream, CPU, None, tmp_path / "siglip" / "language_stage", False)
    out = capsys.readouterr().out
    assert f"stage 2 read from {taught}" in out and "stage 2, the language model on text" not in out
    assert torch.equal(siglip.model.language_model.layers[0].mlp.up_proj.weight,
                       clip.model.language_model.layers[0].mlp.up_proj.weight)
    with pytest.raises(ConfigError, match=f"language_stage.read_from={taught}: no stage 2 there taught with this "
                                          "run's settings"):
        language_stage(siglip_config("language_stage.steps=3"), siglip, proc, stream, CPU, None,
                       tmp_path / "other" / "language_stage", False)
    assert (taught / "language_model.ckpt").stat().st_mtime_ns == written
    assert not (tmp_path / "other").exists() and not (tmp_path / "siglip").exists()
