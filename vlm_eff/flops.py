"""FLOP counting with `torch.utils.flop_counter`, including CPU SDPA attention.

torch 2.13 has no FLOP formula for `aten._scaled_dot_product_flash_attention_for_cpu`, the kernel
CPU SDPA runs, so attention counted zero there. We register the same formula the CUDA kernels use.
Counts are FLOPs (a multiply-add is 2); MACs are half of them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_flop

_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if _CPU_SDPA not in flop_registry:
    register_flop_formula(_CPU_SDPA, get_raw=True)(sdpa_flop)  # sdpa_flop is already shape-wrapped


@torch.no_grad()
def flops_per_image(model: nn.Module, pixel_values: torch.Tensor) -> float:
    """FLOPs of one forward of `model` per image of the batch `pixel_values` [B, 3, H, W]."""
    with FlopCounterMode(display=False) as counter:
        model(pixel_values)
    return counter.get_total_flops() / pixel_values.shape[0]
