"""Score answers: `python -m vlm_eff.score data=<benchmark> data.root=DIR answers=FILE [strict=true]` scores an answers
JSONL in LLaVA's answer format with the benchmark's official metric (vlm_eff/jobs/score.py)."""

if __name__ == "__main__":
    from vlm_eff.cli import hydra_main

    hydra_main("score", "vlm_eff.jobs.score:score")
