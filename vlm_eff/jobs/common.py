"""Set-up shared by the jobs: checks, run dir, the device/dtype, the model with its tokenizer and
preprocessing, and writing a job's row everywhere it goes."""

from __future__ import annotations

import logging
import statistics
import time
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint

from vlm_eff.checkpoint_io import AtomicCheckpointIO, remove_stale_temporaries
from vlm_eff.data.preprocess import ImagePreprocess
from vlm_eff.errors import ConfigError
from vlm_eff.flops import flops_per_image
from vlm_eff.knobs import check_knobs
from vlm_eff.models import (
    RANDOM_WEIGHTS_WARNING,
    ImageEncoder,
    LoadedModel,
    load_model,
    load_preprocess,
    load_processor,
    load_tokenizer,
    model_config,
    model_label,
    training_of,
)
from vlm_eff.profiling import ProfilingCallback
from vlm_eff.progress import ProgressCallback
from vlm_eff.reduction import build, build_vlm
from vlm_eff.reduction.base import Strategy
from vlm_eff.reduction.dropping import adaptive_budgets
from vlm_eff.results import base_row, write_results
from vlm_eff.runtime import device_label, resolve_device, resolve_dtype
from vlm_eff.towers import family_for
from vlm_eff.vlms import LAYOUTS, Layout, is_vlm

log = logging.getLogger(__name__)


def image_size(cfg: DictConfig, vision_config) -> int:
    size, patch = cfg.model.image_size or vision_config.image_size, vision_config.patch_size
    if isinstance(size, bool) or not isinstance(size, int) or size < patch or size % patch:
        raise ConfigError(f"model.image_size={size!r} must be a positive multiple of the patch size {patch}")
    return size


PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}  # training: half precision = autocast
RECORDED_REDUCTION = "reduction.yaml"  # in an exported checkpoint: the `pruning` config it was trained for


def pruning_on_command_line() -> bool:
    """Whether this Hydra run's command line chose the pruning (`pruning=...` or `pruning.<knob>=...`)."""
    if not HydraConfig.initialized():
        return True  # called as a function: the config given is the one meant
    keys = (override.lstrip("+~").partition("=")[0] for override in HydraConfig.get().overrides.task)
    return any(key == "pruning" or key.startswith("pruning.") for key in keys)


def use_recorded_reduction(cfg: DictConfig) -> None:
    """A checkpoint dir (`model.path`) that records the reduction it was trained for gets it, unless the
    command line or an experiment chose one (`pruning=none` evaluates it unreduced)."""
    path = cfg.model.get("path")
    recorded = Path(path).expanduser() / RECORDED_REDUCTION if path and cfg.model.weights != "random" else None
    if recorded is None or not recorded.is_file() or cfg.pruning.name != "none" or pruning_on_command_line():
        return
    with open_dict(cfg):
        cfg.pruning = OmegaConf.load(recorded)
    log.info("model.path=%s was trained for pruning=%s (%s); applying it (pruning=none to run it unreduced)",
             path, cfg.pruning.name, recorded)


def layout_of(config) -> Layout | None:
    """The one place that tells the kinds of model apart, from the model's Hugging Face config (`model_config`):
    a generative VLM's layout (vlms.py), or None for a dual encoder (its family in towers.py)."""
    return LAYOUTS[config.model_type] if is_vlm(config.model_type) else None


def layout_for(model_cfg: DictConfig) -> Layout | None:
    """`layout_of` the model `model_cfg` names, for a job that decides before `prepare`; reads its config only."""
    return layout_of(model_config(model_cfg))


@dataclass
class Prepared:
    """What every job starts from: the loaded model and its validated strategy, where it runs, what kind of model
    it is, and (loaded when first asked for) its tokenizer, processor and image preprocessing."""

    model_cfg: DictConfig
    device: torch.device
    dtype: torch.dtype
    loaded: LoadedModel
    image_size: int | None  # a dual encoder's input size; None for a VLM (its layout's)
    strategy: Strategy  # validated for the model, not yet applied (LoRA goes on first)
    layout: Layout | None  # a generative VLM's layout; None for a dual encoder

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.model_cfg)

    @cached_property
    def processor(self):
        """A VLM's processor (tokenizer, image processor, chat template); a one-line error where there is none."""
        return load_processor(self.model_cfg)

    @cached_property
    def preprocess(self) -> ImagePreprocess:
        """A dual encoder's image preprocessing at `image_size`."""
        return load_preprocess(self.model_cfg, self.image_size)


