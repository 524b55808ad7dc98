"""`python -m vlm_eff.score`'s job: an answers file matched to the benchmark's questions and scored with the code
evaluate.py scores with; metrics.json, the results row and W&B metrics."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from vlm_eff.atomic import write_atomic
from vlm_eff.benchmarks import benchmark
from vlm_eff.benchmarks.base import match, read_answer_records
from vlm_eff.errors import ConfigError
from vlm_eff.jobs.common import run_dir, save_row
from vlm_eff.jobs.requests import score_line
from vlm_eff.progress import Progress
from vlm_eff.results import base_row
from vlm_eff.wandb_logging import finish, make_logger


def score(cfg: DictConfig) -> dict:
    """Match `answers` to the questions of `data` (by question_id, in order where ids repeat) and score them."""
    if not cfg.answers:
        raise ConfigError("answers= is missing: give the answers JSONL to score (LLaVA's answer format)")
    records = read_answer_records(Path(cfg.answers))
    bench = benchmark(cfg.data)
    progress = Progress("score", len(bench.questions), "questions", cfg.progress_every_s, step="questions")
    pairs, missing = match(bench.questions, records, f"answers={cfg.answers}", progress)
    progress.close()
    if missing and cfg.strict:
        raise ConfigError(f"answers={cfg.answers} answers {len(pairs)} of the {len(bench.questions)} questions of "
                          f"data={bench.name} ({missing} missing); strict=false scores what is there")
    metrics = {"benchmark": bench.name, **bench.score(pairs), "n_answered": len(pairs), "n_missing": missing}
    out_dir = run_dir()
    submission = bench.submission(pairs, out_dir)
    if submission is not None:
        metrics["submission"] = str(submission)
    write_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    model = records[0].get("model_id", "") if records else ""
    row = {**base_row("score", Path(cfg.paths.root_dir)), "model": model, "benchmark": bench.name,
           "benchmark_score": metrics["score"], "vqa_acc": metrics.get("vqa_acc"), "n_images": len(pairs)}
    logger = make_logger(cfg, out_dir)
    save_row(row, cfg, out_dir, logger, "test")
    if logger is not None:
        logger.log_metrics({f"test/{bench.name}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    wandb_dir = finish(logger)
    print("\n".join(["", f"vlm-eff score: {cfg.answers} ({model or 'no model_id'})", score_line(metrics),
                     *([f"  warning   {missing} of {len(bench.questions)} questions have no answer: scored on the "
                        f"{len(pairs)} answered (strict=true makes this an error)"] if missing else []),
                     f"  metrics   {out_dir / 'metrics.json'}", f"  results   {out_dir / 'results.csv'}"]
                    + ([f"  W&B       {wandb_dir}"] if wandb_dir else [])), flush=True)
    return metrics
