"""Result rows: the DESIGN.md columns, written atomically to the run dir and appended, under a lock,
to the project-wide `outputs/results.csv` (parallel sweep jobs never lose or tear a row)."""

from __future__ import annotations

import csv
import fcntl
import io
import os
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

import torch

from vlm_eff.atomic import write_atomic

COLUMNS = (  # DESIGN.md's columns first, in its order; the later ones after them
    "task", "time", "git_sha", "model", "weights", "strategy", "keep", "layer", "score", "device", "dtype",
    "threads", "batch_size", "image_size", "tokens", "gflops_per_img", "gmacs_per_img", "latency_ms_mean",
    "latency_ms_median", "latency_ms_std", "latency_ms_p90", "throughput_img_s", "peak_mem_mib", "mem_kind",
    "top1", "top5", "n_images", "trainable_params", "objective", "e2e_throughput_img_s",
    "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "peak_reserved_mib", "gpu_util_pct", "gpu_mem_used_mib",
    "gpu_power_w", "gpu_sm_clock_mhz", "gpu_temp_c", "compile", "reduce_share_pct", "versions",
    "site", "visual_tokens", "vision_ms", "prefill_ms", "ttft_ms", "decode_ms_per_token", "kv_cache_mib",
    "gflops_vision", "gflops_prefill", "gflops_per_decode_token", "vqa_acc", "benchmark", "benchmark_score",
    "train_steps",
)  # fmt: skip


def git_sha(repo: Path) -> str:
    """Short SHA of `repo`'s HEAD, with '+dirty' for uncommitted changes; '' outside a git checkout."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return ""


def versions() -> str:
    names = ("torch", "transformers", "pytorch-lightning")
    return " ".join(f"{name}={version(name)}" for name in names)


def base_row(task: str, repo: Path) -> dict:
    """The columns every task fills the same way."""
    return {
        "task": task,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_sha": git_sha(repo),
        "threads": torch.get_num_threads(),
        "versions": versions(),
    }


def csv_text(rows: list[dict], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="raise", lineterminator="\n")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buffer.getvalue()


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def append_locked(path: Path, row: dict) -> None:
    """Append one row to the shared table under an exclusive lock; a header first if the file is new.
    A table with another header (an older version's) is moved aside, not mixed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists() and path.stat().st_size:
            with open(path) as f:
                header = f.readline().strip()
            if header != ",".join(COLUMNS):
                path.rename(path.with_name(f"{path.stem}.old-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}"))
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a") as f:
            f.write(csv_text([row], header=new))
            f.flush()
            os.fsync(f.fileno())


def write_results(row: dict, run_dir: Path, project_csv: Path) -> None:
    """The row as the run dir's `results.csv` (atomic) and one more line of the project-wide table."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise KeyError(f"not result columns: {sorted(unknown)}")
    full = {column: row.get(column) for column in COLUMNS}
    write_atomic(run_dir / "results.csv", csv_text([full], header=True))
    append_locked(project_csv, full)


def read_results(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
