"""Smoke tests of the scale benchmark and the GPU check, so that the scripts cannot rot (their figures
are in their printed output and the docs, never asserted here)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.bench_scale import fit_slope, report

REPO = Path(__file__).resolve().parents[1]
GPU_CHECK = REPO / "benchmarks" / "gpu_check.sh"


def test_fit_slope_recovers_the_exponent() -> None:
    xs = [1e4, 1e5, 1e6]
    assert fit_slope(xs, [3 * x**1.0 for x in xs]) == pytest.approx(1.0)
    assert fit_slope(xs, [0.5 * x**0.5 for x in xs]) == pytest.approx(0.5)
    assert math.isnan(fit_slope([10.0], [1.0]))


def test_report_has_a_row_per_step_and_the_total() -> None:
    def result(scale: str, rows: int, k: float) -> dict:
        steps = {s: {"seconds": k * rows / 1000, "peak_rss_mb": 100 + rows / 100}
                 for s in ("configure", "preprocess", "validate", "pretrain", "finetune", "evaluate")}
        return {"scale": scale, "interaction_rows": rows, "steps": steps}

    text = report([result("tiny", 10_000, 1.0), result("small", 100_000, 1.0)])
    assert "| preprocess | 10.0 / 200 | 100.0 / 1100 | 1.00 / 1.00 |" in text
    assert "| **total** | 60.0 | 600.0 | 1.00 / 1.00 | |" in text
    # One scale (the preset alone): nothing to fit, so no "nan" in the table.
    one = report([result("paper", 100_000, 1.0)])
    assert "| preprocess | 100.0 / 1100 | - / - | - |" in one and "nan" not in one


def test_a_step_reports_its_own_peak_not_its_parents() -> None:
    # Before: ru_maxrss of an exec'd child starts at its parent's RSS at fork time, so every step
    # reported at least the bench's own size (3.6 GB for a 0.3 s configure step at the Taobao preset).
    import numpy as np

    held = np.ones(80_000_000)  # ~640 MB in this (the parent) process
    out = subprocess.run([sys.executable, "-c", "from benchmarks.bench_scale import _peak_rss_mb; print(_peak_rss_mb())"],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout) < 400, (out.stdout, held.nbytes)


def test_gpu_check_script_parses() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    assert subprocess.run([bash, "-n", str(GPU_CHECK)], capture_output=True).returncode == 0


def test_gpu_check_runs_on_cpu_with_tiny_settings(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "figures.json"
    proc = subprocess.run(["bash", str(GPU_CHECK), "--device", "cpu", "--tiny", "--json", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stage1:" in proc.stdout and "stage2:" in proc.stdout and "tiny run: test AUC" in proc.stdout
    figures = json.loads(out.read_text())
    assert figures["stage1"]["samples_per_s"] > 0 and figures["stage2"]["samples_per_s"] > 0
    assert 0.5 < figures["tiny_run_test_auc"] <= 1.0  # the tiny run learned something


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_gpu_check_without_a_gpu_says_so() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(GPU_CHECK)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "sees no CUDA device" in proc.stderr and "--device cpu --tiny" in proc.stderr


@pytest.mark.slow
def test_bench_scale_runs_the_smallest_size(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_scale", "--scales", "tiny", "--profile", "tiny",
         "--workdir", str(tmp_path / "work"), "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in ("configure", "preprocess", "validate", "pretrain", "finetune", "evaluate"):
        assert f"| {step} |" in proc.stdout
    (result,) = json.loads(out.read_text())
    assert result["interaction_rows"] > 0 and result["steps"]["preprocess"]["peak_rss_mb"] > 0
    assert 0.5 < result["test_auc"]["ad_test_auc"] <= 1.0
    # each step's log is a file beside its data, written as the step runs (training logs its validations)
    assert "val ad AUC" in (tmp_path / "work" / "tiny" / "pretrain.log").read_text()
