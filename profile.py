"""Latency, throughput, peak memory and FLOPs of CLIP's image encoder under a pruning variant.

    python profile.py pruning=naive pruning.keep=0.7
    python profile.py -m pruning=naive,position_aware pruning.keep=1.0,0.5
"""

import os
import sys

if __name__ == "__main__":
    # `python profile.py` puts this folder first on sys.path, where this file would shadow the standard
    # library's `profile` that cProfile (imported by Lightning and torch) needs.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here] + [_here]
    from vlm_eff.cli import hydra_main

    hydra_main("profile", "vlm_eff.jobs.profile:profile")
else:
    # Imported as `profile` because this folder is on sys.path (`python -m pytest` run here, say):
    # put the standard library's module in our place, so that cProfile and pstats keep working.
    import importlib.util
    import sysconfig

    _spec = importlib.util.spec_from_file_location(__name__, os.path.join(sysconfig.get_paths()["stdlib"], "profile.py"))
    _stdlib_profile = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _stdlib_profile
    _spec.loader.exec_module(_stdlib_profile)
