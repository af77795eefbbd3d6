"""Set-up shared by the component tests (test_components, test_tracking): kfp artifacts and a configured workspace.

A workspace is what the steps after ``configure`` read: a tiny synthetic processed dataset (movie
3000 rows, book 6000, 150 users) and the frozen config that ``configure`` writes, with empty raw
data and a one-word GloVe file beside them.
"""

from __future__ import annotations

import os
from pathlib import Path

from kfp import dsl

import components as C
from cdanet.synthetic import write_synthetic_processed


def artifact(cls, root: Path, name: str, directory: bool = False):
    """A kfp artifact of type ``cls`` at ``root/name`` (a created folder when ``directory``)."""
    a = cls(name=name, uri=str(root / name), metadata={})
    if directory:
        os.makedirs(a.path, exist_ok=True)
    return a


def configured_workspace(root: Path, baseline_margin: float) -> tuple[Path, Path, dsl.Artifact]:
    """``(root, processed folder, config artifact)`` under ``root``: the tiny profile on Amazon, 3 epochs.

    ``baseline_margin`` is the gate's in-run baseline margin (-1 turns that check off).
    """
    processed = root / "processed"
    write_synthetic_processed(str(processed), "amazon", n_users=150, rows_per_domain={"movie": 3000, "book": 6000})
    raw = root / "raw"
    raw.mkdir()
    glove = root / "glove.txt"
    glove.write_text("film 0.1 0.2\n")
    config = artifact(dsl.Artifact, root, "config")
    C.configure.python_func(
        dataset="amazon", target_domain="", raw_uri=str(raw), glove_uri=str(glove), profile="tiny", alpha=None,
        beta=None, num_experts=2, latent_dim=8, max_epochs=3, batch_size=128, learning_rate=0.005, seed=0,
        extra_overrides=[], tuned_config_uri="", min_auc=0.5, tolerance=0.0, baseline_margin=baseline_margin,
        config=config,
    )
    return root, processed, config
