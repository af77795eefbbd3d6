"""Smoke test of the serving benchmark at tiny settings, so that the script cannot rot.

The figures are not asserted beyond being measured (positive, p99 >= p50): speed figures live in the
benchmark's printed output, not in timed tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_serving_prints_latency_and_throughput_per_batch_size() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_serving", "--batch-sizes", "1", "8", "--requests", "3",
         "--warmup", "1", "--threads", "1"],
        cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=600,
    ).stdout
    lines = out.splitlines()
    assert lines[0].startswith("# command: ") and "benchmarks.bench_serving --batch-sizes 1 8" in lines[0], out
    assert any(line.startswith("# server: ") and "mlflow models serve" in line for line in lines), out
    rows = {int(line.split()[0]): [float(x) for x in line.split()[1:]] for line in lines
            if line.split() and line.split()[0].isdigit()}
    assert set(rows) == {1, 8}, out
    for batch, (p50, p99, mean, req_s, rows_s) in rows.items():
        assert 0 < p50 <= p99 and mean > 0 and req_s > 0
        assert rows_s == pytest.approx(batch * req_s, rel=0.01, abs=1)
