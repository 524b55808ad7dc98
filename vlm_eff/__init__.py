"""vlm-eff: cheaper CLIP-family models (CLIP, SigLIP): token reduction, LoRA, honest profiling."""

from vlm_eff.reduction import apply_patch, apply_tome, remove_patch, remove_tome
from vlm_eff.reduction.dropping import current_reduction, tokens_per_layer

__all__ = ["apply_patch", "remove_patch", "apply_tome", "remove_tome", "current_reduction", "tokens_per_layer"]
