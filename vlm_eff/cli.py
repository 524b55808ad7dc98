"""What the entry scripts share: Hydra wiring and one-line errors for bad input, before and inside Hydra."""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from vlm_eff.errors import ConfigError

log = logging.getLogger(__name__)
FAILED_JOBS: list[Path] = []  # this process's failed sweep jobs

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def check_group_choices(argv: list[str], conf_dir: Path = CONF_DIR) -> None:
    """Exit with one line for `group=name` overrides naming no `conf/group/name.yaml`
    (Hydra's own message spans a screen); comma lists of `-m` sweeps are checked item by item."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        group = conf_dir / key
        if not sep or "." in key or key.startswith("hydra") or not group.is_dir():
            continue
        allowed = sorted(p.stem for p in group.glob("*.yaml"))
        for choice in value.split(","):
            if choice not in allowed:
                fail(f"unknown {key} {choice!r}; allowed: {', '.join(allowed)}")


def check_keys(argv: list[str], config_name: str, conf_dir: Path = CONF_DIR) -> None:
    """Exit with one line when the overrides do not compose (a misspelled key, a value Hydra cannot parse);
    Hydra's own message spans several lines. Sweeps (`-m`) are composed job by job by Hydra itself."""
    if any(arg in ("-m", "--multirun") for arg in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, OverrideParseException

    overrides = [arg for arg in argv if "=" in arg and not arg.lstrip("+~").startswith("hydra")]
    try:
        with initialize_config_dir(str(conf_dir), version_base="1.3"):
            compose(config_name, overrides=overrides)
    except (ConfigCompositionException, OverrideParseException) as error:
        text = str(error)
        missing = re.search(r"Could not override '([^']+)'", text)
        if missing:
            fail(f"{missing.group(1)} is not a setting of {config_name} (check its spelling; a new key is "
                 f"+{missing.group(1)}=...)")
        hint = "; a list is key=[a,b], a sweep over values needs -m" if "Ambiguous value" in text else ""
        fail(text.strip().splitlines()[0] + hint)


def check_writable(folder: str) -> None:
    """`folder` (a run's or sweep's output dir) can be created and written to, else one line and exit 2."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        fail(f"cannot write the output dir {folder} ({error.strerror or error}); set paths.work_dir=<a writable folder>")


class OutputDirCheck(Callback):
    """Hydra callback (conf/hydra/default.yaml): the output dir is checked before the job starts, instead
    of failing with Hydra's traceback when it first writes there."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        check_writable(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        check_writable(config.hydra.sweep.dir)


IMPLIED_GROUPS = {"lora": "default"}  # `lora.rank=8` alone means LoRA with the default settings


def imply_groups(argv: list[str]) -> list[str]:
    """Setting a knob of a group left at its no-op default selects the group's `default` option:
    `python train.py lora.rank=8` means `lora=default lora.rank=8` (lora=none has no rank)."""
    keys = [arg.lstrip("+~").partition("=")[0] for arg in argv]
    for group, option in IMPLIED_GROUPS.items():
        if group not in keys and any(key.startswith(group + ".") for key in keys):
            argv = [*argv, f"{group}={option}"]
    return argv


def quiet_third_party() -> None:
    """Keep the summary on one screen: Lightning's banners and tips, deprecations inside Lightning and PEFT."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing. is deprecated.*")


def job_error(error: Exception) -> str | None:
    """The one-line message of a bad-input error (a ConfigError, also inside a `_target_`), else None."""
    if isinstance(error, ConfigError):
        return str(error)
    if isinstance(error, InstantiationException) and isinstance(error.__cause__, ConfigError):
        return str(error.__cause__)
    return None


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failure(message: str) -> None:
    """A failed sweep job: its reason in `<job dir>/error.txt` (the report reads it); the sweep goes on."""
    from vlm_eff.atomic import write_atomic

    job_dir = Path(HydraConfig.get().runtime.output_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(job_dir / "error.txt", message + "\n")
    FAILED_JOBS.append(job_dir)
    print(f"error: job {HydraConfig.get().job.num} failed: {message}", file=sys.stderr, flush=True)


def run(job_path: str, cfg: DictConfig) -> dict | None:
    """Import and run the job `module:function`. Bad input becomes `error: <message>` and exit 2; in a
    `-m` sweep any failure is recorded in the job's dir instead and the other jobs still run."""
    from vlm_eff.knobs import check_knobs

    quiet_third_party()
    module, function = job_path.split(":")
    try:
        check_knobs(cfg)  # every numeric knob, before torch, any data or any model loads
        job = getattr(importlib.import_module(module), function)
        return job(cfg)
    except Exception as error:
        message = job_error(error)
        if in_sweep():
            if message is None:
                log.exception("job failed")
                message = f"{type(error).__name__}: " + (str(error).strip().splitlines() or [""])[0]
            record_failure(message)
            return None
        if message is None:
            raise
        fail(message)


def hydra_main(config_name: str, job_path: str) -> None:
    """The body of an entry script: `conf/<config_name>.yaml` composed by Hydra, then the job."""
    os.environ.setdefault("VLM_EFF_ROOT", str(ROOT))
    sys.argv[1:] = imply_groups(sys.argv[1:])
    check_group_choices(sys.argv[1:])
    check_keys(sys.argv[1:], config_name)

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def main(cfg: DictConfig) -> None:
        run(job_path, cfg)

    main()
    if FAILED_JOBS:
        fail(f"{len(FAILED_JOBS)} sweep job(s) failed, the others finished: see error.txt in "
             + ", ".join(str(job_dir) for job_dir in FAILED_JOBS))
