"""The report's tables: the sweep's rows gathered, labelled and sorted, and the Markdown tables (encoder sweeps,
VLM requests, recovery stages, the papers' benchmark table)."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from vlm_eff.results import read_results

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
        return f"{100 * score:.1f}" + (f" ({100 * score / reference:.1f})" if reference else "")

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
