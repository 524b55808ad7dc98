#!/usr/bin/env bash
# Everything only a GPU can show, in one run (under 10 minutes on one H100), ending in one Markdown table
# for docs/RESULTS.md:
#   1. the GPU test (CUDA timing and peaks, NVML sampling);
#   2. ViT-B/16 and SigLIP-B/16 (random weights: timing only) at batch 64 in bf16: none, the best
#      dropping strategy (EViT), ToMe and PiToMe at keep 0.5: speed-up, FLOP ratio, and their quotient;
#      NVML columns (utilisation, memory, power);
#   3. the input pipeline on the GPU: evaluate.py end-to-end images/s over its encoder steps' images/s
#      (needs the CIFAR-10 archive; skipped without it);
#   4. LLaVA-1.5-7B (random weights, bf16, batch 1, 16 new tokens): stock against visionzip and fastv at 64 and
#      192 visual tokens, TTFT in alternating request pairs, decode ms/token and KV cache (outputs/gpu_check/llava_7b.md).
# Usage: bash scripts/gpu_check.sh [CIFAR10_ARCHIVE]   (writes outputs/gpu_check/gpu_check.md)
# The archive defaults to ../shared/data/ or shared/data/ (on a lent GPU machine, which gets a copy of the
# work tree only, copy it into the tree first, e.g. to outputs/, and carry that path).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=outputs/gpu_check
ARCHIVE=${1:-}
for candidate in ../shared/data/cifar10-jpeg.tar.gz shared/data/cifar10-jpeg.tar.gz outputs/cifar10-jpeg.tar.gz; do
  [[ -z "$ARCHIVE" && -f "$candidate" ]] && ARCHIVE=$candidate
done
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" \
  || { echo "error: no CUDA device here; gpu_check.sh needs one" >&2; exit 2; }
rm -rf "$OUT" && mkdir -p "$OUT"
export WANDB_MODE=offline

python -m pytest -q tests/test_report.py -k gpu | tee "$OUT/gpu_test.txt"
python profile.py -m model=clip_vit_b16,siglip_b16 model.weights=random device=cuda dtype=bf16 data.batch_size=64 \
  warmup=10 runs=50 pruning=none,evit,tome,pitome pruning.keep=0.5 logger=none "hydra.sweep.dir=$OUT/speed" > /dev/null
if [[ -f "$ARCHIVE" ]]; then
  pipeline=(model=clip_vit_b16 model.weights=random model.tokenizer=assets/clip-tokenizer device=cuda dtype=bf16
            data.batch_size=64 data.subset=4096 warmup=5 "data.root=$ARCHIVE" logger=none)
  python evaluate.py "${pipeline[@]}" "hydra.run.dir=$OUT/pipeline_first" > /dev/null  # resizes once into the cache
  python evaluate.py "${pipeline[@]}" "hydra.run.dir=$OUT/pipeline" > /dev/null
fi

for tokens in 64 192; do
  python scripts/paired_speed.py --strategies visionzip,fastv --tokens $tokens --pairs 5 --gen 16 \
    model=llava_1_5_7b device=cuda dtype=bf16 data.batch_size=1 | tee -a "$OUT/llava_7b.md"
done

python - "$OUT" <<'PY'
import sys
from pathlib import Path
from vlm_eff.results import read_results

out = Path(sys.argv[1])
rows = [r for path in sorted((out / "speed").glob("*/results.csv")) for r in read_results(path)]
lines = ["| model | strategy | keep | tokens | GFLOPs/img | ms/batch | img/s | speed-up | FLOP ratio | "
         "speed-up / FLOP ratio | peak MiB | GPU util % | GPU mem MiB | power W |", "|" + "---|" * 14]
for model in dict.fromkeys(r["model"] for r in rows):
    group = [r for r in rows if r["model"] == model]
    base = next(r for r in group if r["strategy"] == "none")
    for r in group:
        speedup = float(base["latency_ms_mean"]) / float(r["latency_ms_mean"])
        flops = float(base["gflops_per_img"]) / float(r["gflops_per_img"])
        lines.append(f"| {model} | {r['strategy']} | {r['keep']} | {r['tokens']} | {float(r['gflops_per_img']):.2f} | "
                     f"{float(r['latency_ms_mean']):.2f} | {float(r['throughput_img_s']):.0f} | {speedup:.2f}x | "
                     f"{flops:.2f}x | {speedup / flops:.2f} | {float(r['peak_mem_mib']):.0f} | {r['gpu_util_pct']} | "
                     f"{r['gpu_mem_used_mib']} | {r['gpu_power_w']} |")
first = rows[0]
lines.append(f"\n{first['device']}, {first['dtype']}, batch {first['batch_size']}, {first['versions']}, "
             f"git {first['git_sha']}")
if (out / "pipeline" / "results.csv").is_file():
    (r,) = read_results(out / "pipeline" / "results.csv")
    e2e, steps = float(r["e2e_throughput_img_s"]), float(r["throughput_img_s"])
    lines.append(f"\nInput pipeline (evaluate.py, {r['model']}, {r['n_images']} CIFAR-10 test images at "
                 f"{r['image_size']} px, batch {r['batch_size']}, {r['dtype']}, default workers): {e2e:.0f} images/s "
                 f"end to end over {steps:.0f} images/s of encoder steps = {e2e / steps:.3f}")
if (out / "llava_7b.md").is_file():
    lines.append("\nLLaVA-1.5-7B requests (scripts/paired_speed.py):\n\n" + (out / "llava_7b.md").read_text())
table = "\n".join(lines) + "\n"
(out / "gpu_check.md").write_text(table)
print(table)
PY
