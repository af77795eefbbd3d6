"""The oracle AUC on simulated data: how well the simulator's true click probabilities rank the test rows.

No model can beat the oracle in expectation (labels are Bernoulli draws from ``p_click``), so it
shows the headroom above each table's best model. The processed test rows are joined to the
simulator's ground truth (``<sim>/ground_truth/<domain>.parquet``: user, item, timestamp, p_click,
label) on (raw user id, raw item id, timestamp) and scored against the processed labels. When fewer
than ``min_match`` of the test rows find their ground truth (e.g. preprocessing shifted timestamps),
the oracle falls back to the whole domain's rows (:func:`cdanet.simulate.ground_truth_auc`); the
``scope`` field says which one a number is.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cdanet.contract import read_split

SCOPE_TEST = "test rows"
SCOPE_DOMAIN = "whole domain"


@dataclass(frozen=True)
class OracleAUC:
    """Oracle AUC (and logloss) of one domain; ``n`` rows were scored, ``matched`` of ``test_rows`` test rows joined."""

    domain: str
    auc: float
    scope: str
    n: int
    matched: int
    test_rows: int
    logloss: float = math.nan

    def describe(self) -> str:
        if self.scope == SCOPE_TEST:
            return f"{self.domain}: oracle on the {self.n} test rows"
        return (f"{self.domain}: oracle on all {self.n} simulated rows of the domain (only {self.matched} of "
                f"{self.test_rows} test rows matched the ground truth on user, item and timestamp)")


def ground_truth_root(path: str) -> str:
    """The simulator output folder holding ``ground_truth/``: ``path`` itself or its parent.

    Accepts the folder ``python -m cdanet.simulate --output`` wrote, or its ``<dataset>/`` raw
    subfolder (what the training pipeline is given as ``raw_uri``).
    """
    for candidate in (path, os.path.dirname(os.path.abspath(path))):
        if os.path.isdir(os.path.join(candidate, "ground_truth")):
            return candidate
    raise FileNotFoundError(
        f"--oracle-from {path}: no ground_truth/ folder there or in its parent; expected the output folder of "
        "`python -m cdanet.simulate` (with ground_truth/<domain>.parquet)"
    )


def processed_rows(processed_root: str, domain: str, split: str = "test") -> pd.DataFrame:
    """The join keys and labels of one processed split: user_id_raw, item_id_raw, timestamp, label."""
    columns = ["user_id_raw", "item_id_raw", "timestamp", "label"]
    return read_split(processed_root, domain, split, columns=columns).table.to_pandas()


def oracle_auc(oracle_dir: str, processed_root: str, domain: str, min_match: float = 0.99) -> OracleAUC:
    """The oracle AUC of ``domain``'s test split (or of the whole domain, see the module docstring)."""
    from cdanet.evaluation import compute_metrics
    from cdanet.simulate import load_ground_truth

    root = ground_truth_root(oracle_dir)
    truth = load_ground_truth(root, domain).to_pandas()
    missing = sorted({"user", "item", "timestamp", "p_click"} - set(truth.columns))
    if missing:
        raise ValueError(f"ground truth of {domain!r} under {root} lacks columns {missing}")
    test = processed_rows(processed_root, domain, "test")
    n_truth = len(truth)
    # A duplicated key in the ground truth would duplicate test rows in the join.
    truth = truth.drop_duplicates(["user", "item", "timestamp"])[["user", "item", "timestamp", "p_click"]]
    joined = test.merge(truth, how="left", left_on=["user_id_raw", "item_id_raw", "timestamp"],
                        right_on=["user", "item", "timestamp"])
    found = joined["p_click"].notna().to_numpy()
    matched = int(found.sum())
    labels = joined.loc[found, "label"].to_numpy()
    if len(test) and matched / len(test) >= min_match and 0 < labels.sum() < len(labels):
        m = compute_metrics(domain, labels, joined.loc[found, "p_click"].to_numpy(dtype=np.float64))
        return OracleAUC(domain, m.auc, SCOPE_TEST, matched, matched, len(test), m.logloss)
    whole = load_ground_truth(root, domain).select(["label", "p_click"]).to_pandas()
    m = compute_metrics(domain, whole["label"].to_numpy(), whole["p_click"].to_numpy(dtype=np.float64))
    return OracleAUC(domain, m.auc, SCOPE_DOMAIN, n_truth, matched, len(test), m.logloss)


def oracle_aucs(oracle_dir: str | None, processed_root: str, domains: list[str]) -> dict[str, OracleAUC]:
    """``{domain: OracleAUC}``; empty without an ``oracle_dir``."""
    if not oracle_dir:
        return {}
    return {d: oracle_auc(oracle_dir, processed_root, d) for d in domains}
