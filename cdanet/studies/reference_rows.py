"""The reference rows of the studies' tables: what every model is measured against on the same test rows.

Per target domain, on its processed test split:

* Base rate, Item popularity and Id-only LR (:mod:`cdanet.references`): fitted on the target's
  training split, one hyperparameter chosen on its validation split. Always present, simulated or
  real data.
* Learnable ceiling (target) and (target + source) (:mod:`cdanet.studies.ceiling`): only with the
  simulator's ground truth (``--oracle-from``).

The oracle keeps its own type (:class:`~cdanet.studies.oracle.OracleAUC`) and row. References are
fitted on the whole training split, also for Fig. 5's shrunken training fractions.
"""

from __future__ import annotations

import functools
import glob
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from cdanet.contract import PARQUET_SUFFIX, SCHEMA_FILENAME
from cdanet.studies.oracle import OracleAUC, ground_truth_root

logger = logging.getLogger(__name__)

#: Row labels, in table order (the ceilings' keys follow :data:`cdanet.studies.ceiling.VARIANTS`).
REFERENCE_LABELS: dict[str, str] = {
    "base_rate": "Base rate",
    "popularity": "Item popularity",
    "id_lr": "Id-only LR",
    "ceiling_target": "Learnable ceiling (target)",
    "ceiling_both": "Learnable ceiling (target + source)",
}
ORACLE_LABEL = "Oracle (simulator p_click)"
#: Columns of ``<study>_references.csv``.
REFERENCE_COLUMNS: tuple[str, ...] = ("target_domain", "reference", "label", "test_auc", "test_logloss", "test_rows",
                                      "detail")


@dataclass(frozen=True)
class ReferenceScore:
    """Test AUC and logloss of one reference on one target domain's ``n`` test rows."""

    domain: str
    key: str
    auc: float
    logloss: float
    n: int
    detail: str = ""

    @property
    def label(self) -> str:
        return REFERENCE_LABELS.get(self.key, self.key)


def fitted_reference_scores(processed_root: str, domain: str) -> list[ReferenceScore]:
    """Base rate, item popularity and id-only LR of ``domain``; one that cannot be fitted is left out (logged)."""
    from cdanet.contract import load_schemas
    from cdanet.data import load_split
    from cdanet.evaluation import EvaluationError, compute_metrics
    from cdanet.references import BaseRate, IdLogisticRegression, ItemPopularity, ReferenceFitError

    schema = load_schemas(processed_root, [domain])[domain]
    train, val, test = (load_split(processed_root, schema, s) for s in ("train", "validation", "test"))
    labels = test.label.numpy()
    out = []
    for key, reference in (("base_rate", BaseRate()), ("popularity", ItemPopularity()),
                           ("id_lr", IdLogisticRegression())):
        try:
            reference.fit(train, val)
            m = compute_metrics(domain, labels, reference.predict(test))
        except (ReferenceFitError, EvaluationError) as e:
            logger.warning("%s: no %s reference: %s", domain, REFERENCE_LABELS[key], e)
            continue
        if isinstance(reference, BaseRate):
            detail = f"training positive rate {reference.rate_:.4f}"
        elif isinstance(reference, ItemPopularity):
            detail = f"Beta prior strength {reference.prior_:g} (best validation logloss)"
        else:
            detail = f"C={reference.c_:g} (best validation AUC)"
        out.append(ReferenceScore(domain, key, m.auc, m.logloss, m.n, detail))
    return out


def _stamp(paths: Sequence[str]) -> tuple[tuple[str, int, int], ...]:
    """What identifies the inputs' contents for the in-process cache: path, mtime and size of each file."""
    out = []
    for p in sorted(paths):
        st = os.stat(p)
        out.append((p, st.st_mtime_ns, st.st_size))
    return tuple(out)


@functools.lru_cache(maxsize=16)
def _cached(processed_root: str, domain: str, oracle_dir: str | None,
            stamp: tuple[tuple[str, int, int], ...]) -> tuple[ReferenceScore, ...]:
    from cdanet.studies.ceiling import VARIANT_BOTH, VARIANT_TARGET, learnable_ceilings

    scores = fitted_reference_scores(processed_root, domain)
    ceiling = learnable_ceilings(oracle_dir, processed_root, [domain]).get(domain, {})
    for key, variant in (("ceiling_target", VARIANT_TARGET), ("ceiling_both", VARIANT_BOTH)):
        if variant in ceiling:
            c = ceiling[variant]
            detail = f"tastes inferred from {c.pretest_rows} pre-test rows"
            if c.n < c.test_rows:
                detail += f"; scored on the {c.n} of {c.test_rows} test rows with ground truth"
            scores.append(ReferenceScore(domain, key, c.auc, c.logloss, c.n, detail))
    return tuple(scores)


def reference_scores(processed_root: str, domains: Sequence[str],
                     oracle_dir: str | None = None) -> dict[str, list[ReferenceScore]]:
    """``{domain: [ReferenceScore, ...]}`` in table order; the ceilings only with ``oracle_dir``.

    Results are cached in the process (keyed by the files' paths, times and sizes), so the studies of
    one ``all`` invocation fit the references once.
    """
    root = os.path.abspath(processed_root)
    files = glob.glob(os.path.join(root, "*", f"*{PARQUET_SUFFIX}")) + glob.glob(os.path.join(root, "*", SCHEMA_FILENAME))
    if oracle_dir:
        try:
            files += glob.glob(os.path.join(ground_truth_root(oracle_dir), "ground_truth", "*.parquet"))
        except FileNotFoundError:
            pass  # the ceilings are left out, and say why
    stamp = _stamp(files)
    return {d: list(_cached(root, d, oracle_dir or None, stamp)) for d in domains}


def references_frame(references: Mapping[str, Sequence[ReferenceScore]],
                     oracle: Mapping[str, OracleAUC] | None = None) -> pd.DataFrame:
    """One row per reference and target domain (columns :data:`REFERENCE_COLUMNS`), the oracle last."""
    rows = [{"target_domain": r.domain, "reference": r.key, "label": r.label, "test_auc": r.auc,
             "test_logloss": r.logloss, "test_rows": r.n, "detail": r.detail}
            for scores in references.values() for r in scores]
    rows += [{"target_domain": o.domain, "reference": "oracle", "label": ORACLE_LABEL, "test_auc": o.auc,
              "test_logloss": o.logloss, "test_rows": o.n, "detail": o.describe()} for o in (oracle or {}).values()]
    return pd.DataFrame(rows, columns=list(REFERENCE_COLUMNS))


def reference_cell(score: float) -> str:
    return "" if math.isnan(score) else f"{score:.4f}"
