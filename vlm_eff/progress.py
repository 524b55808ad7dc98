"""Long work shows that it is working: done / total, the rate and the time left, on standard error.

On a terminal one line is redrawn in place; otherwise (a log file, a pipe, a SLURM job) a line is
printed every `every_s` seconds. After the first batch a line says how long the rest will take at
that pace (the first batch carries one-time costs, so it is an upper estimate). `ProgressCallback`
drives it from a Lightning Trainer's test and train batches; a plain loop calls `update` itself.
"""

from __future__ import annotations

import sys
import time

from pytorch_lightning import Callback

REDRAW_S = 0.2  # on a terminal, the line is redrawn at most this often


def duration(seconds: float) -> str:
    """'0.4s', '45s', '3m05s', '2h07m'."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f}s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Progress of `total` steps (None: unknown; `step` names them: batches, questions) of `unit` items
    (requests, images) for `what`."""

    def __init__(self, what: str, total: int | None, unit: str, every_s: float = 30.0, stream=None,
                 step: str = "batches"):
        self.what, self.total, self.unit, self.every_s, self.step = what, total, unit, every_s, step
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.batches = self.items = 0
        self.start = self.last = time.perf_counter()

    def update(self, items: int) -> None:
        """One more batch of `items` items done."""
        self.batches += 1
        self.items += items
        now = time.perf_counter()
        if self.batches == 1 and self.total and self.total > 1 and self.step == "batches":
            first, rest = now - self.start, self.total - 1
            self._print(f"[{self.what}] first batch took {duration(first)}; the other {rest} batch"
                        f"{'es' if rest > 1 else ''}: about {duration(first * rest)} at that pace", final=True)
        elif now - self.last >= (REDRAW_S if self.tty else self.every_s):
            self._print(self.line(now))
        else:
            return
        self.last = now

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.items / elapsed
        text = f"[{self.what}] {self.batches}" + (f"/{self.total}" if self.total else "") + f" {self.step}"
        if self.total:
            left = elapsed / self.batches * (self.total - self.batches)
            text += f" ({100 * self.batches / self.total:.1f}%)"
        text += f", {rate:.2f} {self.unit}/s, {duration(elapsed)} elapsed"
        return text + (f", ETA {duration(left)}" if self.total else "")

    def close(self) -> None:
        """The closing line: what was done, in how long."""
        if self.batches:
            now = time.perf_counter()
            self._print(f"[{self.what}] done: {self.items} {self.unit} in {self.batches} {self.step}, "
                        f"{duration(now - self.start)} ({self.items / max(now - self.start, 1e-9):.2f} {self.unit}/s)",
                        final=True)

    def _print(self, text: str, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def batch_items(batch) -> int:
    """Items in a batch: what it says of itself (VLM requests), else the first tensor's length."""
    size = getattr(batch, "batch_size", None)
    if isinstance(size, int):
        return size
    while isinstance(batch, (list, tuple, dict)):
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return len(batch)


class ProgressCallback(Callback):
    """A `Progress` line for a Trainer's test and training batches (global rank 0 only)."""

    def __init__(self, what: str, unit: str, every_s: float = 30.0):
        self.what, self.unit, self.every_s = what, unit, every_s
        self.progress: Progress | None = None

    def _start(self, trainer, total) -> None:
        if trainer.is_global_zero:
            total = int(total) if total not in (None, float("inf")) and total > 0 else None
            self.progress = Progress(self.what, total, self.unit, self.every_s)

    def _update(self, batch) -> None:
        if self.progress is not None:
            self.progress.update(batch_items(batch))

    def _end(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def on_test_start(self, trainer, pl_module) -> None:
        self._start(trainer, sum(trainer.num_test_batches))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(batch)

    def on_test_end(self, trainer, pl_module) -> None:
        self._end()

    def on_train_start(self, trainer, pl_module) -> None:  # a resumed run counts what is left
        self._start(trainer, (trainer.estimated_stepping_batches - trainer.global_step) * trainer.accumulate_grad_batches)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._update(batch)

    def on_train_end(self, trainer, pl_module) -> None:
        self._end()
