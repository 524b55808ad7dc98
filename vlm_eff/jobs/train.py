"""train.py's job: fine-tune a dual encoder (every weight, or LoRA adapters only) with labels, as a
zero-shot classifier over class prompts, or without them, distilling the unreduced model's image
embeddings into the reduced one (label-free recovery); then test it like evaluate.py when the data has
classes. Progress is checkpointed in the run dir (adapter-only under LoRA), and rerunning resumes. An
export records the reduction it was trained for (`RECORDED_REDUCTION`), which later jobs apply."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vlm_eff.atomic import write_atomic
from vlm_eff.errors import ConfigError
from vlm_eff.jobs.common import (
    RECORDED_REDUCTION,
    encoder_row,
    fit,
    fit_trainer,
    layout_for,
    prepare,
    resume_from,
    run_dir,
    save_row,
)
from vlm_eff.jobs.distill_vlm import distill_vlm
from vlm_eff.jobs.evaluate import test_row
from vlm_eff.jobs.train_vlm import train_vlm
from vlm_eff.lora import add_lora, count_parameters, merge, new_adapters
from vlm_eff.modules import DistillModule, FineTuneModule, ZeroShotModule
from vlm_eff.prompts import Prompts, load_prompts
from vlm_eff.wandb_logging import finish, make_logger


def export(model, tokenizer, preprocess, export_dir: Path, summary: dict, pruning: DictConfig) -> None:
    """The trained model as an fp16 `save_pretrained` dir with its tokenizer, preprocessing, training
    summary and the reduction it was trained for (none: no file): `model.path=<export_dir>` needs nothing else."""
    export_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(export_dir)
    tokenizer.save_pretrained(export_dir)
    write_atomic(export_dir / "preprocessor_config.json", json.dumps(preprocess.to_config(), indent=2) + "\n")
    write_atomic(export_dir / "training_summary.json", json.dumps(summary, indent=2) + "\n")
    recorded = export_dir / RECORDED_REDUCTION
    if pruning.name == "none":
        recorded.unlink(missing_ok=True)
    else:
        write_atomic(recorded, OmegaConf.to_yaml(pruning, resolve=True))


def training_module(cfg: DictConfig, model, teacher, tokenizer, class_names: list[str], prompts: Prompts,
                    size: int | None, adapter_only: bool) -> FineTuneModule:
    """The `objective`'s module: `labels` trains over the class prompts, `distill` toward `teacher`."""
    common = {"optimizer": instantiate(cfg.optimizer), "scheduler": instantiate(cfg.scheduler),
              "adapter_only": adapter_only}
    if cfg.objective.name == "distill":
        return DistillModule(model, teacher, size, cfg.objective.loss or "cosine", **common)
    if not class_names:
        raise ConfigError(f"objective=labels needs labelled data, and data={cfg.data.name} has no classes; "
                          "use objective=distill to train without labels")
    return ZeroShotModule(model, tokenizer, prompts.names_for(class_names), prompts.templates, size, **common)


