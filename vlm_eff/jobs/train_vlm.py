"""train.py on a generative VLM: visual instruction tuning of the project's small VLMs on CIFAR-10 mosaics
(vlm_eff/data/cifar10_vqa.py, train split only): the projector and the language model learn to answer
from the vision tower's features (the tower, started from the project's trained dual encoder, stays
frozen, as in LLaVA's second stage); the loss is the answer's tokens and </s>. Progress is checkpointed in
the run dir and rerunning resumes (the mosaic stream restarts from its seed: not bit-exact); the export
is a `save_pretrained` dir with its processor, which evaluate.py and profile.py load with `model.path`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from vlm_eff.checkpoint_io import AtomicCheckpointIO
from vlm_eff.data.cifar10 import load_split
from vlm_eff.data.cifar10_vqa import TrainingMosaics
from vlm_eff.errors import ConfigError
from vlm_eff.jobs.common import check_counts, run_dir
from vlm_eff.lora import count_parameters
from vlm_eff.models import load_model
from vlm_eff.modules import FineTuneModule
from vlm_eff.results import write_atomic
from vlm_eff.runtime import resolve_device
from vlm_eff.tiny_vlm import init_tower, processor, word_tokenizer
from vlm_eff.vlms import layout_of
from vlm_eff.wandb_logging import finish, make_logger

IGNORE = -100  # label of a token the loss skips


class InstructionModule(FineTuneModule):
    """Next-token loss on the answer (and </s>) of "USER: <image>\\n{question} ASSISTANT: {answer}</s>"."""

    def __init__(self, model, processor, optimizer=None, scheduler=None):
        super().__init__(optimizer, scheduler)
        self.model, self.processor = model, processor

    def encode(self, mosaics: torch.Tensor, texts, answers) -> dict:
        """Mosaics uint8 [B, H, W, 3] and their questions and answers -> the model's inputs with labels: the
        prompt as the processor builds it (one placeholder per visual token), the answer's ids and </s>,
        right-padded; labels only on the answer and </s>."""
        tokenizer = self.processor.tokenizer
        prompts = [self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
            add_generation_prompt=True) for text in texts]
        images = [Image.fromarray(m.cpu().numpy()) for m in mosaics]
        inputs = self.processor(images=images, text=prompts, return_tensors="pt", padding=True)
        rows, labels = [], []
        for ids, mask, answer in zip(inputs["input_ids"], inputs["attention_mask"], answers):
            prompt = ids[mask.bool()]  # [L]
            target = torch.tensor(tokenizer(" " + answer)["input_ids"] + [tokenizer.eos_token_id])
            rows.append(torch.cat([prompt, target]))
            labels.append(torch.cat([torch.full_like(prompt, IGNORE), target]))
        L = max(len(r) for r in rows)
        pad = lambda r, value: torch.cat([r, r.new_full((L - len(r),), value)])  # noqa: E731  right padding
        return {"input_ids": torch.stack([pad(r, tokenizer.pad_token_id) for r in rows]),
                "attention_mask": torch.stack([pad(torch.ones_like(r), 0) for r in rows]),
                "labels": torch.stack([pad(r, IGNORE) for r in labels]),
                "pixel_values": inputs["pixel_values"]}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        mosaics, texts, answers, _ = batch
        inputs = {k: v.to(self.device) for k, v in self.encode(mosaics, texts, answers).items()}
        loss = self.model(**inputs).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss


def train_vlm(cfg: DictConfig) -> dict:
    """Train the small VLM `cfg.model` describes on mosaics from the CIFAR-10 train split at data.root."""
    check_counts(cfg, "data.batch_size", "trainer.max_steps", "data.num_workers")
    if cfg.data.name != "cifar10_vqa":
        raise ConfigError(f"train.py on a generative VLM trains on data=cifar10_vqa (CIFAR-10 mosaics), not "
                          f"data={cfg.data.name}")
    if not cfg.data.root:
        raise ConfigError("data=cifar10_vqa needs data.root=<the CIFAR-10 archive or folder> for its train split")
    if not cfg.model.get("init_tower"):
        raise ConfigError(f"model={cfg.model.name} names no model.init_tower (the trained dual encoder its tower "
                          "starts from)")
    from vlm_eff.jobs.train import resume_from

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model).model.float()
    layout = layout_of(model)
    vision = model.config.vision_config
    proc = processor(word_tokenizer(), Path(cfg.model.init_tower), vision.image_size, vision.patch_size,
                     model.config.vision_feature_select_strategy)
    out_dir = run_dir()
    ckpt_path = resume_from(cfg, out_dir)
    if ckpt_path is None:
        init_tower(layout.vision(model), Path(cfg.model.init_tower))
    layout.vision(model).requires_grad_(False).eval()
    images, labels, classes = load_split(Path(cfg.data.root).expanduser(), "train", Path(cfg.data.cache_dir))
    stream = TrainingMosaics(images, labels, classes, seed=cfg.seed)
    loader = DataLoader(stream, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers)
    module = InstructionModule(model, proc, instantiate(cfg.optimizer), instantiate(cfg.scheduler))
    trainable, total = count_parameters(model)

    logger = make_logger(cfg, out_dir)
    checkpoints = ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0,
                                  every_n_train_steps=cfg.checkpoint_every_n_steps)
    trainer = instantiate(cfg.trainer, accelerator=device.type, logger=logger or False, callbacks=[checkpoints],
                          default_root_dir=str(out_dir), plugins=[AtomicCheckpointIO()])
    print(f"vlm-eff train: {cfg.model.name}: training the projector and the language model, {trainable:,} of "
          f"{total:,} parameters; tower from {cfg.model.init_tower} (frozen)"
          + (f"; resuming from {ckpt_path}" if ckpt_path else ""), flush=True)
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - started
    trainer.save_checkpoint(out_dir / "checkpoints" / "last.ckpt", weights_only=False)
    loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
    if cfg.export_dir:
        export_dir = Path(cfg.export_dir)
        model.to(torch.float16).save_pretrained(export_dir)
        proc.save_pretrained(export_dir)
        summary = {"steps": trainer.global_step, "batch_size": cfg.data.batch_size, "seed": cfg.seed,
                   "optimizer": {"lr": cfg.optimizer.lr, "weight_decay": cfg.optimizer.weight_decay},
                   "init_tower": str(cfg.model.init_tower), "tower": "frozen", "visual_tokens_in_training": "all",
                   "last_train_loss": loss, "wall_time_s_this_run": round(seconds, 1)}
        write_atomic(export_dir / "training_summary.json", json.dumps(summary, indent=2) + "\n")
    wandb_dir = finish(logger)
    print(f"\nvlm-eff train: {cfg.model.name}: {trainer.global_step} steps, last loss {loss:.4f}, "
          f"{seconds / 60:.1f} min" + (f"\n  exported  {cfg.export_dir}" if cfg.export_dir else "")
          + (f"\n  W&B       {wandb_dir}" if wandb_dir else ""), flush=True)
    return {"steps": trainer.global_step, "loss": loss}
