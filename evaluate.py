"""Zero-shot classification accuracy of CLIP under a pruning variant.

    python evaluate.py pruning=cls_preserving pruning.keep=0.5
    python evaluate.py model=tiny_clip_cifar10 data.root=path/to/cifar10 pruning=naive pruning.keep=0.5
"""

if __name__ == "__main__":
    from vlm_eff.cli import hydra_main

    hydra_main("evaluate", "vlm_eff.jobs.evaluate:evaluate")