def train(cfg: DictConfig) -> dict:
    if layout_for(cfg.model) is not None:  # a generative VLM: label-free recovery, or the small VLMs' recipe
        return distill_vlm(cfg) if cfg.objective.name == "distill" else train_vlm(cfg)
    new_adapters(cfg.lora)  # bad lora.* values and prompts fail before anything loads
    prompts = load_prompts(cfg.prompts)
    prepared = prepare(cfg)
    device, loaded, size, strategy = prepared.device, prepared.loaded, prepared.image_size, prepared.strategy
    out_dir = run_dir()
    ckpt_path = resume_from(cfg, out_dir)
    loaded.model.float().train()  # fp32 master weights (a checkpoint may be stored in fp16); dtype= sets autocast
    teacher = copy.deepcopy(loaded.model) if cfg.objective.name == "distill" else None  # unreduced, no adapters
    adapters = add_lora(loaded.model, cfg.lora)  # before pruning: the reduction's hooks see the adapted q/k
    preprocess = prepared.preprocess
    data = instantiate(cfg.data, preprocess=preprocess, seed=cfg.seed)
    data.pin_memory = device.type == "cuda"
    data.setup("fit")
    strategy.apply(loaded.model)
    tokenizer = prepared.tokenizer
    module = training_module(cfg, loaded.model, teacher, tokenizer, data.class_names, prompts, size,
                             adapters is not None)
    trainable, total = count_parameters(loaded.model)

    logger = make_logger(cfg, out_dir)
    trainer, profiler = fit_trainer(cfg, device, out_dir, logger, "images")
    if trainer.is_global_zero:
        what = f"LoRA adapters (rank {adapters.peft_config['default'].r})" if adapters else "every weight"
        print(f"vlm-eff train: training {what}: {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)",
              flush=True)
    if logger is not None:
        logger.log_metrics({"train/trainable_params": trainable, "train/trainable_share": trainable / total}, step=0)
    if ckpt_path and trainer.is_global_zero:
        print(f"vlm-eff train: resuming from {ckpt_path}", flush=True)
    train_seconds = fit(trainer, module, ckpt_path, out_dir, datamodule=data)
    val_metric = "val/top1" if cfg.objective.name == "labels" else "val/distill_loss"
    val_value = float(trainer.callback_metrics.get(val_metric, float("nan")))

    weights, timing = loaded.weights + ("+lora" if adapters else ""), profiler.summaries.get("train", {})
    if data.class_names:  # zero-shot test of the trained model, as evaluate.py runs it
        data.setup("test")
        tester = ZeroShotModule(loaded.model, tokenizer, prompts.names_for(data.class_names), prompts.templates, size)
        trainer.test(tester.eval(), datamodule=data, verbose=False)
        row = test_row("train", cfg, tester, weights, strategy, device, timing, data.test_set)
    else:  # unlabelled images: the cost of the trained model and the time and memory of its steps
        counted = data.val_set if len(data.val_set) else data.train_set  # unaugmented images, where there are any
        row = {**encoder_row("train", cfg, weights, strategy, device, module.encoder, module.dtype, counted),
               **timing, "n_images": len(data.train_set)}
    row |= {"trainable_params": trainable, "objective": cfg.objective.name, "train_steps": trainer.global_step}
    if not trainer.is_global_zero:  # DDP: rank 0 writes the results
        return row
    save_row(row, cfg, out_dir, logger, "test")
    if adapters is not None:
        adapters.save_pretrained(out_dir / "adapter")
    if cfg.export_dir:
        strategy.remove(loaded.model)
        summary = {
            "objective": OmegaConf.to_container(cfg.objective), "epochs": cfg.trainer.max_epochs,
            "steps": trainer.global_step,
            "train_images": len(data.train_set), "val_images": len(data.val_set),
            "wall_time_s_this_run": round(train_seconds, 1), "test_top1": row.get("top1"), "test_top5": row.get("top5"),
            "test_templates": prompts.templates, val_metric.replace("/", "_"): val_value,
        }  # fmt: skip
        export(merge(adapters) if adapters else loaded.model, tokenizer, preprocess, Path(cfg.export_dir), summary,
               cfg.pruning)
    wandb_dir = finish(logger)
    print(
        f"\nvlm-eff train ({cfg.objective.name}): {row['model']} strategy={row['strategy']} keep={row['keep']}: "
        + (f"test top-1 {100 * row['top1']:.2f}% top-5 {100 * row['top5']:.2f}% on {row['n_images']} images; "
           if row.get("top1") is not None else f"{val_metric} {val_value:.4f}; ")
        + f"{train_seconds / 60:.1f} min of training"
        + (f", peak training memory {row['peak_mem_mib']:.0f} MiB ({row['mem_kind']})" if row.get("peak_mem_mib") else "")
        + f"\n  results   {out_dir / 'results.csv'}"
        + (f"\n  adapter   {out_dir / 'adapter'} (evaluate.py lora.checkpoint=...)" if adapters else "")
        + (f"\n  exported  {cfg.export_dir}" + (" (adapters merged)" if adapters else "") if cfg.export_dir else "")
        + (f"\n  W&B       {wandb_dir}" if wandb_dir else ""),
        flush=True,
    )
    return row
