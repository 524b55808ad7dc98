"""Fine-tune CLIP as a zero-shot classifier over class prompts (optionally with pruning on).

    python train.py experiment=tiny_clip_cifar10 data.root=path/to/cifar10   # the project's small CLIP
"""

if __name__ == "__main__":
    from vlm_eff.cli import hydra_main

    hydra_main("train", "vlm_eff.jobs.train:train")
