"""The one timing implementation: a Lightning `Callback` used by every entry point.

Honest timing: on CUDA `torch.cuda.synchronize()` before each clock read (otherwise one measures
kernel launches, not work), `time.perf_counter` everywhere; the first `warmup` batches are excluded.
Peak memory is this job's own, over the timed batches (warm-up's one-time allocations excluded):
CUDA's allocated peak, or on CPU the peak resident set above the level before the first timed batch
(reset through /proc/self/clear_refs, so jobs of one `-m` sweep don't inherit peaks).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import statistics
import time
from pathlib import Path

import torch
from pytorch_lightning import Callback

log = logging.getLogger(__name__)


class PeakMemory:
    """Per-job peak memory: `reset()` at the start, `peak_mib()` at the end."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_allocated" if device.type == "cuda" else "rss_delta"
        self.baseline_kib = 0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        gc.collect()
        _release_free_heap()  # else activations reuse memory earlier jobs freed, and RSS never rises
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
            self.baseline_kib = _proc_status_kib("VmRSS")
        except OSError:
            log.warning("cannot reset peak RSS (no /proc/self/clear_refs): peak memory not measured")
            self.kind = ""

    def peak_mib(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if not self.kind:
            return None
        return max(0, _proc_status_kib("VmHWM") - self.baseline_kib) / 1024


def _release_free_heap() -> None:
    """Give freed heap pages back to the OS (glibc's malloc_trim); a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _batch_size(batch) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        return _batch_size(next(iter(batch.values())))
    return _batch_size(batch[0])


def latency_summary(latencies_s: list[float], n_images: int) -> dict:
    """Mean, median, std, p90 latency (ms) of the timed batches, and throughput (images/s)."""
    ms = [t * 1000 for t in latencies_s]
    return {
        "latency_ms_mean": statistics.fmean(ms),
        "latency_ms_median": statistics.median(ms),
        "latency_ms_std": statistics.stdev(ms) if len(ms) > 1 else 0.0,
        "latency_ms_p90": statistics.quantiles(ms, n=10, method="inclusive")[-1] if len(ms) > 1 else ms[0],
        "throughput_img_s": n_images / sum(latencies_s),
    }


class ProfilingCallback(Callback):
    """Times each train and test batch (the step and the hooks around it), skipping the first `warmup`
    of each stage; `summaries["test"]` / `summaries["train"]` hold the results."""

    def __init__(self, warmup: int = 3):
        self.warmup = warmup
        self.summaries: dict[str, dict] = {}
        self.latencies_s: dict[str, list[float]] = {}
        self.timed_images: dict[str, int] = {}
        self._memory: PeakMemory | None = None
        self._start = 0.0

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def _begin(self, stage: str, pl_module) -> None:
        self.latencies_s[stage], self.timed_images[stage] = [], 0
        self._memory = PeakMemory(pl_module.device)

    def _batch_start(self, pl_module, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            self._memory.reset()
        self._sync(pl_module)
        self._start = time.perf_counter()

    def _batch_end(self, stage: str, pl_module, batch, batch_idx: int) -> None:
        self._sync(pl_module)
        elapsed = time.perf_counter() - self._start
        if batch_idx >= self.warmup:
            self.latencies_s[stage].append(elapsed)
            self.timed_images[stage] += _batch_size(batch)

    def _end(self, stage: str) -> None:
        if not self.latencies_s[stage]:
            log.warning("%s: no batch timed beyond the %d warm-up batches", stage, self.warmup)
            return
        peak = self._memory.peak_mib()
        self.summaries[stage] = {
            **latency_summary(self.latencies_s[stage], self.timed_images[stage]),
            "peak_mem_mib": peak,
            "mem_kind": self._memory.kind if peak is not None else "",
        }

    def on_test_start(self, trainer, pl_module) -> None:
        self._begin("test", pl_module)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_start(pl_module, batch_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_end("test", pl_module, batch, batch_idx)

    def on_test_end(self, trainer, pl_module) -> None:
        self._end("test")

    def on_train_start(self, trainer, pl_module) -> None:
        self._begin("train", pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start(pl_module, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batch_end("train", pl_module, batch, batch_idx)

    def on_train_end(self, trainer, pl_module) -> None:
        self._end("train")
