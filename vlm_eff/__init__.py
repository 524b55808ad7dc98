"""vlm-eff: cheaper vision-language models, dual encoders (CLIP, SigLIP) and generative VLMs: token reduction,
LoRA, label-free recovery, honest profiling.

The functional API (`from vlm_eff import apply_patch, apply_tome, ...`) loads on first use, so that the entry
scripts' cheap checks (`vlm_eff.cli`) answer a bad command line before torch is imported."""

import importlib

_API = {"apply_patch": "vlm_eff.reduction.dropping", "remove_patch": "vlm_eff.reduction.dropping",
        "current_reduction": "vlm_eff.reduction.dropping", "tokens_per_layer": "vlm_eff.reduction.dropping",
        "apply_tome": "vlm_eff.reduction.merging", "remove_tome": "vlm_eff.reduction.merging"}
__all__ = list(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'vlm_eff' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
