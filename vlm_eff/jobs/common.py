"""Set-up shared by the jobs: checks, run dir, the device/dtype, the model with its tokenizer and
preprocessing, and writing a job's row everywhere it goes."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from vlm_eff.errors import ConfigError
from vlm_eff.results import write_results


def check_counts(cfg: DictConfig, *keys: str) -> None:
    """Each dotted key must hold an integer >= its minimum (warmup may be 0)."""
    for key in keys:
        value, least = cfg, 0 if key == "warmup" else 1
        for part in key.split("."):
            value = value[part]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ConfigError(f"{key}={value!r} must be an integer >= {least}")


def image_size(cfg: DictConfig, vision_config) -> int:
    size, patch = cfg.model.image_size or vision_config.image_size, vision_config.patch_size
    if isinstance(size, bool) or not isinstance(size, int) or size < patch or size % patch:
        raise ConfigError(f"model.image_size={size!r} must be a positive multiple of the patch size {patch}")
    return size


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()


def save_row(row: dict, cfg: DictConfig, out_dir: Path, logger, prefix: str) -> None:
    """The row to the run dir's and the project's results.csv, and its numbers to W&B under `prefix/`."""
    write_results(row, out_dir, Path(cfg.paths.results_csv))
    if logger is not None:
        logger.log_metrics({f"{prefix}/{k}": v for k, v in row.items() if isinstance(v, (int, float))})
        logger.experiment.summary.update({f"{prefix}/{k}": v for k, v in row.items() if isinstance(v, str)})
