#!/usr/bin/env bash
# SigLIP B/16 (random weights: timing only) on this machine: every strategy at keep 0.5 against its FLOP
# ratio, and the patched model at keep 1.0 against stock (docs/RESULTS.md section 6.3): profile.py
# sweeps in interleaved rounds (rows, memory, reports), then the paired measurement on the CPU, which
# alternates stock and reduced forwards in one process so that the machine's drift cancels.
#   bash scripts/results/s06_speed_siglip_b16.sh [sweep dir prefix] [profile.py overrides...]   (about 30 minutes on 2 CPU cores)
# Run it on an otherwise idle machine. GPU: add device=cuda data.batch_size=64 dtype=bf16 (the sweeps only).
set -euo pipefail
cd "$(dirname "$0")/../.."
prefix=${1:-multirun/siglip_b16}
common=(model=siglip_b16 model.weights=random logger=none "${@:2}")
python profile.py -m "${common[@]}" seed=0,1 pruning=none,naive,position_aware,cls_preserving,late_layer,evit,tome \
    pruning.keep=0.5 "hydra.sweep.dir=${prefix}_bound"
python profile.py -m "${common[@]}" seed=0,1,2 pruning=none,cls_preserving,late_layer,evit,tome pruning.keep=1.0 \
    "hydra.sweep.dir=${prefix}_keep1"
python -m vlm_eff.report "${prefix}_bound" --no-wandb
python -m vlm_eff.report "${prefix}_keep1" --no-wandb
if [[ " ${*:2} " != *" device=cuda "* ]]; then
    python scripts/paired_speed.py --keep 0.5 model=siglip_b16
    python scripts/paired_speed.py --keep 1.0 --strategies cls_preserving,late_layer,evit,tome,pitome model=siglip_b16
fi
