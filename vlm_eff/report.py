"""One table for a sweep: `python -m vlm_eff.report multirun/DATE/TIME`.

Gathers every job's `results.csv` under the sweep dir into `report.csv` and a Markdown table
(`report.md`, also printed), with speed-ups against the stock model measured in the same sweep.
Jobs without a results.csv (failed or still running) are named and left out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from vlm_eff.results import COLUMNS, csv_text, read_results, write_atomic

STRATEGY_ORDER = ("none", "naive", "position_aware", "cls_preserving", "late_layer")


def gather(sweep_dir: Path) -> tuple[list[dict], list[Path]]:
    """Rows of every job dir in the sweep, and the job dirs that have none."""
    job_dirs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                      key=lambda p: (len(p.name), p.name))
    rows, missing = [], []
    for job_dir in job_dirs:
        if (job_dir / "results.csv").is_file():
            rows.extend(read_results(job_dir / "results.csv"))
        else:
            missing.append(job_dir)
    return rows, missing


def _sort_key(row: dict):
    strategy = row["strategy"]
    rank = STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else len(STRATEGY_ORDER)
    return rank, strategy, -float(row["keep"] or 1)


def baseline(rows: list[dict]) -> dict | None:
    """The stock model: the rows of strategy none (else cls_preserving at keep 1.0, which is exactly
    stock); several rows (a sweep over keep runs none once per keep) give their median latency."""
    for strategy in ("none", "cls_preserving", "late_layer"):
        matches = [r for r in rows if r["strategy"] == strategy and float(r["keep"] or 1) == 1.0]
        if matches:
            latency = statistics.median(float(r["latency_ms_mean"]) for r in matches)
            return {**matches[0], "latency_ms_mean": latency, "n_rows": len(matches)}
    return None


def markdown(rows: list[dict]) -> str:
    base = baseline(rows)
    header = ["strategy", "keep", "layer", "tokens", "GFLOPs/img", "latency ms (mean ± std)", "throughput img/s",
              "speed-up", "FLOP ratio", "peak MiB"]
    if any(r["top1"] for r in rows):
        header.insert(-1, "top-1 %")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(rows, key=_sort_key):
        speedup = flop_ratio = ""
        if base is not None:
            speedup = f"{float(base['latency_ms_mean']) / float(r['latency_ms_mean']):.2f}x"
            flop_ratio = f"{float(base['gflops_per_img']) / float(r['gflops_per_img']):.2f}x"
        cells = [r["strategy"], r["keep"], r["layer"], r["tokens"], f"{float(r['gflops_per_img']):.4g}",
                 f"{float(r['latency_ms_mean']):.1f} ± {float(r['latency_ms_std']):.1f}",
                 f"{float(r['throughput_img_s']):.2f}", speedup, flop_ratio]
        if "top-1 %" in header:
            cells.append(f"{100 * float(r['top1']):.2f}" if r["top1"] else "")
        cells.append(f"{float(r['peak_mem_mib']):.0f}" if r["peak_mem_mib"] else "")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    first = rows[0]
    lines.append("")
    lines.append(f"{first['model']} ({first['weights']} weights), {first['device']}, {first['dtype']}, "
                 f"{first['threads']} threads, batch {first['batch_size']}, {first['image_size']} px; "
                 f"speed-up and FLOP ratio against {base['strategy'] if base else 'n/a'} keep 1.0 in this sweep "
                 f"(median latency of its {base['n_rows'] if base else 0} runs); "
                 f"peak memory: {first['mem_kind']}; git {first['git_sha']}")
    return "\n".join(lines) + "\n"


def report(sweep_dir: Path) -> str:
    rows, missing = gather(sweep_dir)
    for job_dir in missing:
        print(f"warning: {job_dir} has no results.csv (failed or unfinished job): left out", file=sys.stderr)
    if not rows:
        raise SystemExit(f"error: no job results under {sweep_dir}; expected <sweep dir>/<job>/results.csv")
    table = markdown(rows)
    write_atomic(sweep_dir / "report.csv", csv_text([{c: r.get(c, "") for c in COLUMNS} for r in rows], header=True))
    write_atomic(sweep_dir / "report.md", table)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vlm_eff.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun dir, e.g. multirun/2026-11-24/10-00-00")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"error: sweep dir {args.sweep_dir} does not exist")
    print(report(args.sweep_dir), end="")
    print(f"\nwritten: {args.sweep_dir / 'report.md'}, {args.sweep_dir / 'report.csv'}")


if __name__ == "__main__":
    main()
