#!/usr/bin/env bash
# The training-free frontier on one of the project's trained small models (docs/RESULTS.md section 7):
# ToMe vs PiToMe vs the best dropping strategy (EViT) at keep 0.7 / 0.5 / 0.33 / 0.25 (FLOPs about 1.4x /
# 2x / 3x / 4x fewer), full CIFAR-10 test set, one sweep dir and one report.
#   bash scripts/results/s07_frontier.sh tiny_clip_cifar10 [sweep dir] [evaluate.py overrides...]   (about 15 minutes)
#   bash scripts/results/s07_frontier.sh tiny_siglip_cifar10
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:?usage: scripts/results/s07_frontier.sh MODEL [sweep dir] [overrides...]}
sweep=${2:-multirun/frontier_$model}
base=(model=$model data.root=../shared/data/cifar10-jpeg.tar.gz logger=none "${@:3}")
sweeps=("${base[@]}" "hydra.sweep.dir=$sweep" 'hydra.sweep.subdir=${hydra.job.override_dirname}'  # a dir per variant
        'hydra.job.config.override_dirname.exclude_keys=[model,data.root,logger]')
keeps=0.7,0.5,0.33,0.25
python evaluate.py "${base[@]}" pruning=none "hydra.run.dir=$sweep/none"
python evaluate.py -m "${sweeps[@]}" pruning=tome,pitome pruning.keep=$keeps
python evaluate.py -m "${sweeps[@]}" pruning=evit 'pruning.layer=[2,3,4]' pruning.keep=$keeps  # 6 layers: steps after 2, 3, 4
python -m vlm_eff.report "$sweep" --no-wandb
