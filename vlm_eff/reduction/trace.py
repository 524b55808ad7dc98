"""What a reduction did to each image, step by step, for token maps (`vlm_eff.visualize`): inside
`tracing()` every strategy records each of its steps as the patches each surviving token stands for.
Outside it (always, in the timed jobs) nothing is recorded and no step pays for it.

A step's `sources` are [B, T, N] booleans over the N cells of one space:
    patches   the vision tower's patch grid (encoder strategies, VisionZip)
    slots     the stock visual tokens of one image, in placeholder order (DivPrune, FastV, PyramidDrop)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

SPACES = ("patches", "slots")


@dataclass
class TraceStep:
    """One reduction step: the tokens after it, as the cells each stands for."""

    where: str  # e.g. "layer 3", "feature layer", "LLM layer 2"
    sources: torch.Tensor  # [B, T, N] bool: the cells each token stands for (none: CLS)
    summary: torch.Tensor  # [B, T] bool: a summary or fused token (it stands for what it averaged)
    space: str = "patches"


_steps: list[TraceStep] | None = None


@contextmanager
def tracing() -> Iterator[list[TraceStep]]:
    """Record every reduction step run inside the block; yields the list the steps are appended to."""
    global _steps
    outer, _steps = _steps, []
    try:
        yield _steps
    finally:
        _steps = outer


def active() -> bool:
    return _steps is not None


def record(where: str, sources: torch.Tensor, summary: torch.Tensor | None = None, space: str = "patches") -> None:
    """Append a step (a no-op outside `tracing()`); `summary` None: no token is a summary."""
    if _steps is not None:
        flags = summary if summary is not None else sources.new_zeros(sources.shape[:2])
        _steps.append(TraceStep(where, sources.detach().cpu(), flags.detach().cpu(), space))


def patch_sources(batch: int, n_tokens: int, has_cls: bool, device: torch.device | None = None) -> torch.Tensor:
    """Sources of an unreduced sequence [CLS?] + patches -> [B, T, N] bool (CLS stands for no patch)."""
    first = int(has_cls)
    eye = torch.eye(n_tokens - first, dtype=torch.bool, device=device)  # [N, N]
    rows = torch.cat([eye.new_zeros(first, n_tokens - first), eye])  # [T, N]
    return rows.expand(batch, -1, -1)


def kept_slots(kept: list[torch.Tensor], n_slots: int) -> torch.Tensor:
    """Sources in slot space of rows that keep the slots `kept[b]` ([n_b] indices, ascending) -> [B, max n, S]
    (rows with fewer tokens padded with empty rows)."""
    T = max(len(k) for k in kept)
    sources = torch.zeros(len(kept), T, n_slots, dtype=torch.bool)
    for b, k in enumerate(kept):
        sources[b, torch.arange(len(k)), k.cpu()] = True
    return sources
