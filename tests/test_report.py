"""Sweeps as users run them: offline W&B runs of a real 2x2 sweep, the study report with its figures
and summary W&B run, failed jobs, the joblib and SLURM launchers, and the GPU sampler."""

import threading
import time

import pytest
import torch
from conftest import run_script
from PIL import Image
from wandb_files import read_run

from vlm_eff.profiling import Sampler, nvml_sampler
from vlm_eff.report.__main__ import main as report_main
from vlm_eff.report.figures import pareto_front
from vlm_eff.report.tables import markdown, variant
from vlm_eff.results import COLUMNS, read_results

SWEEP = ("profile.py", "-m", "model=clip_tiny", "pruning=naive,cls_preserving", "pruning.keep=1.0,0.5", "runs=4")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real 2x2 profile sweep with offline W&B runs."""
    work = tmp_path_factory.mktemp("sweep")
    result = run_script(*SWEEP, f"paths.work_dir={work}")
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = (work / "multirun").glob("*/*")
    return sweep_dir


def test_sweep_jobs_are_offline_wandb_runs_in_one_group(sweep):
    runs = [read_run(d) for d in sorted(sweep.glob("[0-9]/wandb/offline-run-*"))]
    assert len(runs) == 4
    assert {run["group"] for run in runs} == {f"profile-{sweep.name}"}
    assert sorted((run["config"]["pruning"]["name"], run["config"]["pruning"]["keep"]) for run in runs) == [
        ("cls_preserving", 0.5), ("cls_preserving", 1.0), ("naive", 0.5), ("naive", 1.0)]
    for run in runs:
        strategy, keep = run["config"]["pruning"]["name"], run["config"]["pruning"]["keep"]
        assert set(run["tags"]) == {strategy, f"keep={keep}"}
        for key in ("latency_ms_mean", "latency_ms_p90", "throughput_img_s", "peak_mem_mib", "gflops_per_img", "tokens"):
            assert run["summary"][f"profile/{key}"] > 0, key


def test_report_builds_the_table_figures_and_a_summary_wandb_run(sweep, capsys):
    report_main([str(sweep)])
    printed = capsys.readouterr().out
    table = (sweep / "report.md").read_text()
    assert table in printed and len([line for line in table.splitlines() if line.startswith("| naive")]) == 2
    assert len(read_results(sweep / "report.csv")) == 4
    for name in ("latency_vs_keep.png", "memory_vs_keep.png"):
        with Image.open(sweep / name) as image:
            assert image.format == "PNG" and image.size == (960, 630)
    assert not (sweep / "accuracy_vs_throughput.png").exists()  # profile jobs measure no accuracy
    (summary_dir,) = (sweep / "wandb").glob("offline-run-*")
    summary = read_run(summary_dir)
    assert summary["group"] == f"profile-{sweep.name}"
    assert summary["summary"]["report/results/nrows"] == 4
    assert summary["summary"]["report/latency_vs_keep/_type"] == "image-file"
    assert summary["summary"]["report/latency_ms_mean_vs_keep_table/_type"] == "table-file"


def test_a_failed_job_is_recorded_and_the_report_covers_the_rest(tmp_path, capsys):
    result = run_script("profile.py", "-m", "model=clip_tiny", "pruning=naive", "pruning.keep=1.0,1.5,0.5", "runs=2",
                        "logger=none", f"paths.work_dir={tmp_path}")
    assert result.returncode == 2  # the sweep finishes, and says that a job failed
    (sweep_dir,) = (tmp_path / "multirun").glob("*/*")
    assert "error: job 1 failed: pruning.keep=1.5 is outside (0, 1]" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: 1 sweep job(s) failed, the others finished")
    assert len(read_results(tmp_path / "outputs" / "results.csv")) == 2
    (sweep_dir / "2" / "results.csv").unlink()  # as if job 2 had been killed

    report_main([str(sweep_dir), "--no-wandb"])
    captured = capsys.readouterr()
    assert f"warning: {sweep_dir / '1'}: failed: pruning.keep=1.5 is outside (0, 1]" in captured.err
    assert f"warning: {sweep_dir / '2'}: no results.csv (still running, or killed)" in captured.err
    assert [r["keep"] for r in read_results(sweep_dir / "report.csv")] == ["1"]


def test_joblib_launcher_runs_jobs_in_parallel_processes_and_rows_stay_intact(tmp_path):
    result = run_script("profile.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=clip_tiny",
                        "pruning=naive", "pruning.keep=1.0,0.5", "runs=2", "logger=none", f"paths.work_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    rows = read_results(tmp_path / "outputs" / "results.csv")
    assert sorted(r["keep"] for r in rows) == ["0.5", "1"]
    assert all(list(r) == list(COLUMNS) and r["latency_ms_mean"] and r["versions"] for r in rows)
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr


def test_slurm_launcher_config_composes():
    result = run_script("profile.py", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra",
                        "-p", "hydra.launcher")
    assert result.returncode == 0, result.stderr
    assert "hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in result.stdout
    assert "partition: gpu" in result.stdout and "array_parallelism: 16" in result.stdout


def test_sampler_samples_in_the_background_until_stopped():
    calls = []
    lock = threading.Lock()

    def read():
        with lock:
            calls.append(time.perf_counter())
            return {"gpu_util_pct": float(len(calls)), "gpu_temp_c": 40.0 + len(calls)}

    sampler = Sampler(read, interval_s=0.01)
    sampler.start()
    sampler.start()  # already running: no second thread
    assert [t.name for t in threading.enumerate()].count("vlm-eff-gpu-sampler") == 1
    time.sleep(0.2)
    summary = sampler.stop()
    assert "vlm-eff-gpu-sampler" not in [t.name for t in threading.enumerate()]
    n = len(sampler.samples)
    assert n >= 5
    assert summary["gpu_util_pct"] == pytest.approx((n + 1) / 2)  # mean of 1..n
    assert summary["gpu_temp_c"] == 40.0 + n  # temperature: the max
    time.sleep(0.05)
    assert len(sampler.samples) == n  # stopped means stopped


def test_no_nvml_sampling_without_a_gpu():
    assert nvml_sampler(torch.device("cpu")) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_profile_reads_nvml_and_cuda_peaks(tmp_path):
    result = run_script("profile.py", "model=clip_tiny", "device=cuda", "data.batch_size=64", "runs=20", "logger=none",
                        "gpu_sample_interval_s=0.01", f"paths.work_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    (row,) = read_results(tmp_path / "outputs" / "results.csv")
    assert row["device"].startswith("cuda:") and row["mem_kind"] == "cuda_allocated"
    assert float(row["peak_reserved_mib"]) >= float(row["peak_mem_mib"]) > 0
    assert float(row["gpu_sm_clock_mhz"]) > 0 and float(row["gpu_power_w"]) > 0 and row["gpu_util_pct"] != ""


def test_report_of_an_evaluate_sweep_adds_accuracy_and_the_pareto_figure(tmp_path, shared_archive, cache_dir, capsys):
    """Random weights: the accuracies mean nothing, the report's handling of them is what is tested."""
    result = run_script("evaluate.py", "-m", "model=clip_tiny", "model.weights=random", f"data.root={shared_archive}",
                        "data.subset=100", "data.batch_size=10", "pruning=none,cls_preserving", "pruning.keep=0.5",
                        "logger=none", f"paths.work_dir={tmp_path}", env={"VLM_EFF_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = (tmp_path / "multirun").glob("*/*")
    report_main([str(sweep_dir)])
    assert "W&B summary run" not in capsys.readouterr().out  # logger=none sweeps get no summary run
    header = (sweep_dir / "report.md").read_text().splitlines()[0]
    assert "top-1 %" in header
    for name in ("accuracy_vs_flops.png", "accuracy_vs_throughput.png"):
        with Image.open(sweep_dir / name) as image:
            assert image.format == "PNG"

    # --token-maps: each job's maps of the first test image of 2 classes, linked from report.md
    report_main([str(sweep_dir), "--token-maps", "2"])
    maps = sorted(p.relative_to(sweep_dir).as_posix() for p in (sweep_dir / "token_maps").glob("[0-9]/*.png"))
    assert maps == ["token_maps/0/airplane.png", "token_maps/0/automobile.png",
                    "token_maps/1/airplane.png", "token_maps/1/automobile.png"]
    table = (sweep_dir / "report.md").read_text()
    assert all(f"]({m})" in table for m in maps)
    with Image.open(sweep_dir / "token_maps" / "1" / "airplane.png") as image:  # cls_preserving at keep 0.5
        assert image.size[0] > 2 * 256


def test_token_maps_of_a_synthetic_sweep_need_images(sweep, tmp_path, capsys):
    with pytest.raises(SystemExit, match="--token-maps needs --images PATH: the sweep ran on data=synthetic"):
        report_main([str(sweep), "--no-wandb", "--token-maps", "1"])
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    report_main([str(sweep), "--no-wandb", "--token-maps", "1", "--images", str(tmp_path / "red.png")])
    assert sorted(p.parent.name for p in (sweep / "token_maps").glob("*/red.png")) == ["0", "1", "2", "3"]


def test_report_table_takes_rows_of_older_versions_beside_new_ones(sweep):
    """A sweep dir filled by several commands may mix rows without the newer columns (compile,
    reduce_share_pct) and rows with them; the table shows those columns, blank for the old rows."""
    rows = [dict(r) for r in read_results(next(sweep.glob("[0-9]/results.csv"))) * 2]
    for column in ("compile", "reduce_share_pct"):
        del rows[0][column]
    rows[1].update(compile="True", reduce_share_pct="1.5")
    table = markdown(rows).splitlines()
    assert table[0].endswith("| compiled | reduction % of encoder time |")
    assert table[2].endswith("|  |  |") and table[3].endswith("| yes | 1.50 |")


def test_pareto_front_and_series_names():
    """The front keeps the rows nothing cheaper beats (ties in cost: the more accurate one); the
    figures tell adaptive keep and ToMe schedules apart from their strategy."""
    def row(strategy, gflops, top1, score="l2"):
        return {"strategy": strategy, "gflops_per_img": str(gflops), "top1": str(top1), "score": score,
                "throughput_img_s": str(100 / gflops), "keep": "0.5"}

    rows = [row("none", 4.0, 0.70), row("tome", 2.0, 0.69, "tome_r11"), row("late_layer", 3.0, 0.68),
            row("naive", 2.0, 0.20), row("cls_preserving", 1.0, 0.40, "l2 mass=0.5"),
            row("tome", 1.0, 0.30, "tome_r8_decreasing")]
    front = pareto_front(rows, "gflops_per_img", lower_is_better=True)
    assert [(r["strategy"], r["gflops_per_img"]) for r in front] == [("cls_preserving", "1.0"), ("tome", "2.0"),
                                                                        ("none", "4.0")]
    assert pareto_front(rows, "throughput_img_s", lower_is_better=False) == front  # throughput = 100 / FLOPs here
    assert [variant(r) for r in rows[3:]] == ["naive", "cls_preserving adaptive (l2)", "tome decreasing"]
    assert variant({**row("pitome", 1.0, 0.6, "pitome_r11"), "objective": "distill"}) == "pitome + distill"
    assert variant({**row("tome", 1.0, 0.6, "tome_r11"), "objective": "labels"}) == "tome + labels"
    assert [variant(row("pitome", 1.0, 0.6, score)) for score in ("pitome_r11", "pitome_r11_noprop_margin0.5")] == [
        "pitome", "pitome noprop margin0.5"]
    assert variant({**row("tome", 1.0, 0.6, "tome_r8_decreasing"), "objective": "distill"}) == "tome decreasing + distill"


def test_a_sweep_over_two_models_compares_each_row_with_its_own_stock_model(sweep):
    """`model=a,b` in one sweep: a model column, and speed-up and FLOP ratio against each model's own stock row."""
    rows = [dict(r) for path in sorted(sweep.glob("[0-9]/results.csv")) for r in read_results(path)]
    model = rows[0]["model"]  # this sweep's stock rows: cls_preserving at keep 1.0 (exactly stock)
    other = [{**r, "model": "other", "gflops_per_img": str(2 * float(r["gflops_per_img"]))} for r in rows]
    table = markdown(rows + other).splitlines()
    assert table[0].startswith("| model | strategy |")
    stock_lines = [line for line in table if "| cls_preserving | 1 |" in line]
    assert [line.split(" | ")[0] for line in stock_lines] == [f"| {model}", "| other"]
    assert all("| 1.00x |" in line for line in stock_lines)  # each against itself, not other's half FLOPs
    assert sum(line.startswith("| other |") for line in table) == len(other)
    assert sum("speed-up and FLOP ratio against cls_preserving" in line for line in table) == 2  # a footer per model
