"""profile.py end to end, as a user runs it: subprocesses, real files, real offline W&B runs."""

import math
from pathlib import Path

import pytest
from conftest import run_script
from wandb_files import read_run

from vlm_eff.results import COLUMNS, read_results

NOT_MEASURED_BY_PROFILE = {"top1", "top5", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "trainable_params",
                           "objective", "train_steps", "reduce_share_pct",  # trace=true only
                           "site", "visual_tokens", "vision_ms", "prefill_ms", "ttft_ms", "decode_ms_per_token",
                           "kv_cache_mib", "gflops_vision", "gflops_prefill", "gflops_per_decode_token",
                           "vqa_acc", "benchmark", "benchmark_score"}  # generative VLMs only (tests/test_vlm.py)
GPU_ONLY = {"peak_reserved_mib", "gpu_util_pct", "gpu_mem_used_mib", "gpu_power_w", "gpu_sm_clock_mhz", "gpu_temp_c"}


def run_dirs(work_dir: Path) -> list[Path]:
    return sorted(p.parent for p in (work_dir / "outputs").glob("*/*/results.csv"))


def test_profile_writes_a_full_row_and_an_offline_wandb_run(tmp_path):
    result = run_script("profile.py", "model=clip_tiny", "pruning=naive", "pruning.keep=0.7", f"paths.work_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    (row,) = read_results(tmp_path / "outputs" / "results.csv")
    assert list(row) == list(COLUMNS)
    assert [c for c in COLUMNS if not row[c] and c not in NOT_MEASURED_BY_PROFILE | GPU_ONLY] == []
    assert [c for c in GPU_ONLY if row[c]] == []  # on CPU: empty, not zero
    assert (row["task"], row["model"], row["weights"], row["strategy"]) == ("profile", "clip_tiny", "random", "naive")
    assert int(row["tokens"]) == math.floor(0.7 * 64) + 1  # kept patches + the mean summary token
    assert row["compile"] == "False"
    assert float(row["throughput_img_s"]) == pytest.approx(8 / (float(row["latency_ms_mean"]) / 1000), rel=0.05)
    assert int(row["n_images"]) == 10 * 8  # runs x batch size; the 3 warm-up batches are not counted
    assert "RANDOM WEIGHTS" in result.stdout and "results.csv" in result.stdout

    (run_dir,) = run_dirs(tmp_path)
    assert read_results(run_dir / "results.csv") == [row]
    (wandb_dir,) = (run_dir / "wandb").glob("offline-run-*")
    run = read_run(wandb_dir)
    assert run["config"]["pruning"]["name"] == "naive"
    assert "naive" in run["tags"]
    assert run["summary"]["profile/latency_ms_mean"] == pytest.approx(float(row["latency_ms_mean"]), rel=1e-5)
    assert run["summary"]["profile/tokens"] == int(row["tokens"])


def test_compiled_profile_with_the_reduction_share_traced(tmp_path):
    """compile=true times the torch.compile'd encoder; trace=true adds the reduction steps' share."""
    result = run_script("profile.py", "model=clip_tiny", "pruning=tome", "compile=true", "trace=true", "logger=none",
                        f"paths.work_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    (row,) = read_results(tmp_path / "outputs" / "results.csv")
    assert row["compile"] == "True" and 0 < float(row["reduce_share_pct"]) < 100
    assert "(torch.compile)" in result.stdout and "of encoder time in the reduction steps" in result.stdout


def test_multirun_from_another_directory_flops_fall_with_keep(tmp_path):
    """`-m` sweeps work, the script runs by path from elsewhere, and fewer tokens cost fewer FLOPs."""
    result = run_script(
        "profile.py", "-m", "model=clip_tiny", "pruning=cls_preserving", "pruning.keep=1.0,0.5", "logger=none",
        f"paths.work_dir={tmp_path}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {float(r["keep"]): r for r in read_results(tmp_path / "outputs" / "results.csv")}
    assert set(rows) == {1.0, 0.5}
    assert (int(rows[1.0]["tokens"]), int(rows[0.5]["tokens"])) == (65, 33)
    assert float(rows[0.5]["gflops_per_img"]) < 0.6 * float(rows[1.0]["gflops_per_img"])
    assert float(rows[0.5]["gmacs_per_img"]) == pytest.approx(float(rows[0.5]["gflops_per_img"]) / 2)
    assert len(list((tmp_path / "multirun").glob("*/*/[01]/results.csv"))) == 2


def test_missing_pretrained_weights_offline_fail_fast_naming_the_fixes(tmp_path):
    result = run_script(
        "profile.py", "model.weights=pretrained", "logger=none", f"paths.work_dir={tmp_path}",
        env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "no pretrained weights for openai/clip-vit-base-patch16" in last
    assert "model.path=" in last and "model.weights=random" in last


def test_model_path_must_hold_a_saved_model(tmp_path):
    result = run_script("profile.py", f"model.path={tmp_path}", "logger=none", f"paths.work_dir={tmp_path}")
    assert result.returncode == 2
    assert f"model.path={tmp_path} holds no save_pretrained model" in result.stderr


def test_model_path_loads_a_save_pretrained_dir(tmp_path, tiny_clip):
    tiny_clip.save_pretrained(tmp_path / "saved")
    result = run_script(
        "profile.py", "model=clip_tiny", f"model.path={tmp_path / 'saved'}", "model.weights=pretrained", "logger=none",
        "runs=2", f"paths.work_dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (row,) = read_results(tmp_path / "outputs" / "results.csv")
    assert row["weights"] == "pretrained" and "RANDOM WEIGHTS" not in result.stdout
