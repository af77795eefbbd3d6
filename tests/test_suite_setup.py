"""How the suite itself runs: `make test` on two pytest-xdist workers, one torch thread each."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def test_make_test_runs_two_workers_module_by_module_with_one_thread_each() -> None:
    # `make -n` prints the recipe without running it (the venv stamp is made to look up to date).
    proc = subprocess.run(["make", "-n", "-o", ".venv/.installed", "test", "PYTEST_ARGS=-m 'not slow'"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if "-m pytest" in x]
    assert re.search(r"OMP_NUM_THREADS=\$\{OMP_NUM_THREADS:-1\} ", line), line
    assert " -n 2 --dist loadscope --no-loadscope-reorder -m 'not slow'" in line, line  # PYTEST_ARGS still reaches pytest
    proc = subprocess.run(["make", "-n", "-o", ".venv/.installed", "test", "PYTEST_WORKERS=0"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert " -n 0 " in proc.stdout, proc.stdout


@pytest.mark.skipif(not os.environ.get("PYTEST_XDIST_WORKER"), reason="checks a pytest-xdist worker")
def test_an_xdist_worker_uses_one_torch_thread() -> None:
    assert "OMP_NUM_THREADS" in os.environ  # set by `make test` or by conftest.py
    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])


@pytest.mark.skipif(not os.environ.get("PYTEST_XDIST_WORKER"), reason="checks a pytest-xdist worker's collection")
def test_the_longest_modules_are_scheduled_first(request: pytest.FixtureRequest) -> None:
    from conftest import LONGEST_FIRST

    modules = list(dict.fromkeys(item.path.name for item in request.session.items))
    present = [m for m in LONGEST_FIRST if m in modules]
    assert modules[: len(present)] == present
