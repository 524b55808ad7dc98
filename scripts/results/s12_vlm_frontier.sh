#!/usr/bin/env bash
# The VLM frontier on one of the project's trained small VLMs (docs/RESULTS.md section 12): every strategy of
# every site at 50 / 25 / 12.5 % of the 256 visual tokens (128 / 64 / 32), exact match overall and per question
# kind on the CIFAR-10 mosaic test set (data.subset=N for a seeded subset), GFLOPs (vision + prefill) and TTFT on this machine; one sweep dir, one
# report (accuracy vs TTFT and vs GFLOPs with Pareto fronts) with the token maps of two test mosaics.
#   bash scripts/results/s12_vlm_frontier.sh tiny_llava_cifar10 [sweep dir] [evaluate.py overrides...]
#   bash scripts/results/s12_vlm_frontier.sh tiny_llava_siglip_cifar10
# Budgets: encoder dropping and merging, FastV: keep = the share of visual tokens; VisionZip, DivPrune, and the 2025
# baselines random, VisPruner, CDPruner (relevance from the twin's own dual encoder, model.init_tower) and DART: tokens;
# SparseVLM: the paper's retained counts of 576 (192 / 128 / 64), scaled to the image's tokens;
# EViT and PyramidDrop compound over 3 steps / stages: keep = share^(1/3) per step, so that the last step
# (PyramidDrop: its last stage) holds the share (EViT: + its fused token).
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:?usage: scripts/results/s12_vlm_frontier.sh MODEL [sweep dir] [overrides...]}
sweep=${2:-multirun/vlm_frontier_$model}
base=(protocol=vqa data=cifar10_vqa model=$model data.root=../shared/data/cifar10-jpeg.tar.gz logger=none "${@:3}")
sweeps=("${base[@]}" "hydra.sweep.dir=$sweep" 'hydra.sweep.subdir=${hydra.job.override_dirname}'  # a dir per variant
        'hydra.job.config.override_dirname.exclude_keys=[model,data.root,logger,protocol,data,data.subset,data.batch_size,pruning.text_tower]')
python evaluate.py "${base[@]}" pruning=none "hydra.run.dir=$sweep/none"
python evaluate.py -m "${sweeps[@]}" pruning=cls_preserving,late_layer,tome,pitome,fastv pruning.keep=0.5,0.25,0.125
python evaluate.py -m "${sweeps[@]}" pruning=evit 'pruning.layer=[2,3,4]' pruning.keep=0.7937,0.63,0.5
python evaluate.py -m "${sweeps[@]}" pruning=pyramiddrop pruning.keep=0.7937,0.63,0.5
python evaluate.py -m "${sweeps[@]}" pruning=visionzip,divprune pruning.tokens=128,64,32
python evaluate.py -m "${sweeps[@]}" pruning=random,vispruner,dart pruning.tokens=128,64,32
python evaluate.py -m "${sweeps[@]}" pruning=cdpruner 'pruning.text_tower=${model.init_tower}' pruning.tokens=128,64,32
python evaluate.py -m "${sweeps[@]}" pruning=sparsevlm pruning.tokens=192,128,64  # the paper's counts of 576: 33 / 22 / 11 %
python -m vlm_eff.report "$sweep" --no-wandb --token-maps 2   # + the first two test mosaics' token maps
