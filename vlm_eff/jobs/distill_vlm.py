"""train.py objective=distill on a generative VLM: label-free recovery at the reduced budget. The same model unreduced
is the teacher (frozen; its greedy answer to each question); the reduced model, teacher-forced on it, learns its
distributions on the answer's tokens (modules.VLMDistillModule). Questions come from any question file in LLaVA's
format or a benchmark's (`data=vqa`, `data=<benchmark>`; their answers are never read), or the CIFAR-10 mosaics'
training stream (`data=cifar10_vqa`). What trains, `objective.train`: the projector (VisionZip's recipe), LoRA
adapters on the language model (the lora.* knobs), or both; everything else stays as it was. Checkpoints in the run
dir (a rerun resumes exactly on question files); the export is a save_pretrained dir with its processor, the
adapters merged, and the reduction it was trained for, which evaluate.py applies by itself."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vlm_eff.atomic import write_atomic
from vlm_eff.benchmarks import benchmark
from vlm_eff.data.loading import ReseededLoader, ResumableLoader, default_workers
from vlm_eff.data.questions import QuestionBatches, Requests, instructions_of, processor_requests
from vlm_eff.errors import ConfigError
from vlm_eff.generation import Runner, reduced_runner
from vlm_eff.jobs.common import (
    RECORDED_REDUCTION,
    fit,
    fit_trainer,
    prepare,
    resume_from,
    run_dir,
    save_row,
)
from vlm_eff.jobs.requests import selected
from vlm_eff.lora import count_parameters, lora_config, merge
from vlm_eff.models import model_label
from vlm_eff.modules import VLM_DISTILL_LOSSES, VLMDistillModule
from vlm_eff.results import base_row
from vlm_eff.runtime import device_label
from vlm_eff.wandb_logging import finish, make_logger

log = logging.getLogger(__name__)
PARTS = ("projector", "lora")
LORA_DEFAULTS = {"rank": 8, "alpha": 16, "dropout": 0.0}  # conf/lora/default.yaml's, where lora=none


def trained_parts(value: str) -> set[str]:
    """`objective.train` ("projector", "lora", "projector+lora") as its parts; anything else is a one-line error."""
    parts = set(str(value).split("+"))
    if not parts or not parts <= set(PARTS):
        raise ConfigError(f"objective.train={value!r} is unknown; allowed: projector, lora, projector+lora")
    return parts


class Indices(Dataset):
    """The question indices trained on, for the resumable loader (its sampler hands out (position, seed) pairs)."""

    def __init__(self, indices: list[int]):
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item) -> int:
        return self.indices[item[0]]


class MosaicRequests:
    """Collates the CIFAR-10 mosaics' training stream into requests (their answers unread)."""

    def __init__(self, processor, layout):
        self.processor, self.layout = processor, layout

    def __call__(self, items) -> Requests:
        mosaics, texts = [Image.fromarray(item[0]) for item in items], [item[1] for item in items]
        rows, inputs, prompts = processor_requests(self.processor, mosaics, texts)
        return Requests(rows, self.layout.image_inputs(inputs), None, prompts, instructions_of(self.processor, texts))


def question_loader(cfg: DictConfig, processor, layout) -> DataLoader:
    """Batches of requests: a question file's (or benchmark's), shuffled by the seed and resumable exactly, or the
    mosaics' training stream (data=cifar10_vqa without a question file), seeded by the seed and, in a resumed run,
    the batches done before (fresh mosaics, not the first run's again)."""
    workers = default_workers() if cfg.data.get("num_workers") is None else cfg.data.num_workers
    if cfg.data.name == "cifar10_vqa" and not cfg.data.get("questions"):
        from vlm_eff.data.cifar10 import load_split
        from vlm_eff.data.cifar10_vqa import TrainingMosaics

        if not cfg.data.root:
            raise ConfigError("data=cifar10_vqa needs data.root=<the CIFAR-10 archive or folder> for its train split")
        if (cfg.trainer.max_steps or -1) < 1:
            raise ConfigError("data=cifar10_vqa trains on an endless stream of mosaics: set trainer.max_steps=<steps>")
        images, labels, classes = load_split(Path(cfg.data.root).expanduser(), "train", Path(cfg.data.cache_dir))
        stream = TrainingMosaics(images, labels, classes, seed=cfg.seed,
                                 mix=OmegaConf.to_container(cfg.data.train_mix) if cfg.data.get("train_mix") else None)
        return ReseededLoader(stream, cfg.seed, batch_size=cfg.data.batch_size,
                              collate_fn=MosaicRequests(processor, layout), num_workers=workers)
    bench = benchmark(cfg.data)
    indices = selected(cfg, len(bench.questions))  # all, or a seeded data.subset
    if len(indices) < cfg.data.batch_size:
        raise ConfigError(f"data={bench.name}: {len(indices)} usable question(s) in {bench.questions.file}, "
                          f"fewer than one batch of data.batch_size={cfg.data.batch_size}")
    return ResumableLoader(Indices(indices), cfg.data.batch_size, cfg.seed, num_workers=workers,
                           collate_fn=QuestionBatches(processor, layout, bench))


