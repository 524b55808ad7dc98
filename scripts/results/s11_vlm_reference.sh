#!/usr/bin/env bash
# The stock exact match of one of the project's trained small VLMs on the CIFAR-10 mosaic test set (all 3,000
# questions, and the seeded 300-question subset the test suite re-measures), written to
# checkpoints/MODEL/reference_vqa.json, which the model card quotes.
#   bash scripts/results/s11_vlm_reference.sh tiny_llava_cifar10 [CIFAR10_ARCHIVE]
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:?usage: scripts/results/s11_vlm_reference.sh MODEL [CIFAR10_ARCHIVE]}
archive=${2:-../shared/data/cifar10-jpeg.tar.gz}
out=outputs/vlm_reference_$model
for subset in null 300; do
  python evaluate.py protocol=vqa data=cifar10_vqa model=$model data.root=$archive data.subset=$subset \
    pruning=none logger=none "hydra.run.dir=$out/subset_$subset"
done
python - "$out" "checkpoints/$model/reference_vqa.json" <<'PY'
import json
import sys
from pathlib import Path

from vlm_eff.atomic import write_atomic

out = Path(sys.argv[1])
reference = {"command": "bash scripts/results/s11_vlm_reference.sh", "pruning": "none",
             "full": json.loads((out / "subset_null" / "metrics.json").read_text()),
             "subset_300": json.loads((out / "subset_300" / "metrics.json").read_text())}
write_atomic(Path(sys.argv[2]), json.dumps(reference, indent=2) + "\n")
print(json.dumps(reference, indent=2))
PY
