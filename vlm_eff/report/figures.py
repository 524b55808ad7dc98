"""The report's figures: each strategy a line through its budgets, the unreduced model a dashed line, Pareto
fronts, the recovery curve and the benchmark retention; every PNG written whole or not at all."""

from __future__ import annotations

import statistics
from pathlib import Path

from vlm_eff.atomic import replace_atomically
from vlm_eff.report.tables import _sort_key, adaptive, recovered, recovery_stages, reduction, steps, stock, variant


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
    replace_atomically(path, lambda f: fig.savefig(f, format="png"))  # never a half-written PNG
    pyplot().close(fig)
    return path


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
