"""The measurement scripts of docs/RESULTS.md run and print what their sections quote (tiny models, one pair)."""

import re

from conftest import run_script


def test_paired_speed_prints_one_row_per_strategy_with_its_flop_ratio():
    out = run_script("scripts/paired_speed.py", "--pairs", "1", "--strategies", "cls_preserving,tome",
                     "model=siglip_tiny")
    assert out.returncode == 0, out.stderr
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.stdout.splitlines()
            if re.match(r"\| (cls_preserving|tome) ", line)}
    assert set(rows) == {"cls_preserving", "tome"}
    for cells in rows.values():
        flop_ratio = float(cells[8].strip().rstrip("x"))
        assert 1.5 < flop_ratio < 2.6  # keep 0.5 of the tokens: about half the FLOPs


def test_paired_speed_of_vlm_requests_reports_ttft_against_its_flop_bound():
    out = run_script("scripts/paired_speed.py", "--pairs", "1", "--gen", "2", "--strategies", "visionzip,divprune",
                     "--tokens", "16", "model=llava_tiny", "data.batch_size=2")
    assert out.returncode == 0, out.stderr
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.stdout.splitlines()
            if re.match(r"\| (visionzip|divprune) ", line)}
    assert set(rows) == {"visionzip", "divprune"}
    for cells in rows.values():
        assert cells[3].strip().startswith("16 of")  # the visual tokens the language model receives
        assert float(cells[8].strip().rstrip("x")) > 1.0  # fewer (vision + prefill) FLOPs than stock

