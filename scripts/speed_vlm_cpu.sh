#!/usr/bin/env bash
# LLaVA-OneVision-0.5B (random weights: timing only) on this machine, batch 1 and 4: every encoder strategy at
# keep 0.5, TTFT speed-up against the (vision + prefill) FLOP ratio, decode ms/token and KV cache, timed in
# alternating stock / reduced request pairs (docs/RESULTS.md, "Generative VLMs on the CPU").
#   bash scripts/speed_vlm_cpu.sh [out dir]   (about 25 minutes on 2 CPU cores; run it on an otherwise idle machine)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/speed_vlm_cpu}
mkdir -p "$out"
for batch in 1 4; do
    python scripts/paired_vlm_speed.py --keep 0.5 --pairs 3 --gen 4 model=llava_onevision_0_5b "data.batch_size=$batch" \
        | tee "$out/onevision_0_5b_batch$batch.md"
done
