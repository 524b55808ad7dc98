"""Token maps: `python -m vlm_eff.visualize image=PATH model=... pruning=... [pruning.*=...] [out=DIR]`
draws what the strategy did to each image on its patch grid (vlm_eff/jobs/visualize.py)."""

if __name__ == "__main__":
    from vlm_eff.cli import hydra_main

    hydra_main("visualize", "vlm_eff.jobs.visualize:visualize")
