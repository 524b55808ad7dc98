"""profile.py's job: latency, throughput, peak memory and FLOPs of a dual encoder's image path (any family),
or of a generative VLM's whole request (jobs/requests.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from vlm_eff.data import SyntheticDataModule
from vlm_eff.jobs.common import closing_lines, encoder_row, prepare, run_dir, save_row, test_trainer, tokens_text
from vlm_eff.jobs.requests import profile_requests
from vlm_eff.models import ImageEncoder
from vlm_eff.modules import ImageEncoderModule
from vlm_eff.profiling import reduction_share
from vlm_eff.wandb_logging import finish, make_logger


def profile(cfg: DictConfig) -> dict:
    """Time `warmup` + `runs` batches through the (pruned) image encoder; write and log the row."""
    prepared = prepare(cfg)
    if prepared.layout is not None:
        return profile_requests(cfg, prepared)  # whole requests: vision, prefill, decode
    device, dtype, loaded, size, strategy = (prepared.device, prepared.dtype, prepared.loaded, prepared.image_size,
                                             prepared.strategy)
    encoder = ImageEncoder(loaded.model, size).eval()
    strategy.apply(loaded.model)
    module = ImageEncoderModule(encoder, dtype, compile=cfg.compile).to(device)

    data = SyntheticDataModule(**cfg.data, image_size=size, n_batches=cfg.warmup + cfg.runs, seed=cfg.seed)
    data.setup()

    out_dir = run_dir()
    logger = make_logger(cfg, out_dir)
    trainer, profiler = test_trainer(cfg, device, out_dir, logger, "images")
    with torch.inference_mode():
        trainer.test(module, datamodule=data, verbose=False)

    row = {
        **encoder_row("profile", cfg, loaded.weights, strategy, device, module.encoder, dtype, data.dataset),
        **profiler.summaries["test"],
        "n_images": profiler.timed_images["test"], "compile": cfg.compile,
    }
    if cfg.trace:  # a second, traced pass: the profiler's overhead stays out of the timed row
        batches = [pixels.to(device=device, dtype=dtype) for (pixels,) in data.test_dataloader()][cfg.warmup:]
        row["reduce_share_pct"] = reduction_share(module.encoder, batches)  # eager: compiled code fuses the steps away
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
        f"{row['image_size']} px, {tokens_text(row)}",
        f"  latency   {row['latency_ms_mean']:.2f} ms/batch mean, {row['latency_ms_median']:.2f} median, "
        f"{row['latency_ms_p90']:.2f} p90, std {row['latency_ms_std']:.2f} ({row['n_images']} images timed)",
        f"  throughput {row['throughput_img_s']:.1f} images/s" + (" (torch.compile)" if row["compile"] else ""),
        f"  FLOPs     {row['gflops_per_img']:.3f} GFLOPs/image = {row['gmacs_per_img']:.3f} GMACs/image",
        f"  memory    {row['peak_mem_mib']:.1f} MiB peak ({row['mem_kind']})" if row["peak_mem_mib"] is not None
        else "  memory    not measured on this platform",
    ]
    if row.get("reduce_share_pct") is not None:
        lines.append(f"  reduction {row['reduce_share_pct']:.2f}% of encoder time in the reduction steps "
                     f"(torch.profiler, eager, a second pass over the timed batches)")
    if row.get("peak_reserved_mib") is not None:
        lines.append(f"  CUDA      {row['peak_reserved_mib']:.1f} MiB reserved peak")
    if row.get("gpu_util_pct") is not None:
        lines.append(f"  GPU       {row['gpu_util_pct']:.0f}% utilisation, {row['gpu_power_w']:.0f} W, "
                     f"SM {row['gpu_sm_clock_mhz']:.0f} MHz, {row['gpu_temp_c']:.0f} C max, "
                     f"{row['gpu_mem_used_mib']:.0f} MiB used max (NVML, mean over the timed batches)")
    lines += closing_lines(row, out_dir, project_csv, wandb_dir)
    print("\n".join(lines), flush=True)
