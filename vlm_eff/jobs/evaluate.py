"""evaluate.py's job: zero-shot top-1 / top-5 / per-class accuracy, and eval throughput."""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from vlm_eff.errors import ConfigError
from vlm_eff.jobs.common import encoder_row, prepare, run_dir, save_row, tokens_text
from vlm_eff.lora import check_adapter_dir, load_adapter
from vlm_eff.models import RANDOM_WEIGHTS_WARNING, load_preprocess, load_tokenizer
from vlm_eff.modules import ZeroShotModule
from vlm_eff.profiling import ProfilingCallback
from vlm_eff.results import write_atomic
from vlm_eff.wandb_logging import finish, make_logger


def zero_shot_row(task: str, cfg: DictConfig, module: ZeroShotModule, weights: str, strategy, device,
                  timing: dict, test_set) -> dict:
    """A results row for a zero-shot test of `module` on `test_set` (shared by evaluate and train)."""
    results = module.test_results()
    return {
        **encoder_row(task, cfg, weights, strategy, device, module.encoder, module.dtype, test_set),
        **timing, "top1": results["top1"], "top5": results["top5"], "n_images": len(test_set),
        "compile": cfg.get("compile", False),
    }


def evaluate(cfg: DictConfig) -> dict:
    """Zero-shot classification of the test split through the (pruned) model; write and log the row."""
    adapter = cfg.lora.get("checkpoint")
    if cfg.lora.name != "none" and not adapter:
        raise ConfigError(f"lora={cfg.lora.name} needs lora.checkpoint=<a saved adapter dir> in evaluate.py")
    if adapter:
        check_adapter_dir(adapter)  # a bad lora.checkpoint fails before anything loads
    device, dtype, loaded, size, strategy = prepare(cfg, "data.batch_size", "warmup", "data.subset")
    tokenizer = load_tokenizer(cfg.model)
    data = instantiate(cfg.data, preprocess=load_preprocess(cfg.model, size), seed=cfg.seed)
    data.setup("test")
    if adapter:
        load_adapter(loaded.model, adapter)  # before pruning: the reduction's hooks see the adapted q/k
    strategy.apply(loaded.model)
    module = ZeroShotModule(loaded.model, tokenizer, data.class_names, cfg.prompts.templates, size, compile=cfg.compile)
    module = module.to(device=device, dtype=dtype).eval()

    out_dir = run_dir()
    logger = make_logger(cfg, out_dir)
    profiler = ProfilingCallback(warmup=cfg.warmup, gpu_sample_interval_s=cfg.gpu_sample_interval_s)
    trainer = pl.Trainer(
        accelerator=device.type, devices=1, logger=logger or False, callbacks=[profiler],
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(out_dir),
    )  # fmt: skip
    trainer.test(module, datamodule=data, verbose=False)

    row = zero_shot_row("evaluate", cfg, module, loaded.weights + ("+lora" if adapter else ""), strategy, device,
                        profiler.summaries.get("test", {}), data.test_set)
    per_class = module.test_results()["per_class"]
    write_atomic(out_dir / "per_class.json", json.dumps(per_class, indent=2) + "\n")
    save_row(row, cfg, out_dir, logger, "test")
    if logger is not None:
        logger.log_metrics({f"test/per_class/{name}": acc for name, acc in per_class.items()})
    wandb_dir = finish(logger)
    print_summary(row, per_class, loaded.source, out_dir, Path(cfg.paths.results_csv), wandb_dir)
    return row


def print_summary(row: dict, per_class: dict, source: str, out_dir: Path, project_csv: Path,
                  wandb_dir: str | None) -> None:
    timing = (f"{row['throughput_img_s']:.1f} images/s, {row['latency_ms_mean']:.1f} ms/batch"
              + (" (torch.compile)" if row["compile"] else "")
              if row.get("throughput_img_s") else "not timed (no batch after warm-up)")
    lines = [
        "",
        f"vlm-eff evaluate: {row['model']} ({row['weights']} weights: {source}), strategy={row['strategy']} "
        f"keep={row['keep']} layer={row['layer']} score={row['score']}",
        f"  zero-shot top-1 {100 * row['top1']:.2f}%   top-5 {100 * row['top5']:.2f}%   on {row['n_images']} images",
        "  per class " + ", ".join(f"{name} {100 * acc:.1f}" for name, acc in per_class.items()),
        f"  {tokens_text(row)}, {row['gflops_per_img']:.4g} GFLOPs/image; {timing}",
        f"  results   {out_dir / 'results.csv'} (+ one row in {project_csv}; per class: per_class.json)",
    ]
    if wandb_dir:
        lines.append(f"  W&B       {wandb_dir} (upload: wandb sync {wandb_dir})")
    if row["weights"].startswith("random"):
        lines.append("  !! " + RANDOM_WEIGHTS_WARNING.format(source=row["model"]))
    print("\n".join(lines), flush=True)
