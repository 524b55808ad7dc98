#!/usr/bin/env bash
# The token maps README shows (assets/token_maps/): real CIFAR-10 test images through the project's trained
# models. bash scripts/results/readme_token_maps.sh [CIFAR10_ARCHIVE]   (under a minute)
set -euo pipefail
cd "$(dirname "$0")/../.."
archive=${1:-../shared/data/cifar10-jpeg.tar.gz}
out=assets/token_maps
mkdir -p "$out"
python - "$archive" "$out" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vlm_eff.data.cifar10 import load_split
from vlm_eff.data.cifar10_vqa import default_cache_dir

images, labels, classes = load_split(Path(sys.argv[1]), "test", default_cache_dir())
cat = images[int(np.flatnonzero(labels == classes.index("cat"))[0])]
Image.fromarray(cat).save(Path(sys.argv[2]) / "cat.png")
PY
common=(image=$out/cat.png model=tiny_clip_cifar10 logger=none panels=3)
python -m vlm_eff.visualize "${common[@]}" pruning=tome pruning.keep=0.5 out=$out/tome
python -m vlm_eff.visualize "${common[@]}" pruning=evit 'pruning.layer=[2,3,4]' out=$out/evit
