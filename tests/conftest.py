"""Shared fixtures: tiny synthetic processed datasets (see cdanet/synthetic.py).

The session-scoped directories are shared by every test module: treat them as read-only and copy
them (``shutil.copytree``) before writing anything into them.
"""

from __future__ import annotations

import os

import pytest

from cdanet.contract import DomainSchema, load_schemas
from cdanet.synthetic import write_synthetic_processed

# `make test` runs two pytest-xdist workers on two cores: one torch/OpenMP thread per worker (and for
# the subprocesses it starts, which inherit the variable), so the workers do not oversubscribe.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def processed_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Amazon-like processed root: ``movie`` (3000 rows, target) and ``book`` (6000 rows), 100 users.

    movie: user_id, item_id, genre, director, title (8-d dense); book: user_id, item_id, writer,
    category (multi-hot, max_len 4), title. The train split is written as two shuffled shards.
    """
    root = str(tmp_path_factory.mktemp("processed_amazon"))
    write_synthetic_processed(root, "amazon", seed=0)
    return root


@pytest.fixture(scope="session")
def processed_schemas(processed_dir: str) -> dict[str, DomainSchema]:
    return load_schemas(processed_dir, ("movie", "book"))


@pytest.fixture(scope="session")
def taobao_processed_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Taobao-like processed root: ``ad`` (target, user-side age/gender fields) and ``rec`` (multi-hot)."""
    root = str(tmp_path_factory.mktemp("processed_taobao"))
    write_synthetic_processed(root, "taobao", seed=1)
    return root


#: The modules that take longest (the pipeline runs, the benchmark smoke runs, real subprocesses),
#: longest first, as measured with ``--durations``. Under pytest-xdist (``make test``: ``--dist
#: loadscope --no-loadscope-reorder``, one module at a time per worker) they start first, so the run
#: does not end with one worker busy on a long module while the other idles.
LONGEST_FIRST: tuple[str, ...] = (
    "test_pipeline_local.py",
    "test_pipeline_local_baseline.py",
    "test_bench_scale.py",
    "test_runner_portability.py",
    "test_promotion.py",
    "test_manifests.py",
    "test_distributed.py",
    "test_remap.py",
    "test_experiments_pipeline.py",
)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # one process: collection order as written
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its order
