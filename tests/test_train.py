"""train.py as a user runs it: LoRA fine-tuning of the project's small CLIP on real CIFAR-10 with
pruning on, adapter-only checkpoints and resume, the saved adapter and the merged export in
evaluate.py, and the 2-process DDP run (bad input: tests/test_bad_input.py)."""

import pytest
import torch
from conftest import model_config, run_script
from wandb_files import read_run

from vlm_eff.lora import expected_trainable
from vlm_eff.models import random_model
from vlm_eff.results import read_results

PRUNED = ("pruning=cls_preserving", "pruning.keep=0.5")
RECIPE = ("lora=default", "data.shots=100", "trainer.max_epochs=5", "optimizer.lr=2e-3", "checkpoint_every_n_steps=20")


def common(archive, work_dir):
    """The small CLIP on 1,000 held-out test images, 500 validation images, batch 64."""
    return ["model=tiny_clip_cifar10", f"data.root={archive}", "data.subset=1000", "data.val_size=500",
            "data.batch_size=64", "logger=none", f"paths.work_dir={work_dir}"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, shared_archive, cache_dir):
    """One LoRA fine-tune with cls_preserving pruning at keep 0.5 (15 steps x 5 epochs), exported."""
    work = tmp_path_factory.mktemp("finetune")
    run = work / "run"
    result = run_script("train.py", *common(shared_archive, work), *PRUNED, *RECIPE, f"hydra.run.dir={run}",
                        f"export_dir={work / 'export'}", env={"VLM_EFF_CACHE": str(cache_dir)}, timeout=1200)
    assert result.returncode == 0, result.stderr
    (row,) = read_results(run / "results.csv")
    return {"work": work, "run": run, "row": row, "stdout": result.stdout, "stderr": result.stderr,
            "archive": shared_archive, "env": {"VLM_EFF_CACHE": str(cache_dir)}}


def evaluate_row(finetuned, *overrides) -> dict:
    work = finetuned["work"] / f"eval{len(list(finetuned['work'].glob('eval*')))}"
    result = run_script("evaluate.py", *common(finetuned["archive"], work), *PRUNED, *overrides, env=finetuned["env"])
    assert result.returncode == 0, result.stderr
    (row,) = read_results(work / "outputs" / "results.csv")
    return row


def test_lora_finetune_with_pruning_on_raises_held_out_accuracy(finetuned):
    row = finetuned["row"]
    baseline = evaluate_row(finetuned)
    assert row["task"] == "train" and row["weights"] == "pretrained+lora" and int(row["n_images"]) == 1000
    # measured on these 1,000 test images: 54.9 % pruned before, 58.8 % after 75 LoRA steps on 1,000 train images
    assert float(row["top1"]) >= float(baseline["top1"]) + 0.02, (baseline["top1"], row["top1"])
    assert "training LoRA adapters (rank 8): 90,112 of" in finetuned["stdout"]
    # progress on stderr (no terminal here): an estimate after the first of the 75 steps (15 full batches of 64 an
    # epoch, the last partial one dropped, x 5), the total at the end
    assert "[train] first batch took" in finetuned["stderr"] and "the other 74 batches: about" in finetuned["stderr"]
    assert "[train] done: 4800 images in 75 batches" in finetuned["stderr"]
    assert int(row["trainable_params"]) == 90112  # 8 x (6 x 4 x 2 x 192 + 4 x 4 x 2 x 64)


def test_the_saved_adapter_and_the_merged_export_give_the_trained_accuracy(finetuned):
    trained = float(finetuned["row"]["top1"])
    adapter = evaluate_row(finetuned, f"lora.checkpoint={finetuned['run'] / 'adapter'}")
    assert adapter["weights"] == "pretrained+lora" and float(adapter["top1"]) == trained
    exported = evaluate_row(finetuned, f"model.path={finetuned['work'] / 'export'}")
    assert abs(float(exported["top1"]) - trained) <= 0.005  # merged weights stored in fp16


def test_checkpoints_hold_only_the_adapters_and_rerunning_resumes(finetuned):
    checkpoint = torch.load(finetuned["run"] / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["state_dict"] and all(".lora_" in name for name in checkpoint["state_dict"])
    assert sum(t.numel() for t in checkpoint["state_dict"].values()) == 90112
    assert checkpoint["epoch"] == 5

    again = ["train.py", *common(finetuned["archive"], finetuned["work"] / "resume"), *PRUNED, *RECIPE,
             f"hydra.run.dir={finetuned['run']}"]
    resumed = run_script(*again, "trainer.max_epochs=6", env=finetuned["env"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"vlm-eff train: resuming from {finetuned['run'] / 'checkpoints' / 'last.ckpt'}" in resumed.stdout
    assert torch.load(finetuned["run"] / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 6

    mismatched = run_script(*again, "trainer.max_epochs=7", "lora.rank=4", env=finetuned["env"])
    assert mismatched.returncode == 2
    assert mismatched.stderr.strip().splitlines()[-1].startswith(
        "error: the checkpoint's adapter does not match this run's lora config")


def test_ddp_on_two_cpu_processes(tmp_path, shared_archive, cache_dir):
    """trainer=ddp trainer.devices=2: two gloo processes train one model; rank 0 alone writes the results."""
    run = tmp_path / "run"
    result = run_script(
        "train.py", "trainer=ddp", "trainer.devices=2", "model=clip_tiny", f"data.root={shared_archive}",
        "data.shots=4", "data.val_size=40", "data.subset=100", "data.batch_size=10", "lora=default", "logger=none",
        f"paths.work_dir={tmp_path}", f"hydra.run.dir={run}", env={"VLM_EFF_CACHE": str(cache_dir)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in output and "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    (row,) = read_results(run / "results.csv")
    assert int(row["n_images"]) == 100 and (run / "adapter" / "adapter_model.safetensors").is_file()
    assert len(read_results(tmp_path / "outputs" / "results.csv")) == 1


def test_bf16_autocast_trains_and_wandb_gets_the_trainable_share_with_lora_rank_alone(tmp_path, shared_archive, cache_dir):
    result = run_script("train.py", "model=clip_tiny", f"data.root={shared_archive}", "data.shots=2",
                        "data.val_size=20", "data.subset=20", "data.batch_size=10", "dtype=bf16", "lora.rank=2",
                        f"paths.work_dir={tmp_path}", env={"VLM_EFF_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr
    assert "training LoRA adapters (rank 2)" in result.stdout  # lora.rank alone selects lora=default
    (row,) = read_results(tmp_path / "outputs" / "results.csv")
    assert row["dtype"] == "bf16" and 0 <= float(row["top1"]) <= 1
    (wandb_dir,) = (tmp_path / "outputs").glob("*/*/wandb/offline-run-*")
    run = read_run(wandb_dir)
    trainable = expected_trainable(random_model(model_config("clip_tiny")).config, 2, ["vision_attn", "text_attn"])
    assert run["summary"]["train/trainable_params"] == trainable == int(row["trainable_params"])
    assert 0 < run["summary"]["train/trainable_share"] < 0.01
    assert run["config"]["lora"]["rank"] == 2 and run["summary"]["test/top1"] == pytest.approx(float(row["top1"]))
