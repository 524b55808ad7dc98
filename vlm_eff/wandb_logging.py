"""Weights & Biases through Lightning's WandbLogger: offline unless WANDB_MODE=online."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger


def offline_by_default() -> None:
    """W&B writes offline runs unless WANDB_MODE says otherwise (e.g. WANDB_MODE=online)."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")


def sweep_group(task: str, sweep_dir: Path) -> str:
    """The W&B group shared by a sweep's jobs and its report run."""
    return f"{task}-{sweep_dir.name}"


def make_logger(cfg: DictConfig, run_dir: Path) -> WandbLogger | None:
    """The configured logger with the full resolved config, or None for logger=none.
    Jobs of one `-m` sweep share a W&B group named after the sweep dir."""
    if not cfg.get("logger") or "_target_" not in cfg.logger:  # logger=none (a job may still set its run name)
        return None
    offline_by_default()
    group = None
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        group = sweep_group(cfg.task, Path(HydraConfig.get().sweep.dir))
    logger = instantiate(cfg.logger, save_dir=str(run_dir), group=group)
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return logger


def finish(logger: WandbLogger | None) -> str | None:
    """End the W&B run (so `-m` sweeps never merge runs); returns its local directory."""
    if logger is None:
        return None
    run_dir = logger.experiment.dir
    logger.experiment.finish()
    return str(Path(run_dir).parent)