def train_parts(model, layout, cfg: DictConfig, parts: set[str]):
    """Freeze everything but what `objective.train` names: the projector, LoRA adapters on the language model
    (returned, or None)."""
    model.requires_grad_(False)
    adapters = None
    if "lora" in parts:
        from peft import get_peft_model

        knobs = {key: cfg.lora.get(key, default) if cfg.lora.name != "none" else default
                 for key, default in LORA_DEFAULTS.items()}
        adapters = get_peft_model(model, lora_config(knobs["rank"], knobs["alpha"], knobs["dropout"], ["llm_attn"]))
    if "projector" in parts:
        layout.projector(model).requires_grad_(True)
    return adapters


def distill_vlm(cfg: DictConfig) -> dict:
    """Recover the reduced VLM `cfg.model` (reduced by `cfg.pruning`) toward itself unreduced, on questions alone."""
    if cfg.pruning.name == "none":
        raise ConfigError("objective=distill recovers a reduced model toward itself unreduced; with pruning=none there "
                          "is nothing to recover: choose a reduction (e.g. pruning=tome pruning.keep=0.125)")
    parts = trained_parts(cfg.objective.get("train", "projector"))
    loss = cfg.objective.get("loss") or "kl"
    if loss not in VLM_DISTILL_LOSSES:
        raise ConfigError(f"objective.loss={loss!r} is unknown for a generative VLM; allowed: "
                          f"{', '.join(VLM_DISTILL_LOSSES)}")
    if cfg.lora.get("checkpoint"):
        raise ConfigError(f"lora.checkpoint={cfg.lora.checkpoint}: recovery of a VLM starts fresh adapters on its "
                          "language model; continue a run by rerunning it (resume), or distill from model.path=<export>")
    prepared = prepare(cfg)
    model = prepared.loaded.model.float()
    layout = prepared.layout
    teacher = Runner(copy.deepcopy(model).to(prepared.dtype).eval().requires_grad_(False))  # unreduced, as loaded
    adapters = train_parts(model, layout, cfg, parts)
    processor = prepared.processor
    out_dir = run_dir()
    ckpt_path = resume_from(cfg, out_dir)
    loader = question_loader(cfg, processor, layout)
    print("vlm-eff train: label-free recovery: the answers are the unreduced model's; any answers in the question "
          "file are never read", flush=True)
    student = reduced_runner(model, prepared.strategy, layout)
    module = VLMDistillModule(student, teacher, loss, cfg.objective.get("temperature", 1.0),
                              cfg.objective.get("max_new_tokens", 16), processor.tokenizer.pad_token_id or 0,
                              instantiate(cfg.optimizer), instantiate(cfg.scheduler), adapter_only=True)
    trainable, total = count_parameters(model)
    logger = make_logger(cfg, out_dir)
    trainer, profiler = fit_trainer(cfg, prepared.device, out_dir, logger, "questions")
    print(f"vlm-eff train: {cfg.model.name} reduced by pruning={cfg.pruning.name}: training the "
          f"{' and '.join(sorted(parts))} ({trainable:,} of {total:,} parameters), loss {loss}"
          + (f"; resuming from {ckpt_path}" if ckpt_path else ""), flush=True)
    seconds = fit(trainer, module, ckpt_path, out_dir, train_dataloaders=loader)
    timing = profiler.summaries.get("train", {})
    row = {**base_row("train", Path(cfg.paths.root_dir)), "model": model_label(cfg.model, prepared.loaded.weights),
           "weights": prepared.loaded.weights, "strategy": cfg.pruning.name, **prepared.strategy.columns(),
           "site": prepared.strategy.site, "device": device_label(prepared.device), "dtype": cfg.dtype,
           "batch_size": cfg.data.batch_size, **timing, "n_images": trainer.global_step * cfg.data.batch_size,
           "trainable_params": trainable, "objective": "distill",
           "train_steps": trainer.global_step}
    if not trainer.is_global_zero:
        return row
    save_row(row, cfg, out_dir, logger, "train")
    if cfg.export_dir:
        prepared.strategy.remove_from_vlm(model, layout)
        export_model = merge(adapters) if adapters is not None else model
        export_dir = Path(cfg.export_dir)
        export_dir.mkdir(parents=True, exist_ok=True)
        export_model.to(torch.float16).save_pretrained(export_dir)
        processor.save_pretrained(export_dir)
        write_atomic(export_dir / RECORDED_REDUCTION, OmegaConf.to_yaml(cfg.pruning, resolve=True))
        summary = {"objective": {**OmegaConf.to_container(cfg.objective), "loss": loss}, "steps": trainer.global_step,
                   "batch_size": cfg.data.batch_size, "data": cfg.data.name, "trained": sorted(parts),
                   "wall_time_s_this_run": round(seconds, 1),
                   "last_distill_loss": float(trainer.callback_metrics.get("train/distill_loss", float("nan")))}
        write_atomic(export_dir / "training_summary.json", json.dumps(summary, indent=2) + "\n")
    wandb_dir = finish(logger)
    print(f"\nvlm-eff train (distill): {row['model']} strategy={row['strategy']}: {trainer.global_step} steps, "
          f"{seconds / 60:.1f} min" + (f", {timing['latency_ms_mean'] / 1000:.2f} s/step" if timing else "")
          + (f"\n  exported  {cfg.export_dir} (evaluate.py model.path=... applies pruning={cfg.pruning.name})"
             if cfg.export_dir else "") + f"\n  results   {out_dir / 'results.csv'}"
          + (f"\n  W&B       {wandb_dir}" if wandb_dir else ""), flush=True)
    return row
