"""Image-text retrieval recall, as CLIP_benchmark defines it: image-to-text R@k counts an image as a hit
when any of its captions is among its k best-scoring captions; text-to-image R@k counts a caption as a
hit when its image is among its k best-scoring images.

Ties count against the query: a candidate that is not a match and scores exactly as high as the best
match ranks above it (so a model whose embeddings collapse to one point scores 0, not 100).
"""

from __future__ import annotations

import torch

RECALL_AT = (1, 5, 10)


def retrieval_recalls(similarity: torch.Tensor, caption_image: torch.Tensor, ks=RECALL_AT) -> dict[str, float]:
    """similarity [I, T] (image i vs caption t), caption_image [T] (the image each caption describes) ->
    {"i2t_r1": ..., "t2i_r10": ...}, fractions in [0, 1]."""
    n_images = similarity.shape[0]
    match = caption_image[None, :] == torch.arange(n_images, device=similarity.device)[:, None]  # [I, T]
    best_caption = similarity.masked_fill(~match, float("-inf")).amax(dim=1)  # [I], each image's best own caption
    i2t_rank = ((similarity >= best_caption[:, None]) & ~match).sum(dim=1)  # [I], other captions at least as high
    own_image = similarity.gather(0, caption_image[None, :])[0]  # [T]
    t2i_rank = ((similarity >= own_image[None, :]) & ~match).sum(dim=0)  # [T], other images at least as high
    recalls = {f"i2t_r{k}": (i2t_rank < k).float().mean().item() for k in ks}
    return recalls | {f"t2i_r{k}": (t2i_rank < k).float().mean().item() for k in ks}
