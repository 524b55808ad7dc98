"""Nothing lost: a training job killed with SIGKILL at any point (here mid-epoch, and in the middle of
writing a checkpoint) and rerun with the same command ends with exactly the weights of an
uninterrupted run, and the checkpoint on disk is never a torn file."""

import os
import signal
import subprocess
import sys
import time

import torch
from conftest import ROOT, run_script

# LoRA with dropout (global random state), ToMe on, augmentation: 10 steps per epoch, a checkpoint every 3
RECIPE = ("model=tiny_clip_cifar10", "lora=default", "lora.dropout=0.1", "pruning=tome", "trainer.max_epochs=2", "data.train_size=320",
          "data.val_size=64", "data.batch_size=32", "data.subset=100", "checkpoint_every_n_steps=3", "logger=none")


def train_command(archive, run_dir) -> list[str]:
    return [sys.executable, "train.py", *RECIPE, f"data.root={archive}", f"hydra.run.dir={run_dir}",
            f"paths.work_dir={run_dir.parent}"]


def final_weights(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def test_kill_9_mid_epoch_then_rerun_ends_bit_exact(tmp_path, shared_archive, cache_dir):
    env = {"VLM_EFF_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
    straight = run_script(*train_command(shared_archive, tmp_path / "straight")[1:], env=env)
    assert straight.returncode == 0, straight.stderr

    run_dir = tmp_path / "killed"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    job = subprocess.Popen(train_command(shared_archive, run_dir), cwd=ROOT, env={**os.environ, **env},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not checkpoint.exists() and job.poll() is None:
        time.sleep(0.005)
    job.send_signal(signal.SIGKILL)  # right after the first checkpoint: the job is inside a training step
    job.wait()
    assert job.returncode == -signal.SIGKILL
    step = torch.load(checkpoint, weights_only=False)["global_step"]  # never torn: it loads
    assert 0 < step < 20 and step % 10 != 0, step  # killed mid-epoch

    rerun = run_script(*train_command(shared_archive, run_dir)[1:], env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "vlm-eff train: resuming from" in rerun.stdout and "not resumable" not in rerun.stderr
    straight_weights, resumed_weights = final_weights(tmp_path / "straight"), final_weights(run_dir)
    assert straight_weights.keys() == resumed_weights.keys() and len(straight_weights) > 0
    for name, tensor in straight_weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name


KILLED_WRITER = """
import sys, torch
from vlm_eff.checkpoint_io import AtomicCheckpointIO
AtomicCheckpointIO().save_checkpoint({"payload": torch.ones(64, 1024, 1024)}, sys.argv[1])  # 256 MiB
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint_whole(tmp_path):
    from vlm_eff.checkpoint_io import AtomicCheckpointIO, remove_stale_temporaries

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, path)
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], cwd=ROOT)
    while not list(tmp_path.glob(".tmp-*")) and writer.poll() is None:
        time.sleep(0.002)
    time.sleep(0.02)  # the temporary file is being written
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert torch.load(path, weights_only=False) == {"global_step": 3}
    (partial,) = tmp_path.glob(".tmp-last.ckpt.*")
    remove_stale_temporaries(tmp_path)
    assert not partial.exists() and path.exists()


class _Items(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, item):
        index, _seed = item  # from ResumableSampler
        return torch.tensor([float(index)])


def _recording_module():
    from functools import partial

    from vlm_eff.modules import FineTuneModule
    from vlm_eff.schedules import cosine_with_warmup

    class Recorder(FineTuneModule):
        """Records the items of every training step (and learns nothing that matters)."""

        def __init__(self):
            super().__init__(partial(torch.optim.SGD, lr=0.1), partial(cosine_with_warmup))
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[list[int]] = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch[:, 0].int().tolist())
            return (self.weight * batch).mean()

    return Recorder()


def test_resuming_from_a_checkpoint_at_an_epochs_end_or_middle_sees_the_uninterrupted_batches(tmp_path):
    """4 batches an epoch, 3 epochs, a checkpoint at every step: resumed from step 4 (the last batch of
    epoch 0) or step 6 (inside epoch 1), training sees exactly the batches the uninterrupted run saw next."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from vlm_eff.checkpoint_io import AtomicCheckpointIO
    from vlm_eff.data.loading import ResumableLoader

    def fit(module, ckpt_path=None):
        trainer = pl.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, use_distributed_sampler=False, plugins=[AtomicCheckpointIO()],
                             callbacks=[ModelCheckpoint(tmp_path / "ckpt", "{step}", every_n_train_steps=1,
                                                        save_top_k=-1)])
        trainer.fit(module, ResumableLoader(_Items(), batch_size=4, seed=0), ckpt_path=ckpt_path)
        return module.seen

    straight = fit(_recording_module())
    assert len(straight) == 12 and straight[0] != straight[4]  # a new order every epoch
    for step in (4, 6):
        assert fit(_recording_module(), tmp_path / "ckpt" / f"step={step}.ckpt") == straight[step:], step


def test_a_run_stopped_by_max_steps_mid_epoch_and_extended_sees_the_longer_runs_batches(tmp_path):
    """4 batches an epoch: a 6-step run (stopped inside epoch 1, its last checkpoint written after fit) extended to
    12 steps sees the rest of epoch 1 and then epoch 2, as one 12-step run does; Lightning's own loop counts epoch 1
    as done there, so the loader keeps its own count."""
    import pytorch_lightning as pl

    from vlm_eff.checkpoint_io import AtomicCheckpointIO
    from vlm_eff.data.loading import ResumableLoader

    def fit(module, max_steps, ckpt_path=None):
        trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, max_epochs=-1, logger=False,
                             enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                             use_distributed_sampler=False, plugins=[AtomicCheckpointIO()])
        trainer.fit(module, ResumableLoader(_Items(), batch_size=4, seed=0), ckpt_path=ckpt_path)
        trainer.save_checkpoint(tmp_path / f"after-{max_steps}.ckpt")
        return module.seen

    straight = fit(_recording_module(), 12)
    assert len(straight) == 12
    assert fit(_recording_module(), 6) == straight[:6]
    assert fit(_recording_module(), 12, tmp_path / "after-6.ckpt") == straight[6:]