def prepare(cfg: DictConfig) -> Prepared:
    """Check the cheap things first (every knob, the model's config and the pruning knobs before any weights
    load), then seed and load the model."""
    check_knobs(cfg)  # the entry scripts did, before torch loaded; here for callers of the job functions
    use_recorded_reduction(cfg)
    config = model_config(cfg.model)  # read once: the kind of model, the strategy's checks and the weights
    layout = layout_of(config)
    if layout is not None:  # the tower's size is the layout's: synthetic requests check model.image_size
        size, strategy = None, build_vlm(cfg.pruning, layout, config, cfg.seed)
    else:
        size = image_size(cfg, config.vision_config)
        strategy = build(cfg.pruning, config.vision_config, family_for(config.model_type).has_cls, cfg.seed, size)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    pl.seed_everything(cfg.seed, verbose=False)
    return Prepared(cfg.model, device, dtype, load_model(cfg.model, config), size, strategy, layout)


ADAPTIVE_SAMPLE = 64  # images whose own FLOPs and token counts are averaged under adaptive keep


def sample_images(dataset, n: int = ADAPTIVE_SAMPLE) -> torch.Tensor:
    """The pixels of `n` evenly spaced items of a dataset of (pixels, ...) -> [n, 3, H, W] (evenly
    spaced: folder datasets are sorted by class)."""
    indices = torch.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().long().unique()
    pixels = torch.stack([dataset[int(i)][0] for i in indices])  # [n, 3, H, W]
    return dataset.preprocess.normalize(pixels) if pixels.dtype == torch.uint8 else pixels  # uint8: as a loader does


def cost_per_image(encoder: ImageEncoder, strategy: Strategy, dataset, dtype: torch.dtype) -> tuple[float, float]:
    """(FLOPs per image, tokens entering the last layer). Adaptive keep: means over
    `ADAPTIVE_SAMPLE` images spread over `dataset`, each counted alone (its own budget, no padding);
    otherwise one blank image (the cost depends on no pixel)."""
    n_layers, has_cls = encoder.model.config.vision_config.num_hidden_layers, encoder.family.has_cls
    device = next(encoder.parameters()).device  # where the encoder is now (Lightning's teardown moves it to the CPU)
    if not strategy.per_image:
        blank = torch.zeros(1, 3, encoder.image_size, encoder.image_size, device=device, dtype=dtype)
        return flops_per_image(encoder, blank), strategy.tokens_per_layer(encoder.n_patches, n_layers, has_cls)[-1]
    flops, tokens = [], []
    for image in sample_images(dataset).to(device=device, dtype=dtype):
        flops.append(flops_per_image(encoder, image[None]))  # [1, 3, H, W]
        tokens.append(int(has_cls) + int(adaptive_budgets(encoder.model)[0]))  # CLS + the patches this image kept
    return statistics.fmean(flops), statistics.fmean(tokens)


def encoder_row(task: str, cfg: DictConfig, weights: str, strategy: Strategy, device: torch.device,
                encoder: ImageEncoder, dtype: torch.dtype, dataset) -> dict:
    """The columns every task fills from its model and strategy; FLOPs and tokens as `cost_per_image`
    counts them (`dataset`: the job's inputs, (pixels, ...) items)."""
    flops, tokens = cost_per_image(encoder, strategy, dataset, dtype)
    return {
        **base_row(task, Path(cfg.paths.root_dir)),
        "model": model_label(cfg.model, weights), "weights": weights, **training_of(cfg.model, weights),
        "strategy": cfg.pruning.name, **strategy.columns(),
        "device": device_label(device), "dtype": cfg.dtype, "batch_size": cfg.data.batch_size,
        "image_size": encoder.image_size, "tokens": round(tokens, 2),
        "gflops_per_img": flops / 1e9, "gmacs_per_img": flops / 2e9,
    }  # fmt: skip


def tokens_text(row: dict) -> str:
    """The row's `tokens` in words (adaptive keep: a mean over images)."""
    adaptive = "mass=" in str(row["score"])
    return f"{row['tokens']} tokens at the last layer" + (" (mean per image, adaptive keep)" if adaptive else "")


def test_trainer(cfg: DictConfig, device: torch.device, out_dir: Path, logger, unit: str, callbacks: tuple = (),
                 **options) -> tuple[pl.Trainer, ProfilingCallback]:
    """The Trainer of a job that runs test batches (of `unit`: images, requests), with the timing callback
    (returned beside it), the progress line and `callbacks`; `options` go to the Trainer (e.g. strategy and
    devices for data parallelism)."""
    profiler = ProfilingCallback(warmup=cfg.warmup, gpu_sample_interval_s=cfg.gpu_sample_interval_s)
    options = {"devices": 1, **options}
    trainer = pl.Trainer(accelerator=device.type, logger=logger or False,
                         callbacks=[profiler, ProgressCallback(cfg.task, unit, cfg.progress_every_s), *callbacks],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=str(out_dir), **options)
    return trainer, profiler


