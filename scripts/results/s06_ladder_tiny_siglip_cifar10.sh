#!/usr/bin/env bash
# Every strategy at keep 0.9 / 0.7 / 0.5 / 0.25 on the project's trained small SigLIP (no CLS), full
# CIFAR-10 test set, into one sweep dir; the score controls (pool_attn vs l2 vs random) at keep 0.5 and
# 0.25; ToMe at matched FLOPs; then one report (docs/RESULTS.md section 6).
#   bash scripts/results/s06_ladder_tiny_siglip_cifar10.sh [sweep dir]      (about 30 minutes on 2 CPU cores)
# Accuracy does not depend on the machine's load; the throughput column does (run it idle to compare it).
set -euo pipefail
cd "$(dirname "$0")/../.."
sweep=${1:-multirun/ladder_tiny_siglip_cifar10}
base=(model=tiny_siglip_cifar10 data.root=../shared/data/cifar10-jpeg.tar.gz logger=none "${@:2}")
sweeps=("${base[@]}" "hydra.sweep.dir=$sweep" 'hydra.sweep.subdir=${hydra.job.override_dirname}'  # a dir per variant
        'hydra.job.config.override_dirname.exclude_keys=[model,data.root,logger]')
keeps=0.9,0.7,0.5,0.25
python evaluate.py "${base[@]}" pruning=none "hydra.run.dir=$sweep/none"
python evaluate.py -m "${sweeps[@]}" pruning=naive,position_aware,cls_preserving,late_layer,tome pruning.keep=$keeps
python evaluate.py -m "${sweeps[@]}" pruning=evit 'pruning.layer=[2,3,4]' pruning.keep=$keeps  # 6 layers: steps after 2, 3, 4
# which tokens to keep: the score controls at layer 0 (no attention has run) and after L // 2 = 3 layers
python evaluate.py -m "${sweeps[@]}" pruning=cls_preserving pruning.score=random pruning.keep=0.5,0.25
python evaluate.py -m "${sweeps[@]}" pruning=late_layer pruning.score=pool_attn,random pruning.keep=0.5,0.25
python -m vlm_eff.report "$sweep" --no-wandb
