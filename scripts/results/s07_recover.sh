#!/usr/bin/env bash
# Label-free recovery (docs/RESULTS.md section 7): distil the unreduced model into the reduced one on
# 10,000 CIFAR-10 training images whose labels are never read, then test it zero-shot on the full test
# set; the run goes into the frontier's sweep dir, so its report gains the "<strategy> + distill" series.
#   bash scripts/results/s07_recover.sh MODEL STRATEGY KEEP [sweep dir] [train.py overrides...]
#   bash scripts/results/s07_recover.sh tiny_clip_cifar10 pitome 0.33
#   bash scripts/results/s07_recover.sh tiny_clip_cifar10 tome 0.33 multirun/frontier_tiny_clip_cifar10 trainer.max_epochs=10 optimizer.lr=3e-4
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:?usage: scripts/results/s07_recover.sh MODEL STRATEGY KEEP [sweep dir] [overrides...]}
strategy=${2:?strategy}
keep=${3:?keep}
sweep=${4:-multirun/frontier_$model}
tag=$(echo "${*:5}" | tr ' =' '_-')  # extra overrides name the run dir, so a rerun with other knobs is a new run
python train.py objective=distill model="$model" pruning="$strategy" pruning.keep="$keep" \
    data.root=../shared/data/cifar10-jpeg.tar.gz data.train_size=10000 data.val_size=1000 data.batch_size=128 \
    trainer.max_epochs=5 optimizer.lr=1e-4 optimizer.weight_decay=0 logger=none \
    "hydra.run.dir=$sweep/distill_${strategy}_keep$keep${tag:+_$tag}" \
    "export_dir=outputs/recovered/${model}_${strategy}_keep$keep${tag:+_$tag}" \
    "${@:5}"
python -m vlm_eff.report "$sweep" --no-wandb
