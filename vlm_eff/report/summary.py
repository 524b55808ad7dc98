"""The report of a sweep: its table, figures and one summary W&B run (the package docstring says what is in it)."""

from __future__ import annotations

import sys
from pathlib import Path

from vlm_eff.atomic import write_atomic
from vlm_eff.report.figures import by_strategy, figures
from vlm_eff.report.tables import adaptive, gather, markdown, stock
from vlm_eff.results import COLUMNS, csv_text
from vlm_eff.wandb_logging import offline_by_default, sweep_group


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


def report(sweep_dir: Path, use_wandb: bool = True, maps: list[Path] = ()) -> str:
    """Write `report.md` (with links to the token-map PNGs `maps`, if any), `report.csv` and the figures into
    `sweep_dir`, and log them to one summary W&B run unless `use_wandb` is false; returns the table and a
    `written:` line."""
    rows, problems = gather(sweep_dir)
    for problem in problems:
        print(f"warning: {problem}: left out of the report", file=sys.stderr)
    if not rows:
        raise SystemExit(f"error: no job results under {sweep_dir}; expected <sweep dir>/<job>/results.csv")
    table = markdown(rows)
    if maps:
        table += "\n## Token maps\n\n" + "\n".join(
            f"![{p.parent.name}/{p.stem}]({p.relative_to(sweep_dir)})" for p in maps) + "\n"
    write_atomic(sweep_dir / "report.csv", csv_text([{c: r.get(c, "") for c in COLUMNS} for r in rows], header=True))
    write_atomic(sweep_dir / "report.md", table)
    pngs = figures(rows, sweep_dir) + list(maps)
    settings = sweep_logger(sweep_dir) if use_wandb else None
    wandb_dir = log_summary_run(rows, pngs, sweep_dir, settings) if settings else None
    return table + f"\nwritten: {sweep_dir / 'report.md'}, {sweep_dir / 'report.csv'}, " + ", ".join(
        p.name for p in pngs) + (f"\nW&B summary run: {wandb_dir} (group {settings['group']})" if wandb_dir else "")
