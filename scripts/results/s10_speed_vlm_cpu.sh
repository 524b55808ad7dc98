#!/usr/bin/env bash
# Generative VLMs on this machine (random weights: timing only), batch 1 and 4, every site: encoder strategies
# at keep 0.5, boundary (visionzip, divprune) and LLM-site (fastv) strategies at 25 % of the visual tokens,
# pyramiddrop at its default stages (keep 0.5 at L/4, L/2, 3L/4), and the 2025 baselines (random, vispruner, cdpruner
# with the language model's relevance, dart) at 25 % and 12.5 %, sparsevlm at 128 and 64 of 576 (batch 1). TTFT speed-up against the (vision + prefill)
# FLOP ratio, decode ms/token and KV cache, timed in alternating stock / reduced request pairs (docs/RESULTS.md
# section 10). LLaVA-OneVision-0.5B first (about 35 minutes on 2 CPU cores), then the tiny LLaVA (a minute).
#   bash scripts/results/s10_speed_vlm_cpu.sh [out dir] [model ...]     run it on an otherwise idle machine
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-outputs/speed_vlm_cpu}
models=("${@:2}")
[ ${#models[@]} -gt 0 ] || models=(llava_onevision_0_5b llava_tiny)
mkdir -p "$out"
for model in "${models[@]}"; do
    extra=()
    [ "$model" = llava_tiny ] && extra=(pruning.layer=1)  # its LLM has 2 layers: FastV at K=1
    for batch in 1 4; do
        pairs=3; [ "$batch" = 4 ] && [ "$model" != llava_tiny ] && pairs=2
        file="$out/${model}_batch$batch.md"
        python scripts/paired_speed.py --keep 0.5 --pairs $pairs --strategies cls_preserving,late_layer,tome,pitome \
            "model=$model" "data.batch_size=$batch" | tee "$file"
        python scripts/paired_speed.py --keep 0.25 --pairs $pairs --strategies visionzip,divprune \
            "model=$model" "data.batch_size=$batch" | tail -n +5 | tee -a "$file"
        python scripts/paired_speed.py --keep 0.25 --pairs $pairs --strategies fastv \
            "model=$model" "data.batch_size=$batch" "${extra[@]}" | tail -n +5 | tee -a "$file"
        python scripts/paired_speed.py --keep 0.5 --pairs $pairs --strategies pyramiddrop \
            "model=$model" "data.batch_size=$batch" | tail -n +5 | tee -a "$file"
    done
    for keep in 0.25 0.125; do
        python scripts/paired_speed.py --keep $keep --pairs 3 --strategies random,vispruner,cdpruner,dart \
            "model=$model" data.batch_size=1 ++pruning.relevance=llm "${extra[@]/#/++}" \
            | tail -n +5 | tee -a "$out/${model}_2025.md"
    done
    for tokens in 128 64; do  # SparseVLM: the paper's retained counts of 576 (22 % and 11 %), not keep
        python scripts/paired_speed.py --tokens $tokens --pairs 3 --strategies sparsevlm \
            "model=$model" data.batch_size=1 | tail -n +5 | tee -a "$out/${model}_2025.md"
    done
done
