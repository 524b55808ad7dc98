#!/usr/bin/env bash
# Does the input pipeline feed the encoder? evaluate.py's end-to-end images/s (loading, resizing and
# normalising included) against the encoder-only images/s of the same model and batch: the step time
# of the same evaluate run, and profile.py on synthetic batches. The project's small CLIP on the full
# CIFAR-10 test set (32 px), and ViT-B/16 (random weights: timing only) on 1,024 test images at 224 px,
# each evaluated twice: the first run resizes the images once into the cache, the second is measured.
# Run it on an idle machine:  bash scripts/results/s09_pipeline_cpu.sh [WORK_DIR] [ARCHIVE]
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-outputs/pipeline_cpu}
ARCHIVE=${2:-../shared/data/cifar10-jpeg.tar.gz}
common=(logger=none "paths.work_dir=$WORK")
run() { python "$@" "${common[@]}" > /dev/null; }

run evaluate.py model=tiny_clip_cifar10 "data.root=$ARCHIVE" data.batch_size=256 hydra.run.dir="$WORK/tiny_evaluate"
run profile.py model=tiny_clip_cifar10 data.batch_size=256 runs=20 hydra.run.dir="$WORK/tiny_profile"
b16=(model=clip_vit_b16 model.weights=random model.tokenizer=assets/clip-tokenizer "data.root=$ARCHIVE" data.subset=1024 data.batch_size=32 warmup=2)
run evaluate.py "${b16[@]}" hydra.run.dir="$WORK/b16_first"  # resizes the 1,024 images to 224 px once
run evaluate.py "${b16[@]}" hydra.run.dir="$WORK/b16_evaluate"
run profile.py model=clip_vit_b16 model.weights=random data.batch_size=32 runs=10 hydra.run.dir="$WORK/b16_profile"

python - "$WORK" <<'PY'
import sys
from pathlib import Path
from vlm_eff.results import read_results

work = Path(sys.argv[1])
row = lambda name: read_results(work / name / "results.csv")[0]
print("| model | batch | workers | evaluate.py end to end img/s | its encoder steps img/s | profile.py img/s | "
      "end to end / steps | end to end / profile.py |")
print("|---|---|---|---|---|---|---|---|")
for label, name in (("tiny_clip_cifar10 (32 px)", "tiny"), ("ViT-B/16 random (224 px)", "b16")):
    evaluate, profile = row(f"{name}_evaluate"), row(f"{name}_profile")
    e2e, steps, encoder = (float(evaluate["e2e_throughput_img_s"]), float(evaluate["throughput_img_s"]),
                           float(profile["throughput_img_s"]))
    print(f"| {label} | {evaluate['batch_size']} | default | {e2e:.1f} | {steps:.1f} | {encoder:.1f} | "
          f"{e2e / steps:.3f} | {e2e / encoder:.3f} |")
PY
