"""profile.py end to end, as a user runs it: subprocesses, real files, real offline W&B runs."""

import math
from pathlib import Path

import pytest
from conftest import run_script
from wandb_files import read_run

from vlm_eff.results import COLUMNS, read_results

NOT_MEASURED_BY_PROFILE = {"top1", "top5", "trainable_params", "objective", "reduce_share_pct"}  # the last: trace=true only
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


BAD_INPUTS = [
    (["pruning=naive", "pruning.keep=0"], "pruning.keep=0 is outside (0, 1]"),
    (["pruning=naive", "pruning.keep=1.5"], "pruning.keep=1.5 is outside (0, 1]"),
    (["pruning=bogus"], "unknown pruning 'bogus'; allowed: cls_preserving, evit, late_layer, naive, none, pitome, position_aware, tome"),
    (["model=bogus"], "unknown model 'bogus'; allowed: clip_laion_b32, clip_tiny"),
    (["device=tpu"], "device='tpu' is unknown; allowed: auto, cpu, cuda"),
    (["dtype=fp8"], "dtype='fp8' is unknown; allowed: fp32, bf16, fp16"),
    (["data.batch_size=0"], "data.batch_size=0 must be an integer >= 1"),
    (["model.image_size=30"], "model.image_size=30 must be a positive multiple of the patch size 4"),
    (["pruning=late_layer", "pruning.layer=9"], "pruning.layer=9 is out of range for a 4-layer encoder; allowed -1..3"),
    (["compile=true", "warmup=0"], "compile=true needs warmup >= 1 (the first batch compiles), got warmup=0"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line(tmp_path, overrides, message):
    result = run_script("profile.py", "model=clip_tiny", "logger=none", f"paths.work_dir={tmp_path}", *overrides)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert not (tmp_path / "outputs" / "results.csv").exists()


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
