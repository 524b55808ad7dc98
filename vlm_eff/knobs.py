"""Every numeric knob checked before any data or model loads: one ConfigError line naming the value and
what is allowed (the entry scripts print it and exit 2). Keys a config does not have are skipped, so one
table serves profile, evaluate, train and visualize; strategy knobs are checked where the strategy is
built (reduction/), against the model they apply to."""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from vlm_eff.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
POSITIONS = ("compact", "original")  # pruning.positions: kept tokens renumbered 0.. or at their stock positions
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # dtype= name -> torch dtype name


class Range:
    """Numbers from `low` to `high` (None: unbounded), each end open or closed; `integer` for counts;
    `also` lists values allowed besides the range (Lightning's -1 "no limit", null)."""

    def __init__(self, low=None, high=None, *, low_open=False, high_open=False, integer=False, also=()):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        self.integer, self.also = integer, also

    def __contains__(self, value) -> bool:
        if value in self.also and (value is None or not isinstance(value, bool)):
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.integer and not isinstance(value, int):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            text = f"{kind} in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {self.low}"
        else:
            text = kind
        return text + "".join(f" or {'null' if a is None else a}" for a in self.also)


KNOBS = {  # dotted key -> what is allowed
    "runs": Range(1, integer=True),
    "warmup": Range(0, integer=True),
    "data.batch_size": Range(1, integer=True),
    "data.subset": Range(1, integer=True, also=(None,)),
    "data.num_workers": Range(0, integer=True, also=(None,)),
    "lora.rank": Range(1, integer=True),
    "optimizer.lr": Range(0, low_open=True),
    "optimizer.weight_decay": Range(0),
    "optimizer.eps": Range(0, low_open=True),
    "optimizer.momentum": Range(0, 1, high_open=True),
    "scheduler.warmup_fraction": Range(0, 1, high_open=True),
    "trainer.max_epochs": Range(1, integer=True, also=(-1,)),
    "trainer.max_steps": Range(1, integer=True, also=(-1,)),
    "trainer.gradient_clip_val": Range(0, also=(None,)),
    "trainer.log_every_n_steps": Range(1, integer=True),
    "trainer.accumulate_grad_batches": Range(1, integer=True),
    "trainer.devices": Range(1, integer=True, also=("auto",)),
    "trainer.num_nodes": Range(1, integer=True),
    "checkpoint_every_n_steps": Range(1, integer=True),
    "tower_stage.steps": Range(0, integer=True),
    "tower_stage.lr": Range(0, low_open=True),
    "tower_stage.batch_size": Range(1, integer=True),
    "language_stage.steps": Range(0, integer=True),
    "language_stage.lr": Range(0, low_open=True),
    "language_stage.batch_size": Range(1, integer=True),
    "language_stage.presence_steps": Range(0, integer=True),
    "language_stage.position_steps": Range(0, integer=True),
    "language_stage.task_steps": Range(0, integer=True),
    "language_stage.grid_steps": Range(0, integer=True),
    "align_weight": Range(0),
    "gpu_sample_interval_s": Range(0),
    "progress_every_s": Range(0, low_open=True),
    "objective.temperature": Range(0, low_open=True),
    "objective.max_new_tokens": Range(1, integer=True),
    "gen_tokens": Range(1, integer=True),
    "protocol.max_new_tokens": Range(1, integer=True),
    "panels": Range(1, integer=True),
    "panel_px": Range(1, integer=True),
}
CHOICES = {  # dotted key -> the allowed values
    "pruning.positions": POSITIONS,
    "dtype": tuple(DTYPES),
    "device": DEVICES,
}


def check_keep(keep) -> float:
    """`pruning.keep`, the fraction of patch tokens kept, in (0, 1]."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ConfigError(f"pruning.keep={keep!r} is outside (0, 1]: keep is the fraction of patch tokens kept")
    return float(keep)


def check_knobs(cfg: DictConfig) -> None:
    """Every knob of `KNOBS` and `CHOICES` the config has, the optimizer's betas, the trainer's limits and
    the fixable combinations (`check_combinations`)."""
    for key, allowed in KNOBS.items():
        if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            continue
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} must be {allowed}")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key, default="<absent>")
        if value != "<absent>" and value not in allowed:
            raise ConfigError(f"{key}={value!r} is unknown; allowed: {', '.join(allowed)}")
    if OmegaConf.select(cfg, "pruning.keep") is not None:
        check_keep(OmegaConf.select(cfg, "pruning.keep"))
    betas = OmegaConf.select(cfg, "optimizer.betas")
    if betas is not None and (not isinstance(betas, (list, ListConfig)) or len(betas) != 2
                              or any(b not in Range(0, 1, high_open=True) for b in betas)):
        raise ConfigError(f"optimizer.betas={_plain(betas)!r} must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    mix = OmegaConf.select(cfg, "data.train_mix")
    if mix is not None:
        from vlm_eff.data.cifar10_vqa import check_mix  # numpy and torch: only for a config that has a mix

        check_mix(_plain(mix))
    if OmegaConf.select(cfg, "trainer.max_epochs") == -1 and OmegaConf.select(cfg, "trainer.max_steps",
                                                                              default=-1) == -1:
        raise ConfigError("trainer.max_epochs=-1 with no trainer.max_steps would train forever; set one of them")
    check_combinations(cfg)


def check_combinations(cfg: DictConfig) -> None:
    """Knobs fine alone but wrong together, where the fix is known: the line says it."""
    if OmegaConf.select(cfg, "compile") and OmegaConf.select(cfg, "warmup") < 1:
        raise ConfigError(f"compile=true needs warmup >= 1 (the first batch compiles), got warmup={cfg.warmup}")
    objective, data = OmegaConf.select(cfg, "objective.name"), OmegaConf.select(cfg, "data.name")
    root = OmegaConf.select(cfg, "data.root")
    asks = OmegaConf.select(cfg, "data.questions", default=None) is not None or data == "cifar10_vqa"  # VLM questions
    if objective == "distill" and data not in (None, "images") and not asks and root and \
            _unlabelled_folder(Path(str(root))):
        raise ConfigError(f"objective=distill with data={data}: data.root={root} is a folder of unlabelled images "
                          f"(no <split>/<class>/ folders); add data=images to train on it")
    if objective == "labels" and data == "images":
        raise ConfigError("objective=labels needs labelled data, and data=images has no classes; use "
                          "objective=distill to train without labels")


def _unlabelled_folder(root: Path) -> bool:
    """A folder with image files but without the split folders (train/, test/) labelled data has."""
    root = root.expanduser()
    if not root.is_dir() or (root / "train").is_dir() or (root / "test").is_dir():
        return False
    from vlm_eff.data.cifar10 import IMAGE_SUFFIXES

    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.rglob("*") if p.is_file())


def _plain(value):
    return OmegaConf.to_container(value) if isinstance(value, (ListConfig, DictConfig)) else value
