"""Latency, throughput, peak memory and FLOPs of CLIP's image encoder under a pruning variant.

    python profile.py pruning=naive pruning.keep=0.7
    python profile.py -m pruning=naive,position_aware pruning.keep=1.0,0.5
"""

import os
import sys

# `python profile.py` puts this folder first on sys.path, where this file shadows the standard
# library's `profile`, which cProfile (imported by Lightning) needs: import the real one first.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
import profile as _stdlib_profile  # noqa: E402,F401

sys.path.append(_HERE)
os.environ.setdefault("VLM_EFF_ROOT", _HERE)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from vlm_eff import cli  # noqa: E402
from vlm_eff.jobs.profile import profile  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="profile")
def main(cfg: DictConfig) -> None:
    cli.run(profile, cfg)


if __name__ == "__main__":
    cli.check_group_choices(sys.argv[1:])
    main()
