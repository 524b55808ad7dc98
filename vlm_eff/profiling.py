"""The one timing implementation: a Lightning `Callback` used by every entry point.

Honest timing: on CUDA `torch.cuda.synchronize()` before each clock read (otherwise one measures
kernel launches, not work), `time.perf_counter` everywhere; the first `warmup` batches are excluded.
Peak memory is this job's own, over the timed batches (warm-up's one-time allocations excluded):
CUDA's allocated peak, or on CPU the peak resident set above the level before the first timed batch
(reset through /proc/self/clear_refs, so jobs of one `-m` sweep don't inherit peaks). On a GPU,
CUDA's reserved peak too, and NVML samples (utilisation, memory used, power, SM clock,
temperature) taken by a background thread while the timed batches run.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import statistics
import threading
import time
from pathlib import Path
from typing import Callable

import torch
from pytorch_lightning import Callback
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from vlm_eff.reduction.base import REDUCE_RANGE

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

    def peak_reserved_mib(self) -> float | None:
        """The CUDA caching allocator's reserved peak (what the GPU really gave up); None on CPU."""
        return torch.cuda.max_memory_reserved(self.device) / 2**20 if self.device.type == "cuda" else None


def nvml_sampler(device: torch.device) -> Callable[[], dict] | None:
    """A function reading the GPU's NVML metrics, or None when there is no GPU or no NVML driver."""
    if device.type != "cuda":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception as error:  # no driver, no library, or a device NVML does not know
        log.warning("NVML unavailable (%s): GPU utilisation, power and clocks not measured", error)
        return None

    def sample() -> dict:
        return {
            "gpu_util_pct": pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
            "gpu_mem_used_mib": pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20,
            "gpu_power_w": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000,
            "gpu_sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "gpu_temp_c": pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        }

    return sample


class Sampler:
    """Calls `read()` every `interval_s` in a background thread between `start()` and `stop()`;
    `summary()` gives the mean of each value (the max for memory used and temperature)."""

    PEAK = ("gpu_mem_used_mib", "gpu_temp_c")

    def __init__(self, read: Callable[[], dict], interval_s: float):
        self.read, self.interval_s = read, interval_s
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sampling (a no-op while already sampling)."""
        if self._thread is not None:
            return
        self.samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vlm-eff-gpu-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            self.samples.append(self.read())
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self.summary()

    def summary(self) -> dict:
        if not self.samples:
            return {}
        pick = lambda key, values: max(values) if key in self.PEAK else statistics.fmean(values)  # noqa: E731
        return {key: pick(key, [s[key] for s in self.samples]) for key in self.samples[0]}


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
    if isinstance(getattr(batch, "batch_size", None), int):  # a batch that says its size (VLM requests)
        return batch.batch_size
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
    batches this run makes of each stage (a resumed run warms up again, wherever its epoch starts);
    `summaries["test"]` / `summaries["train"]` hold the results. Beside the per-batch latencies,
    `e2e_throughput_img_s` divides the timed images by the wall time from the end of the last warm-up
    batch to the end of the last batch, summed over epochs (a later epoch from its first batch's
    start): waiting for the loader counts there.

    Peak memory: for test, over the timed batches (inference's one-time warm-up allocations left
    out); for train, from the start of training, so gradients and optimizer state count."""

    def __init__(self, warmup: int = 3, gpu_sample_interval_s: float = 0.1):
        self.warmup, self.gpu_sample_interval_s = warmup, gpu_sample_interval_s
        self.summaries: dict[str, dict] = {}
        self.latencies_s: dict[str, list[float]] = {}
        self.timed_images: dict[str, int] = {}
        self._memory: PeakMemory | None = None
        self._sampler: Sampler | None = None
        self._start = self._last_end = self._wall_s = 0.0
        self._wall_start: float | None = None
        self._batches_seen = 0  # this run's batches of the current stage, warm-up included

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def _begin(self, stage: str, pl_module) -> None:
        self.latencies_s[stage], self.timed_images[stage], self._wall_s = [], 0, 0.0
        self._wall_start, self._batches_seen = None, 0
        self._memory = PeakMemory(pl_module.device)
        if stage == "train":
            self._memory.reset()
        read = nvml_sampler(pl_module.device) if self.gpu_sample_interval_s > 0 else None
        self._sampler = Sampler(read, self.gpu_sample_interval_s) if read else None

    def _close_segment(self) -> None:
        """End the wall-time segment of this epoch (validation between epochs is not the loader's time)."""
        if self._wall_start is not None:
            self._wall_s += self._last_end - self._wall_start
            self._wall_start = None

    def _batch_start(self, stage: str, pl_module) -> None:
        if self._batches_seen == self.warmup and not self.latencies_s[stage]:  # the first timed batch of the stage
            if stage == "test":
                self._memory.reset()
            if self._sampler is not None:
                self._sampler.start()
        self._sync(pl_module)
        self._start = time.perf_counter()
        if self._batches_seen >= self.warmup and self._wall_start is None:
            self._wall_start = self._start  # no warm-up, or a later epoch: the segment starts with this batch

    def _batch_end(self, stage: str, pl_module, batch) -> None:
        self._sync(pl_module)
        self._last_end = time.perf_counter()
        elapsed = self._last_end - self._start
        if self._batches_seen >= self.warmup:
            self.latencies_s[stage].append(elapsed)
            self.timed_images[stage] += _batch_size(batch)
        elif self._batches_seen == self.warmup - 1:
            self._wall_start = self._last_end  # this epoch's end-to-end time runs from here: loading the next batch counts
        self._batches_seen += 1

    def _end(self, stage: str) -> None:
        self._close_segment()
        gpu = self._sampler.stop() if self._sampler is not None else {}
        if not self.latencies_s[stage]:
            log.warning("%s: no batch timed beyond the %d warm-up batches", stage, self.warmup)
            return
        peak = self._memory.peak_mib()
        self.summaries[stage] = {
            **latency_summary(self.latencies_s[stage], self.timed_images[stage]),
            "e2e_throughput_img_s": self.timed_images[stage] / self._wall_s,
            "peak_mem_mib": peak,
            "mem_kind": self._memory.kind if peak is not None else "",
            "peak_reserved_mib": self._memory.peak_reserved_mib(),
            **gpu,
        }

    def on_test_start(self, trainer, pl_module) -> None:
        self._begin("test", pl_module)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_start("test", pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_end("test", pl_module, batch)

    def on_test_end(self, trainer, pl_module) -> None:
        self._end("test")

    def on_train_start(self, trainer, pl_module) -> None:
        self._begin("train", pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start("train", pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batch_end("train", pl_module, batch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._close_segment()

    def on_train_end(self, trainer, pl_module) -> None:
        self._end("train")


ENCODER_RANGE = "vlm_eff.encoder"


@torch.inference_mode()
def reduction_share(encoder: nn.Module, batches: list[torch.Tensor]) -> float | None:
    """The share (%) of the image encoder's time spent in the token reduction steps (scoring,
    selecting, gathering, merging, masks: the `vlm_eff.reduce` profiler ranges), from a
    torch.profiler trace of `encoder` over `batches`: host time on CPU; on CUDA the GPU time of
    the kernels each range launched. None without batches."""
    if not batches:
        return None
    cuda = batches[0].device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as trace:
        for pixels in batches:
            with record_function(ENCODER_RANGE):
                encoder(pixels)
        if cuda:
            torch.cuda.synchronize(batches[0].device)
    spent = {e.key: e.device_time_total if cuda else e.cpu_time_total
             for e in trace.key_averages() if e.device_type == DeviceType.CPU}  # the ranges, not their GPU spans
    return 100 * spent.get(REDUCE_RANGE, 0.0) / spent[ENCODER_RANGE]
