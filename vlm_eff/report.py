"""The study report of a sweep: `python -m vlm_eff.report multirun/DATE/TIME`.

Gathers every job's `results.csv` under the sweep dir into `report.csv` and a Markdown table
(`report.md`, also printed) with speed-ups against the stock model measured in the same sweep,
draws the figures (`latency_vs_keep.png`, `memory_vs_keep.png`; `accuracy_vs_flops.png` and
`accuracy_vs_throughput.png` with their Pareto fronts when the jobs measured zero-shot accuracy,
`recall_vs_flops.png` when they measured retrieval recall; for generative VLM requests
`ttft_vs_visual_tokens.png`, `accuracy_vs_ttft.png` / `accuracy_vs_flops.png` when they measured
vqa exact match, and for benchmark runs the papers' table: per benchmark each configuration's score and its %
of the unreduced score, the mean retention, and `score_vs_flops.png`), and logs all of it to one summary W&B
run in the sweep's group. Figures draw each strategy as a line through its budgets and the unreduced model as
a dashed line, the model named in the title.
Failed, unfinished or missing jobs are named with their reason and left out. `--token-maps N` adds each
job's token maps of N images (vlm_eff/jobs/visualize.py: `--images`, else the first test image of N
classes of the CIFAR-10 data the sweep ran on) under `token_maps/<job>/`, linked from report.md and logged.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from vlm_eff.results import COLUMNS, csv_text, read_results, write_atomic
from vlm_eff.wandb_logging import offline_by_default, sweep_group

STRATEGY_ORDER = ("none", "naive", "position_aware", "cls_preserving", "late_layer", "evit", "tome", "pitome",
                  "visionzip", "divprune", "random", "vispruner", "cdpruner", "fastv", "pyramiddrop", "dart", "sparsevlm")


def gather(sweep_dir: Path) -> tuple[list[dict], list[str]]:
    """Rows of every job dir in the sweep, and one line per job that has none, saying why."""
    job_dirs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                      key=lambda p: (len(p.name), p.name))
    rows, problems = [], []
    for job_dir in job_dirs:
        if (job_dir / "results.csv").is_file():
            job_rows = read_results(job_dir / "results.csv")
            if (job_dir / "metrics.json").is_file():  # exact match per question kind, beside the overall column
                per_kind = {k: v for k, v in json.loads((job_dir / "metrics.json").read_text()).items()
                            if k.startswith("vqa_acc_")}
                job_rows = [{**row, **per_kind} for row in job_rows]
            rows.extend(job_rows)
        elif (job_dir / "error.txt").is_file():
            problems.append(f"{job_dir}: failed: {(job_dir / 'error.txt').read_text().strip()}")
        else:
            problems.append(f"{job_dir}: no results.csv (still running, or killed)")
    numbers = sorted(int(p.name) for p in job_dirs if p.name.isdigit())
    problems += [f"{sweep_dir / str(n)}: missing (never started)" for n in sorted(set(range(numbers[-1])) - set(numbers))
                 ] if numbers else []
    return rows, problems


def _sort_key(row: dict):
    strategy = row["strategy"]
    rank = STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else len(STRATEGY_ORDER)
    return rank, strategy, variant(row), -float(row["keep"] or 1), -float(row["gflops_per_img"])


def baseline(rows: list[dict]) -> dict | None:
    """The stock model: the rows of strategy none (else cls_preserving at keep 1.0, which is exactly
    stock); several rows (a sweep over keep runs none once per keep) give their median latency
    (empty when none of them was timed: a job too short to get past its warm-up batches)."""
    for strategy in ("none", "cls_preserving", "late_layer"):
        matches = [r for r in rows if r["strategy"] == strategy and float(r["keep"] or 1) == 1.0
                   and not adaptive(r)]  # adaptive keep at keep 1.0 still drops tokens
        if matches:
            timed = [float(r["latency_ms_mean"]) for r in matches if r["latency_ms_mean"]]
            latency = statistics.median(timed) if timed else ""
            return {**matches[0], "latency_ms_mean": latency, "n_rows": len(timed)}
    return None


def markdown(rows: list[dict]) -> str:
    """The sweep's table; a sweep over several models gets a model column, each row compared with its
    own model's stock row."""
    if any(recovered(r) for r in rows):
        evaluated = [r for r in rows if r["task"] != "train"]
        unrecovered = [r for r in evaluated if not recovered(r)]  # the recovery table compares the rest with stock
        return (recovery_markdown(rows) + "\n" + (benchmark_markdown(unrecovered) + "\n") * any(
            r.get("benchmark_score") for r in unrecovered) + request_markdown(evaluated))
    if any(r.get("benchmark") for r in rows):
        return benchmark_markdown(rows) + "\n" + request_markdown(rows)
    if any(r.get("ttft_ms") for r in rows):
        return request_markdown(rows)
    models = sorted({r["model"] for r in rows})
    bases = {model: baseline([r for r in rows if r["model"] == model]) for model in models}
    header = ["model"] * (len(models) > 1) + [
        "strategy", "keep", "layer", "score", "tokens", "GFLOPs/img", "latency ms (mean ± std)", "throughput img/s",
        "speed-up", "FLOP ratio", "peak MiB"]
    if any(r["top1"] for r in rows):
        header.insert(-1, "top-1 %")
    recall = any(r.get("i2t_r1") for r in rows)
    if recall:
        header[-1:-1] = ["i2t R@1/5/10 %", "t2i R@1/5/10 %"]
    shown = {"compile": any(r.get("compile") == "True" for r in rows),  # rows of older versions lack these
             "reduce_share_pct": any(r.get("reduce_share_pct") for r in rows)}
    header += ["compiled"] * shown["compile"] + ["reduction % of encoder time"] * shown["reduce_share_pct"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(rows, key=lambda r: (models.index(r["model"]), _sort_key(r))):
        timed, base = bool(r["latency_ms_mean"]), bases[r["model"]]
        speedup = flop_ratio = ""
        if base is not None:
            if timed and base["latency_ms_mean"]:
                speedup = f"{float(base['latency_ms_mean']) / float(r['latency_ms_mean']):.2f}x"
            flop_ratio = f"{float(base['gflops_per_img']) / float(r['gflops_per_img']):.2f}x"
        cells = [r["model"]] * (len(models) > 1) + [
                 r["strategy"], r["keep"], r["layer"], r["score"], r["tokens"], f"{float(r['gflops_per_img']):.4g}",
                 f"{float(r['latency_ms_mean']):.1f} ± {float(r['latency_ms_std']):.1f}" if timed else "not timed",
                 f"{float(r['throughput_img_s']):.2f}" if timed else "", speedup, flop_ratio]
        if "top-1 %" in header:
            cells.append(f"{100 * float(r['top1']):.2f}" if r["top1"] else "")
        if recall:
            cells += [" / ".join(f"{100 * float(r[f'{side}_r{k}']):.1f}" for k in (1, 5, 10)) if r.get("i2t_r1") else ""
                      for side in ("i2t", "t2i")]
        cells.append(f"{float(r['peak_mem_mib']):.0f}" if r["peak_mem_mib"] else "")
        if shown["compile"]:
            cells.append("yes" if r.get("compile") == "True" else "")
        if shown["reduce_share_pct"]:
            cells.append(f"{float(r['reduce_share_pct']):.2f}" if r.get("reduce_share_pct") else "")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    for model, base in bases.items():
        first = next(r for r in rows if r["model"] == model)
        lines.append(f"{model} ({first['weights']} weights), {first['device']}, {first['dtype']}, "
                     f"{first['threads']} threads, batch {first['batch_size']}, {first['image_size']} px; "
                     f"speed-up and FLOP ratio against {base['strategy'] if base else 'n/a'} keep 1.0 in this sweep "
                     f"(median latency of its {base['n_rows'] if base else 0} runs); "
                     f"peak memory: {first['mem_kind']}; git {first['git_sha']}")
    return "\n".join(lines) + "\n"


def request_markdown(rows: list[dict]) -> str:
    """The table of a sweep over generative VLM requests: where the time of a request goes, per strategy,
    and the TTFT speed-up against the FLOP ratio (vision + prefill) of the same model's stock row (on the same
    benchmark: prompts differ between benchmarks)."""
    models = sorted({r["model"] for r in rows})
    same = lambda r: (r["model"], r.get("benchmark", ""))  # noqa: E731
    bases = {key: baseline([r for r in rows if same(r) == key]) for key in {same(r) for r in rows}}
    header = ["model"] * (len(models) > 1) + [
        "strategy", "site", "keep", "layer", "score", "visual tokens", "GFLOPs vision + prefill", "TTFT ms",
        "vision ms", "prefill ms", "decode ms/token", "KV cache MiB", "TTFT speed-up", "FLOP ratio"]
    vqa = any(r.get("vqa_acc") for r in rows)
    benchmarks = any(r.get("benchmark") for r in rows)
    kinds = sorted({k for r in rows for k in r if k.startswith("vqa_acc_")})
    header += ["exact match %"] * vqa + [f"{k.removeprefix('vqa_acc_')} %" for k in kinds]
    header += ["benchmark", "benchmark score"] * benchmarks
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    number = lambda value, digits: f"{float(value):.{digits}f}" if value not in ("", None) else ""  # noqa: E731
    for r in sorted(rows, key=lambda r: (models.index(r["model"]), _sort_key(r))):
        base, speedup, flop_ratio = bases[same(r)], "", ""
        if base is not None:
            if r["ttft_ms"] and base["ttft_ms"]:
                speedup = f"{float(base['ttft_ms']) / float(r['ttft_ms']):.2f}x"
            flop_ratio = f"{float(base['gflops_per_img']) / float(r['gflops_per_img']):.2f}x"
        cells = [r["model"]] * (len(models) > 1) + [
            r["strategy"], r["site"], r["keep"], r["layer"], r["score"], number(r["visual_tokens"], 1),
            f"{float(r['gflops_vision']):.4g} + {float(r['gflops_prefill']):.4g}", number(r["ttft_ms"], 1),
            number(r["vision_ms"], 1), number(r["prefill_ms"], 1), number(r["decode_ms_per_token"], 2),
            number(r["kv_cache_mib"], 2), speedup, flop_ratio] + [number(100 * float(r["vqa_acc"] or 0), 2)
                                                                  if r.get("vqa_acc") else ""] * vqa + [
            number(100 * float(r[k]), 1) if r.get(k) is not None else "" for k in kinds] + [
            r.get("benchmark", ""), number(r.get("benchmark_score"), 2)] * benchmarks
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    for model in models:
        first = next(r for r in rows if r["model"] == model)
        lines.append(f"{model} ({first['weights']} weights), {first['device']}, {first['dtype']}, {first['threads']} "
                     f"threads, batch {first['batch_size']}; times per batch of requests (means over the timed "
                     f"batches), GFLOPs per request; speed-up and FLOP ratio against the stock model (strategy none) "
                     f"in this sweep" + (" on the same benchmark" if benchmarks else "") + f"; git {first['git_sha']}")
    return "\n".join(lines) + "\n"


def recovered(row: dict) -> bool:
    """A job on a reduced VLM that label-free recovery trained (train.py objective=distill), not the training itself."""
    return row.get("objective") == "distill" and row["task"] != "train" and bool(row.get("ttft_ms"))


def reduction(row: dict) -> tuple[str, str, str]:
    """What the recovery table keys a row by: (strategy, budget, layer). One base model and one training recipe per
    sweep: rows of two recoveries of the same reduction are one recovery's stages."""
    return row["strategy"], budget(row), row["layer"]


def steps(row: dict) -> int:
    return int(row.get("train_steps") or 0)


def recovery_stages(rows: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """reduction -> the exact-match evaluations of its recovered exports with that reduction on, by training steps."""
    stages: dict[tuple[str, str, str], list[dict]] = {}
    for row in rows:
        if recovered(row) and row["strategy"] != "none" and row.get("vqa_acc"):
            stages.setdefault(reduction(row), []).append(row)
    return {key: sorted(group, key=steps) for key, group in stages.items()}


def training_minutes(rows: list[dict], key: tuple[str, str, str]) -> tuple[int, float]:
    """The training steps of a reduction's recovery and their minutes on this machine (each run's time per step
    times the steps it added; a run resumed for more steps is one more row)."""
    runs = sorted((r for r in rows if r["task"] == "train" and r.get("objective") == "distill"
                   and reduction(r) == key and steps(r)), key=steps)
    minutes, done = 0.0, 0
    for run in runs:
        minutes += float(run["latency_ms_mean"] or 0) * (steps(run) - done) / 60000
        done = steps(run)
    return done, minutes


def recovery_markdown(rows: list[dict]) -> str:
    """Label-free recovery of a reduced VLM: per reduction, the exact match before and after (in brackets: % of the
    stock model's in the sweep) overall and per question kind, the training steps and minutes, what the recovered
    weights score unreduced (pruning=none on the export), and the exact match after each number of steps."""
    evaluated = [r for r in rows if r["task"] != "train" and r.get("vqa_acc")]
    stock = next((r for r in evaluated if r["strategy"] == "none" and not recovered(r)), None)
    reference = float(stock["vqa_acc"]) if stock else None
    kinds = sorted({k for r in evaluated for k in r if k.startswith("vqa_acc_")})
    before = {reduction(r): r for r in evaluated if r["strategy"] != "none" and not recovered(r)}
    stages = recovery_stages(rows)
    unreduced = {r["model"]: r for r in evaluated if recovered(r) and r["strategy"] == "none"}

    def percent(row: dict | None) -> str:
        if row is None:
            return ""
        score = float(row["vqa_acc"])
        return f"{100 * score:.1f}" + (f" ({100 * score / reference:.0f})" if reference else "")

    def per_kind(row: dict | None) -> str:
        return "" if row is None else " / ".join(f"{100 * float(row[k]):.0f}" if row.get(k) not in ("", None) else "-"
                                                 for k in kinds)

    header = ["strategy", "budget", "site", "before", "after", f"{' / '.join(k.removeprefix('vqa_acc_') for k in kinds)}"
              " before → after", "steps", "training min", "after, unreduced"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if stock:
        lines.append("| " + " | ".join(["none (stock)", "", "", percent(stock), "", per_kind(stock), "", "", ""]) + " |")
    for key in sorted(set(before) | set(stages), key=lambda k: _sort_key(before.get(k) or stages[k][0])):
        last = stages.get(key, [None])[-1]
        trained, minutes = training_minutes(rows, key)
        site = (before.get(key) or last)["site"]
        lines.append("| " + " | ".join([*key[:2], site, percent(before.get(key)), percent(last),
                                         f"{per_kind(before.get(key))} → {per_kind(last)}", str(trained or ""),
                                         f"{minutes:.3g}" if minutes else "",
                                         percent(unreduced.get(last["model"]) if last else None)]) + " |")
    lines += ["", "Exact match % on the sweep's questions; in brackets % of the stock model's; per kind before → after; "
              "training minutes: time per step x steps on this machine; after, unreduced: the recovered weights "
              "evaluated with pruning=none."]
    curves = {key: group for key, group in stages.items() if len(group) > 1}
    if curves:
        counts = sorted({steps(r) for group in curves.values() for r in group})
        lines += ["", "| strategy | budget | 0 | " + " | ".join(map(str, counts)) + " |", "|" + "---|" * (len(counts) + 3)]
        for key, group in curves.items():
            at = {steps(r): r for r in group}
            lines.append("| " + " | ".join([*key[:2], percent(before.get(key)), *(percent(at.get(n)) for n in counts)])
                         + " |")
        lines += ["", "Exact match % (in brackets % of stock) after each number of recovery steps (0: before)."]
    return "\n".join(lines) + "\n"


def recovery_figure(rows: list[dict], path: Path) -> Path:
    """Exact match against recovery steps, a line per reduction from before (0 steps), the stock model dashed."""
    evaluated = [r for r in rows if r["task"] != "train" and r.get("vqa_acc")]
    fig, ax = pyplot().subplots(figsize=(7.5, 4.6), dpi=150)
    stock = [r for r in evaluated if r["strategy"] == "none" and not recovered(r)]
    if stock:
        ax.axhline(100 * float(stock[0]["vqa_acc"]), color="black", linestyle="--", linewidth=1, label="stock")
        ax.axhline(97 * float(stock[0]["vqa_acc"]), color="gray", linestyle=":", linewidth=1, label="97 % of stock")
    for (name, budget_, layer), group in recovery_stages(rows).items():
        start = [r for r in evaluated if not recovered(r) and reduction(r) == (name, budget_, layer)]
        points = [(0, r) for r in start[:1]] + [(steps(r), r) for r in group]
        ax.plot([n for n, _ in points], [100 * float(r["vqa_acc"]) for _, r in points], marker="o",
                label=f"{name} {budget_}")
    model = next((r["model"] for r in evaluated if not recovered(r)), "")
    ax.set(xlabel="recovery steps (train.py objective=distill)", ylabel="exact match (%)",
           title=f"{model}: label-free recovery")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return save_figure(fig, path)


def budget(row: dict) -> str:
    """A reduction's budget as the sweep set it: the visual tokens asked for (`tokens=` in its score label), else keep."""
    tokens = re.search(r"tokens=(\d+)", row["score"])
    return tokens.group(1) if tokens else ("" if row["strategy"] == "none" else row["keep"])


def configurations(rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    """Benchmark rows per configuration (model, variant, budget, layer), each {benchmark: row}, in report order."""
    configs: dict[tuple, dict[str, dict]] = {}
    for row in sorted(rows, key=_sort_key):
        key = (row["model"], variant(row), "" if row["strategy"] == "none" else budget(row), row["layer"])
        configs.setdefault(key, {}).setdefault(row["benchmark"], row)
    return configs


def unreduced_scores(rows: list[dict]) -> dict[tuple[str, str], float]:
    """(model, benchmark) -> the score of the stock model (strategy none) in the sweep."""
    return {(r["model"], r["benchmark"]): float(r["benchmark_score"]) for r in rows
            if r["strategy"] == "none" and r.get("benchmark_score")}


def benchmark_markdown(rows: list[dict]) -> str:
    """The papers' table: per benchmark, each configuration's score and its % of the same model's unreduced score
    on that benchmark (found in the sweep), the mean retention over the benchmarks, and beside them the
    configuration's visual tokens, TTFT and GFLOPs (vision + prefill) per request, means over its benchmarks."""
    rows = [r for r in rows if r.get("benchmark")]
    benchmarks = list(dict.fromkeys(r["benchmark"] for r in rows))
    models = sorted({r["model"] for r in rows})
    base = unreduced_scores(rows)
    header = ["model"] * (len(models) > 1) + ["strategy", "budget", "site", *benchmarks, "mean retention %",
                                              "visual tokens", "TTFT ms", "GFLOPs vision + prefill"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    mean = lambda values: statistics.fmean(values) if values else None  # noqa: E731
    for (model, name, budget_, _), by_bench in configurations(rows).items():
        cells, retained = [], []
        for bench in benchmarks:
            row = by_bench.get(bench)
            if row is None or not row.get("benchmark_score"):
                cells.append("" if row is None else "submission")
                continue
            score, reference = float(row["benchmark_score"]), base.get((model, bench))
            if reference:
                retained.append(100 * score / reference)
            cells.append(f"{score:.2f}" + (f" ({100 * score / reference:.1f}%)" if reference else ""))
        timed = list(by_bench.values())
        numbers = [mean([float(r[c]) for r in timed if r.get(c)]) for c in ("visual_tokens", "ttft_ms", "gflops_per_img")]
        lines.append("| " + " | ".join([model] * (len(models) > 1) + [
            name, budget_, timed[0]["site"], *cells, f"{mean(retained):.1f}" if retained else "",
            *("" if n is None else f"{n:.{d}f}" for n, d in zip(numbers, (1, 1, 3)))]) + " |")
    lines += ["", "Each score as its benchmark's official metric reports it; in brackets its % of the same model's "
              "unreduced score in this sweep; mean retention over the benchmarks scored; visual tokens, TTFT (ms per "
              "batch) and GFLOPs per request: means over the configuration's benchmarks."]
    return "\n".join(lines) + "\n"


def benchmark_figure(rows: list[dict], path: Path) -> Path:
    """Per benchmark (a panel) and model: each strategy's score as a line through its budgets against the request's
    GFLOPs (vision + prefill), the unreduced score a dashed line."""
    rows = [r for r in rows if r.get("benchmark") and r.get("benchmark_score")]
    panels = list(dict.fromkeys((r["model"], r["benchmark"]) for r in rows))
    columns = min(3, len(panels))
    rows_of_panels = -(-len(panels) // columns)
    fig, axes = pyplot().subplots(rows_of_panels, columns, figsize=(5.2 * columns + 1.6, 4.2 * rows_of_panels),
                                  dpi=150, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (model, bench) in zip(axes.flat, panels):
        mine = [r for r in rows if (r["model"], r["benchmark"]) == (model, bench)]
        lines_through(ax, mine, "gflops_per_img", lambda r: float(r["benchmark_score"]))
        ax.set(xlabel="GFLOPs per request (vision + prefill)", ylabel=f"{bench} score", title=f"{model}: {bench}")
        ax.grid(alpha=0.3)
    axes[0][columns - 1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return save_figure(fig, path)


def lines_through(ax, rows: list[dict], column: str, value) -> None:
    """Each strategy (`by_strategy` series) as a line through its points sorted by `column`, the stock model's
    value as a dashed horizontal line."""
    for name, group in by_strategy([r for r in rows if r.get(column)]).items():
        if stock(name):
            ax.axhline(statistics.median(value(r) for r in group), color="black", linestyle="--", linewidth=1,
                       label=f"{name} (unreduced)")
            continue
        group = sorted(group, key=lambda r: float(r[column]))
        ax.plot([float(r[column]) for r in group], [value(r) for r in group], marker="o", label=name)


def request_figure(rows: list[dict], path: Path) -> Path:
    """TTFT and prefill GFLOPs against the visual tokens the LLM receives, one series per strategy."""
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4.4), dpi=150)
    for ax, (column, ylabel) in zip(axes, (("ttft_ms", "time to first token (ms per batch)"),
                                           ("gflops_prefill", "prefill GFLOPs per request"))):
        for name, group in by_strategy([r for r in rows if r[column] and r["visual_tokens"]]).items():
            group = sorted(group, key=lambda r: float(r["visual_tokens"]))
            ax.plot([float(r["visual_tokens"]) for r in group], [float(r[column]) for r in group],
                    marker="*" if stock(name) else "o", label=name)
        ax.set(xlabel="visual tokens the LLM receives", ylabel=ylabel, title=f"{ylabel.split(' (')[0]} vs visual tokens")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return save_figure(fig, path)


def adaptive(row: dict) -> bool:
    """An adaptive-keep row: per-image budgets, so its keep (1.0, a cap) is no point on a keep axis."""
    return "mass=" in row["score"]


def variant(row: dict) -> str:
    """A figure's series: the strategy, told apart from its adaptive-keep variants, its merging variants
    (what the score label says after `_r<count>`: a schedule, a margin, `noprop`) and its recovered
    (fine-tuned after reduction: `objective` column) variants."""
    score, name = row["score"], row["strategy"]
    merging = re.fullmatch(r"[a-z]+_r[\d-]+_(.+)", score)
    if adaptive(row):
        name += f" adaptive ({score.split()[0]})"
    elif merging:
        name += " " + merging.group(1).replace("_", " ")
    # a train.py row: the model was fine-tuned with the reduction on
    return f"{name} + {row['objective']}" if row.get("objective") else name


def stock(series: str) -> bool:
    """Is this `by_strategy` series the stock model (of its model)?"""
    return series.rpartition(": ")[2] == "none"


def by_strategy(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows per `variant` (prefixed with the model, `model: variant`, when the rows span several models)
    in report order, each list sorted by keep (then by FLOPs)."""
    several = len({r["model"] for r in rows}) > 1
    lines: dict[str, list[dict]] = {}
    for row in sorted(rows, key=_sort_key):
        lines.setdefault(f"{row['model']}: {variant(row)}" if several else variant(row), []).append(row)
    return {name: sorted(group, key=lambda r: (float(r["keep"] or 1), float(r["gflops_per_img"])))
            for name, group in lines.items()}


def trend_figure(rows: list[dict], column: str, ylabel: str, title: str, path: Path, error: str | None = None) -> Path:
    """One line per strategy of `column` against keep (the seed's Figures 1-2); `none` as a reference line."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.2), dpi=150)
    on_keep_axis = [r for r in rows if r[column] and r["keep"] and not adaptive(r)]
    for strategy, group in by_strategy(on_keep_axis).items():
        values = [float(r[column]) for r in group]
        if stock(strategy):
            ax.axhline(statistics.median(values), color="black", linestyle="--", linewidth=1, label=f"{strategy} (stock)")
            continue
        keeps = [float(r["keep"]) for r in group]
        errors = [float(r[error]) for r in group] if error else None
        ax.errorbar(keeps, values, yerr=errors, marker="o", capsize=3, label=strategy)
    ax.set(xlabel="keep (fraction of patch tokens kept)", ylabel=ylabel, title=title)
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing to plot when no job was timed
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def pareto_front(rows: list[dict], column: str, lower_is_better: bool, metric: str = "top1") -> list[dict]:
    """The rows that no row at least as cheap (`column`: FLOPs, lower is better) or as fast
    (throughput, higher is better) beats on `metric` (top-1, a recall), cheapest first."""
    front, best = [], -1.0
    cost = (lambda r: float(r[column])) if lower_is_better else (lambda r: -float(r[column]))
    for r in sorted(rows, key=lambda r: (cost(r), -float(r[metric]))):
        if float(r[metric]) > best:
            front.append(r)
            best = float(r[metric])
    return front


ACCURACY = (("top1", "top-1 accuracy (%)"),)
VQA = (("vqa_acc", "exact match (%)"),)
RECALL = (("i2t_r1", "image-to-text R@1 (%)"), ("t2i_r1", "text-to-image R@1 (%)"))


def pareto_figure(rows: list[dict], column: str, xlabel: str, path: Path, lower_is_better: bool,
                  metrics=ACCURACY) -> Path:
    """Each metric (a panel: top-1, or the two R@1) against `column` (FLOPs or throughput): each strategy a
    line through its budgets, the stock model a dashed line, and the Pareto front (the rows no cheaper, or
    faster, row beats); the title names the model(s)."""
    fig, axes = pyplot().subplots(1, len(metrics), figsize=(4.2 + 4.2 * len(metrics), 4.8), dpi=150, squeeze=False)
    models = ", ".join(sorted({r["model"] for r in rows}))
    for ax, (metric, ylabel) in zip(axes[0], metrics):
        measured = [r for r in rows if r.get(metric) and r[column]]
        lines_through(ax, measured, column, lambda r: 100 * float(r[metric]))  # noqa: B023
        front = pareto_front(measured, column, lower_is_better, metric)
        ax.plot([float(r[column]) for r in front], [100 * float(r[metric]) for r in front],
                color="gray", linestyle=":", label="Pareto front")
        ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{models}: {ylabel.split(' (')[0]} vs {xlabel.split(' (')[0]}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: the points stay visible
    fig.tight_layout()
    return save_figure(fig, path)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported late: only the report draws)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cycler import cycler

    tab20 = plt.cm.tab20.colors  # tab10's colours, then their light shades: a sweep's 14 strategies stay apart
    plt.rcParams["axes.prop_cycle"] = cycler(color=[*tab20[::2], *tab20[1::2]])
    return plt


def save_figure(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    pyplot().close(fig)
    tmp.replace(path)  # atomic: never a half-written PNG
    return path


def request_figures(rows: list[dict], out_dir: Path) -> list[Path]:
    """The figures of generative VLM requests."""
    paths = [request_figure(rows, out_dir / "ttft_vs_visual_tokens.png")]
    if any(r.get("benchmark_score") for r in rows):
        paths.append(benchmark_figure(rows, out_dir / "score_vs_flops.png"))
    if any(r.get("vqa_acc") for r in rows):
        paths.append(pareto_figure(rows, "ttft_ms", "time to first token (ms per batch)",
                                   out_dir / "accuracy_vs_ttft.png", lower_is_better=True, metrics=VQA))
        paths.append(pareto_figure(rows, "gflops_per_img", "GFLOPs per request (vision + prefill)",
                                   out_dir / "accuracy_vs_flops.png", lower_is_better=True, metrics=VQA))
    return paths


def figures(rows: list[dict], out_dir: Path) -> list[Path]:
    if any(recovered(r) for r in rows):  # the curve, then the frontier with each recovery's last stage
        last = {id(group[-1]) for group in recovery_stages(rows).values()}
        stock = next((r["model"] for r in rows if r["task"] != "train" and not recovered(r)), "")
        drawn = [{**r, "model": stock} if recovered(r) else r for r in rows  # drawn as the model they recover
                 if r["task"] != "train" and (not recovered(r) or id(r) in last or not r.get("vqa_acc"))]
        return [recovery_figure(rows, out_dir / "recovery_vs_steps.png"), *request_figures(drawn, out_dir)]
    if any(r.get("ttft_ms") for r in rows):
        return request_figures(rows, out_dir)
    paths = [
        trend_figure(rows, "latency_ms_mean", "latency (ms per batch)", "Latency vs keep ratio",
                     out_dir / "latency_vs_keep.png", error="latency_ms_std"),
        trend_figure(rows, "peak_mem_mib", f"peak memory (MiB, {rows[0]['mem_kind']})", "Peak memory vs keep ratio",
                     out_dir / "memory_vs_keep.png"),
    ]
    if any(r["top1"] for r in rows):
        paths.append(pareto_figure(rows, "gflops_per_img", "FLOPs (GFLOPs per image)", out_dir / "accuracy_vs_flops.png",
                                   lower_is_better=True))
        paths.append(pareto_figure(rows, "throughput_img_s", "throughput (images/s)",
                                   out_dir / "accuracy_vs_throughput.png", lower_is_better=False))
    if any(r.get("i2t_r1") for r in rows):
        paths.append(pareto_figure(rows, "gflops_per_img", "FLOPs (GFLOPs per image)", out_dir / "recall_vs_flops.png",
                                   lower_is_better=True, metrics=RECALL))
    return paths


def sweep_logger(sweep_dir: Path) -> dict | None:
    """The jobs' W&B settings (project, entity, group) from a job's saved config; None for logger=none."""
    from omegaconf import OmegaConf

    for config in sorted(sweep_dir.glob("*/.hydra/config.yaml")):
        cfg = OmegaConf.load(config)
        if not cfg.get("logger") or "_target_" not in cfg.logger:
            return None
        return {"project": cfg.logger.get("project"), "entity": cfg.logger.get("entity"),
                "group": sweep_group(cfg.task, sweep_dir)}
    return None


def log_summary_run(rows: list[dict], pngs: list[Path], sweep_dir: Path, settings: dict) -> str:
    """One W&B run (job_type=report) in the sweep's group: the table, per-strategy line plots, the figures."""
    import wandb

    offline_by_default()
    run = wandb.init(project=settings["project"], entity=settings["entity"], group=settings["group"],
                     job_type="report", name=f"report-{sweep_dir.name}", dir=str(sweep_dir), reinit="finish_previous")
    columns = [c for c in COLUMNS if any(r.get(c) for r in rows)]
    table = wandb.Table(columns=columns, data=[[r.get(c, "") for c in columns] for r in rows])
    logged = {"report/results": table}
    on_keep_axis = [r for r in rows if r["keep"] and not adaptive(r)]
    lines = {k: v for k, v in by_strategy(on_keep_axis).items() if not stock(k)}
    for column, title in [("latency_ms_mean", "latency (ms/batch) vs keep"), ("peak_mem_mib", "peak memory (MiB) vs keep"),
                          ("top1", "top-1 vs keep"), ("i2t_r1", "image-to-text R@1 vs keep"),
                          ("t2i_r1", "text-to-image R@1 vs keep")]:
        if lines and all(r.get(column) for group in lines.values() for r in group):
            logged[f"report/{column}_vs_keep"] = wandb.plot.line_series(
                xs=[[float(r["keep"]) for r in group] for group in lines.values()],
                ys=[[float(r[column]) for r in group] for group in lines.values()],
                keys=list(lines), title=title, xname="keep")
    logged.update({f"report/{png.stem}" if png.parent == sweep_dir else f"report/token_maps/{png.parent.name}_{png.stem}":
                   wandb.Image(str(png)) for png in pngs})
    run.log(logged)
    run_dir = Path(run.dir).parent
    run.finish()
    return str(run_dir)


def map_images(job_cfg, n: int, images: Path | None, out_dir: Path) -> list[Path]:
    """The images token maps are drawn on: `n` files of `images` (a file or folder), else the first `n` images
    of the VQA set the job answered, else the first test image of each of `n` classes of the CIFAR-10 data
    the job ran on (written as PNGs into `out_dir`)."""
    from vlm_eff.benchmarks import BENCHMARKS, benchmark
    from vlm_eff.errors import ConfigError
    from vlm_eff.jobs.visualize import image_paths

    if images is not None:
        return image_paths(str(images))[:n]
    data = job_cfg.get("data", {})
    if data.get("name") in BENCHMARKS and data.get("root"):
        seen: dict[Path, None] = {}
        for question in benchmark(data).questions:  # the first n images the questions name
            if isinstance(question.image, Path):
                seen[question.image] = None
            if len(seen) == n:
                break
        return list(seen)
    if data.get("name") != "cifar10" or not data.get("root"):
        raise ConfigError(f"--token-maps needs --images PATH: the sweep ran on data={data.get('name')}, "
                          "not on CIFAR-10 images it could take")
    import numpy as np
    from PIL import Image

    from vlm_eff.data.cifar10 import load_split

    pictures, labels, classes = load_split(Path(data.root).expanduser(), "test", Path(data.cache_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for label in range(min(n, len(classes))):
        path = out_dir / f"{classes[label]}.png"
        if not path.is_file():
            Image.fromarray(pictures[int(np.flatnonzero(labels == label)[0])]).save(path)
        paths.append(path)
    return paths


def token_maps(sweep_dir: Path, n: int, images: Path | None) -> list[Path]:
    """Each finished job's token maps of `n` images, drawn with its model and pruning config."""
    from omegaconf import OmegaConf

    from vlm_eff.cli import CONF_DIR
    from vlm_eff.jobs.visualize import visualize

    written = []
    for job_dir in sorted(p for p in sweep_dir.iterdir() if (p / "results.csv").is_file() and (p / ".hydra").is_dir()):
        job = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
        paths = map_images(job, n, images, sweep_dir / "token_maps" / "images")
        cfg = OmegaConf.merge(OmegaConf.load(CONF_DIR / "visualize.yaml"),
                              {"model": job.model, "pruning": job.pruning, "paths": job.paths, "seed": job.seed,
                               "image": [str(p) for p in paths], "out": str(sweep_dir / "token_maps" / job_dir.name),
                               "logger": None})
        cfg.pop("defaults", None)
        written += visualize(cfg)["files"]
    return written


def report(sweep_dir: Path, use_wandb: bool = True, n_maps: int = 0, map_source: Path | None = None) -> str:
    rows, problems = gather(sweep_dir)
    for problem in problems:
        print(f"warning: {problem}: left out of the report", file=sys.stderr)
    if not rows:
        raise SystemExit(f"error: no job results under {sweep_dir}; expected <sweep dir>/<job>/results.csv")
    table = markdown(rows)
    maps = token_maps(sweep_dir, n_maps, map_source) if n_maps else []
    if maps:
        table += "\n## Token maps\n\n" + "\n".join(
            f"![{p.parent.name}/{p.stem}]({p.relative_to(sweep_dir)})" for p in maps) + "\n"
    write_atomic(sweep_dir / "report.csv", csv_text([{c: r.get(c, "") for c in COLUMNS} for r in rows], header=True))
    write_atomic(sweep_dir / "report.md", table)
    pngs = figures(rows, sweep_dir) + maps
    settings = sweep_logger(sweep_dir) if use_wandb else None
    wandb_dir = log_summary_run(rows, pngs, sweep_dir, settings) if settings else None
    return table + f"\nwritten: {sweep_dir / 'report.md'}, {sweep_dir / 'report.csv'}, " + ", ".join(
        p.name for p in pngs) + (f"\nW&B summary run: {wandb_dir} (group {settings['group']})" if wandb_dir else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vlm_eff.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun dir, e.g. multirun/2026-11-24/10-00-00")
    parser.add_argument("--no-wandb", action="store_true", help="no summary W&B run")
    parser.add_argument("--token-maps", type=int, default=0, metavar="N",
                        help="add each job's token maps of N images (python -m vlm_eff.visualize)")
    parser.add_argument("--images", type=Path, default=None,
                        help="the images for --token-maps (a file or folder; default: the sweep's CIFAR-10 test images)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"error: sweep dir {args.sweep_dir} does not exist")
    if args.token_maps < 0:
        raise SystemExit(f"error: --token-maps={args.token_maps} must be an integer >= 0")
    from vlm_eff.errors import ConfigError

    try:
        print(report(args.sweep_dir, use_wandb=not args.no_wandb, n_maps=args.token_maps, map_source=args.images))
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
