"""Learning-rate schedules for `configure_optimizers` (configured with `_partial_`)."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_cosine_schedule_with_warmup


def cosine_with_warmup(optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05) -> LambdaLR:
    """transformers' cosine decay to zero, after a linear warm-up over the first `warmup_fraction` of the steps."""
    return get_cosine_schedule_with_warmup(optimizer, max(1, int(warmup_fraction * total_steps)), total_steps)
