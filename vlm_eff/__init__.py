"""vlm-eff: cheaper CLIP-style models: token reduction, LoRA, honest profiling."""

from vlm_eff.token_reduction import apply_patch, current_reduction, remove_patch, tokens_per_layer

__all__ = ["apply_patch", "remove_patch", "current_reduction", "tokens_per_layer"]
