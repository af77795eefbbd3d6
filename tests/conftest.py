"""Shared fixtures: tiny synthetic processed datasets (see cdanet/synthetic.py).

The session-scoped directories are shared by every test module: treat them as read-only and copy
them (``shutil.copytree``) before writing anything into them.
"""

from __future__ import annotations

import pytest

from cdanet.contract import DomainSchema, load_schemas
from cdanet.synthetic import write_synthetic_processed


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
