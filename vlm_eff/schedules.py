"""Learning-rate schedules for `configure_optimizers` (configured with `_partial_`)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def cosine_with_warmup(optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05) -> LambdaLR:
    """Linear warm-up over the first `warmup_fraction` of the steps, then cosine decay to zero."""
    warmup = max(1, int(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return LambdaLR(optimizer, factor)
