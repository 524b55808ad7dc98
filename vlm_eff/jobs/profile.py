"""profile.py's job: latency, throughput, peak memory and FLOPs of CLIP's image encoder."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from vlm_eff.data import SyntheticDataModule
from vlm_eff.flops import flops_per_image
from vlm_eff.jobs.common import check_counts, image_size, run_dir, save_row
from vlm_eff.models import RANDOM_WEIGHTS_WARNING, ImageEncoder, load_clip
from vlm_eff.modules import ImageEncoderModule
from vlm_eff.profiling import ProfilingCallback
from vlm_eff.pruning import apply_pruning, check_pruning, describe
from vlm_eff.results import base_row
from vlm_eff.runtime import device_label, resolve_device, resolve_dtype
from vlm_eff.token_reduction import tokens_per_layer
from vlm_eff.wandb_logging import finish, make_logger


def profile(cfg: DictConfig) -> dict:
    """Time `warmup` + `runs` batches through the (pruned) image encoder; write and log the row."""
    check_counts(cfg, "data.batch_size", "runs", "warmup")
    check_pruning(cfg.pruning, cfg.model.architecture.vision_config.num_hidden_layers)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    pl.seed_everything(cfg.seed, verbose=False)
    loaded = load_clip(cfg.model)
    size = image_size(cfg, loaded.model.config.vision_config)
    encoder = ImageEncoder(loaded.model, size).eval()
    reduction = apply_pruning(loaded.model, cfg.pruning, seed=cfg.seed)
    module = ImageEncoderModule(encoder, dtype).to(device)

    data = SyntheticDataModule(**cfg.data, image_size=size, n_batches=cfg.warmup + cfg.runs, seed=cfg.seed)
    data.setup()
    flops = flops_per_image(module.encoder, data.dataset.tensors[0][:1].to(device, dtype))

    out_dir = run_dir()
    logger = make_logger(cfg, out_dir)
    profiler = ProfilingCallback(warmup=cfg.warmup)
    trainer = pl.Trainer(
        accelerator=device.type, devices=1, logger=logger or False, callbacks=[profiler],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=str(out_dir),
    )  # fmt: skip
    with torch.inference_mode():
        trainer.test(module, datamodule=data, verbose=False)

    n_layers = loaded.model.config.vision_config.num_hidden_layers
    row = {
        **base_row("profile", Path(cfg.paths.root_dir)),
        "model": cfg.model.name, "weights": loaded.weights, "strategy": cfg.pruning.name, **describe(reduction),
        "device": device_label(device), "dtype": cfg.dtype, "batch_size": cfg.data.batch_size, "image_size": size,
        "tokens": tokens_per_layer(reduction, encoder.n_patches, n_layers)[-1],
        "gflops_per_img": flops / 1e9, "gmacs_per_img": flops / 2e9,
        **profiler.summaries["test"],
        "n_images": profiler.timed_images["test"],
    }  # fmt: skip
    save_row(row, cfg, out_dir, logger, "profile")
    wandb_dir = finish(logger)
    print_summary(row, loaded.source, out_dir, Path(cfg.paths.results_csv), wandb_dir)
    return row


def print_summary(row: dict, source: str, out_dir: Path, project_csv: Path, wandb_dir: str | None) -> None:
    lines = [
        "",
        f"vlm-eff profile: {row['model']} ({row['weights']} weights: {source}), strategy={row['strategy']} "
        f"keep={row['keep']} layer={row['layer']} score={row['score']}",
        f"  device {row['device']}, {row['dtype']}, {row['threads']} threads, batch {row['batch_size']}, "
        f"{row['image_size']} px, {row['tokens']} tokens at the last layer",
        f"  latency   {row['latency_ms_mean']:.2f} ms/batch mean, {row['latency_ms_median']:.2f} median, "
        f"{row['latency_ms_p90']:.2f} p90, std {row['latency_ms_std']:.2f} ({row['n_images']} images timed)",
        f"  throughput {row['throughput_img_s']:.1f} images/s",
        f"  FLOPs     {row['gflops_per_img']:.3f} GFLOPs/image = {row['gmacs_per_img']:.3f} GMACs/image",
        f"  memory    {row['peak_mem_mib']:.1f} MiB peak ({row['mem_kind']})" if row["peak_mem_mib"] is not None
        else "  memory    not measured on this platform",
        f"  results   {out_dir / 'results.csv'} (+ one row in {project_csv})",
    ]
    if wandb_dir:
        lines.append(f"  W&B       {wandb_dir} (upload: wandb sync {wandb_dir})")
    if row["weights"] == "random":
        lines.append("  !! " + RANDOM_WEIGHTS_WARNING.format(source=row["model"]))
    print("\n".join(lines), flush=True)