def resume_from(cfg: DictConfig, out_dir: Path) -> str | None:
    """`resume`: true = this run dir's last checkpoint when there is one, false = none, or a .ckpt path."""
    if isinstance(cfg.resume, bool):
        last = out_dir / "checkpoints" / "last.ckpt"
        if last.parent.is_dir():
            remove_stale_temporaries(last.parent)  # a write cut short by a kill; last.ckpt itself is whole
        return check_checkpoint(last, "resume=true: ") if cfg.resume and last.is_file() else None
    if not Path(cfg.resume).is_file():
        raise ConfigError(f"resume={cfg.resume!r} is not a checkpoint file; allowed: true, false, or a .ckpt path")
    return check_checkpoint(Path(cfg.resume), "resume=")


def check_checkpoint(path: Path, setting: str) -> str:
    """`path` if it is a whole torch checkpoint (a zip archive whose directory, at its end, reads)."""
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{setting}{path} is truncated or not a checkpoint; resume from another one, or "
                          "resume=false to start over")
    return str(path)


def fit_trainer(cfg: DictConfig, device: torch.device, out_dir: Path, logger, unit: str, timed: bool = True,
                what: str = "train", checkpoints: bool = True, **options) -> tuple[pl.Trainer, ProfilingCallback | None]:
    """The Trainer of every training job and stage: `cfg.trainer` (`options` override it: a stage's own max_steps,
    gradient clipping) with `cfg.dtype`'s precision, if `checkpoints` a checkpoint every `cfg.checkpoint_every_n_steps`
    steps (`out_dir/checkpoints/last.ckpt`; every checkpoint written whole or not at all), the progress line (`what`,
    of `unit`: images, questions) and, if `timed`, the timing callback (returned beside it). max_steps > 0 decides
    over as many epochs as it takes."""
    profiler = ProfilingCallback(warmup=cfg.warmup, gpu_sample_interval_s=cfg.gpu_sample_interval_s) if timed else None
    saves = [ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0,
                             every_n_train_steps=cfg.checkpoint_every_n_steps)] if checkpoints else []
    by_steps = (options.get("max_steps", cfg.trainer.max_steps) or -1) > 0
    trainer = instantiate(cfg.trainer, accelerator=device.type, precision=PRECISION[cfg.dtype],
                          logger=logger or False, enable_progress_bar=False, default_root_dir=str(out_dir),
                          **({"max_epochs": -1} if by_steps else {}), plugins=[AtomicCheckpointIO()],
                          enable_checkpointing=checkpoints, **options,
                          callbacks=[*([profiler] if timed else []), *saves,
                                     ProgressCallback(what, unit, cfg.progress_every_s)])
    return trainer, profiler


def fit(trainer: pl.Trainer, module: pl.LightningModule, ckpt_path: str | None, out_dir: Path, **data) -> float:
    """`trainer.fit` on `data` (a datamodule or train_dataloaders), from `ckpt_path` (None: fresh), then the run
    dir's `last.ckpt` written at the end, so that a rerun resumes from there; the seconds the fit took."""
    started = time.perf_counter()
    trainer.fit(module, ckpt_path=ckpt_path, **data)
    seconds = time.perf_counter() - started
    trainer.save_checkpoint(out_dir / "checkpoints" / "last.ckpt", weights_only=False)
    return seconds


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()


def closing_lines(row: dict, out_dir: Path, project_csv: Path, wandb_dir: str | None) -> list[str]:
    """The end of every job's summary: where the row went, the W&B run, and the random-weights warning."""
    lines = [f"  results   {out_dir / 'results.csv'} (+ one row in {project_csv})"]
    if wandb_dir:
        lines.append(f"  W&B       {wandb_dir} (upload: wandb sync {wandb_dir})")
    if row["weights"].startswith("random"):
        lines.append("  !! " + RANDOM_WEIGHTS_WARNING.format(source=row["model"]))
    return lines


def save_row(row: dict, cfg: DictConfig, out_dir: Path, logger, prefix: str) -> None:
    """The row to the run dir's and the project's results.csv, and its numbers to W&B under `prefix/`."""
    write_results(row, out_dir, Path(cfg.paths.results_csv))
    if logger is not None:
        logger.log_metrics({f"{prefix}/{k}": v for k, v in row.items() if isinstance(v, (int, float))})
        logger.experiment.summary.update({f"{prefix}/{k}": v for k, v in row.items() if isinstance(v, str)})
