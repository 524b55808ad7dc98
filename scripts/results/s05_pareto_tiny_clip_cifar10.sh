#!/usr/bin/env bash
# Every training-free strategy at every keep on the project's trained small CLIP, full CIFAR-10 test
# set, into one sweep dir; then one report: table, accuracy-vs-FLOPs and accuracy-vs-throughput
# Pareto figures (docs/RESULTS.md section 5).
#   bash scripts/results/s05_pareto_tiny_clip_cifar10.sh [sweep dir]      (about 25 minutes on 2 CPU cores)
# Run it on an otherwise idle machine: the throughput column is timed.
set -euo pipefail
cd "$(dirname "$0")/../.."
sweep=${1:-multirun/pareto_tiny_clip_cifar10}
common=(model=tiny_clip_cifar10 data.root=../shared/data/cifar10-jpeg.tar.gz logger=none
        "hydra.sweep.dir=$sweep" 'hydra.sweep.subdir=${hydra.job.override_dirname}'  # one dir per variant
        'hydra.job.config.override_dirname.exclude_keys=[model,data.root,logger]' "${@:2}")
keeps=0.9,0.7,0.5,0.25
python evaluate.py -m "${common[@]}" pruning=none,naive,position_aware,cls_preserving,late_layer,tome pruning.keep=$keeps
python evaluate.py -m "${common[@]}" pruning=evit 'pruning.layer=[2,3,4]' pruning.keep=$keeps  # 6 layers: steps after 2, 3, 4
python evaluate.py -m "${common[@]}" pruning=tome pruning.schedule=decreasing pruning.keep=$keeps
# adaptive keep: per-image budgets, keep 1.0 (no cap), at layer 0 (l2) and after layer 3 (cls_attn)
python evaluate.py -m "${common[@]}" pruning=cls_preserving pruning.keep=1.0 pruning.mass=0.5,0.7,0.9
python evaluate.py -m "${common[@]}" pruning=late_layer pruning.layer=3 pruning.score=cls_attn pruning.keep=1.0 pruning.mass=0.5,0.7,0.9
python -m vlm_eff.report "$sweep" --no-wandb
