"""Reference predictors: what a model must beat to have learned more than who clicks and what is popular.

Three fit/predict predictors on one domain's processed splits (:class:`~cdanet.data.DomainData`):

* :class:`BaseRate`: the training positive rate for every row (AUC 0.5; its logloss is the floor
  of "knows nothing about the row").
* :class:`ItemPopularity`: the item's training click-through rate, shrunk toward the global rate
  by a Beta prior: ``(clicks_i + m * p0) / (shows_i + m)``. The prior strength ``m`` is chosen on
  the validation split's logloss (the held-out predictive likelihood, i.e. empirical Bayes), because
  ``m`` is a calibration knob: with a small ``m`` an item shown once and clicked once scores 1.0.
  Items are keyed by their raw id, so no vocabulary is needed; items without training rows get ``p0``.
* :class:`IdLogisticRegression`: one L2-regularised bias per value of every ``categorical_id``
  field of the schema (user id and item id: the user's and the item's bias, nothing shared between
  them), i.e. scikit-learn's ``LogisticRegression`` on their sparse one-hot encoding. Index 0 (OOV)
  gets no feature. The inverse regularisation strength ``C`` is chosen on the validation AUC.

All three train on the ``train`` split only and use ``validation`` only to pick their one
hyperparameter, exactly like the models they are compared with (early stopping on validation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cdanet.contract import OOV_INDEX, DomainSchema, FieldKind, FieldSpec
from cdanet.data import DomainData

__all__ = [
    "DEFAULT_C_GRID",
    "DEFAULT_PRIOR_GRID",
    "BaseRate",
    "IdLogisticRegression",
    "ItemPopularity",
    "ReferenceFitError",
        "id_fields",
    "id_one_hot",
]

#: Inverse L2 strengths tried by :class:`IdLogisticRegression`, smallest (strongest penalty) first.
DEFAULT_C_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
#: Beta prior strengths (pseudo-impressions at the global rate) tried by :class:`ItemPopularity`.
DEFAULT_PRIOR_GRID: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


class ReferenceFitError(ValueError):
    """A reference cannot be fitted: a split with one class, a schema without id fields, ..."""


def _labels(data: DomainData) -> np.ndarray:
    return data.label.detach().cpu().numpy().astype(np.float64)


def _check_both_classes(data: DomainData, what: str) -> np.ndarray:
    y = _labels(data)
    positives = int(y.sum())
    if len(y) == 0 or positives in (0, len(y)):
        raise ReferenceFitError(
            f"{what}: the {data.split} split of domain {data.domain!r} has {len(y)} row(s) and {positives} "
            "positive(s); fitting and selecting a reference needs both classes"
        )
    return y


def _logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)  # the clip of cdanet.evaluation.compute_metrics
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def _best(scores: dict[float, float], higher_is_better: bool) -> float:
    """The grid value with the best score; ties go to the first value of the grid."""
    sign = 1.0 if higher_is_better else -1.0
    return max(scores, key=lambda k: (sign * scores[k], -list(scores).index(k)))


# ---- base rate ----------------------------------------------------------------------------------


@dataclass
class BaseRate:
    """Predicts the training positive rate for every row."""

    rate_: float = math.nan

    def fit(self, train: DomainData, val: DomainData | None = None) -> BaseRate:
        """``val`` is accepted (and ignored) so every reference has the same signature."""
        self.rate_ = float(_check_both_classes(train, "BaseRate").mean())
        return self

    def predict(self, data: DomainData) -> np.ndarray:
        """The rate, float64 ``[N]``."""
        if math.isnan(self.rate_):
            raise ReferenceFitError("BaseRate.predict called before fit")
        return np.full(len(data), self.rate_, dtype=np.float64)


# ---- item popularity ----------------------------------------------------------------------------


@dataclass
class ItemPopularity:
    """The item's smoothed training CTR; the Beta prior strength is chosen on validation logloss.

    After :meth:`fit`: ``prior_`` (chosen strength ``m``), ``global_rate_`` (``p0``),
    ``val_logloss_`` ({m: validation logloss}) and the per-item ``clicks_``/``shows_`` counts.
    """

    prior_grid: Sequence[float] = DEFAULT_PRIOR_GRID
    prior_: float = math.nan
    global_rate_: float = math.nan
    val_logloss_: dict[float, float] = field(default_factory=dict)
    clicks_: pd.Series | None = None
    shows_: pd.Series | None = None

    def fit(self, train: DomainData, val: DomainData) -> ItemPopularity:
        if not self.prior_grid or min(self.prior_grid) <= 0:
            raise ReferenceFitError(f"ItemPopularity: prior_grid must be non-empty and positive, got {list(self.prior_grid)}")
        y = _check_both_classes(train, "ItemPopularity")
        counts = pd.DataFrame({"item": train.item_ids, "y": y}).groupby("item", sort=True)["y"].agg(["sum", "size"])
        self.clicks_, self.shows_ = counts["sum"], counts["size"]
        self.global_rate_ = float(y.mean())
        y_val = _labels(val)
        self.val_logloss_ = {float(m): _logloss(y_val, self._score(val.item_ids, float(m))) for m in self.prior_grid}
        self.prior_ = _best(self.val_logloss_, higher_is_better=False)
        return self

    def _score(self, item_ids: np.ndarray, prior: float) -> np.ndarray:
        assert self.clicks_ is not None and self.shows_ is not None
        index = self.clicks_.index.get_indexer(pd.Index(item_ids))
        seen = index >= 0
        clicks = np.where(seen, self.clicks_.to_numpy()[index], 0.0)
        shows = np.where(seen, self.shows_.to_numpy()[index], 0.0)
        return (clicks + prior * self.global_rate_) / (shows + prior)

    def predict(self, data: DomainData) -> np.ndarray:
        """Click probabilities float64 ``[N]``."""
        if math.isnan(self.prior_):
            raise ReferenceFitError("ItemPopularity.predict called before fit")
        return self._score(data.item_ids, self.prior_)


# ---- id-only logistic regression ----------------------------------------------------------------


def id_fields(schema: DomainSchema) -> tuple[FieldSpec, ...]:
    """The ``categorical_id`` fields of ``schema`` (user id, item id), in schema order."""
    fields = tuple(f for f in schema.fields if f.kind is FieldKind.CATEGORICAL_ID)
    if not fields:
        raise ReferenceFitError(
            f"domain {schema.domain!r} has no {FieldKind.CATEGORICAL_ID.value} field (fields: "
            f"{list(schema.field_names)}); the id-only references need the user and item id fields"
        )
    return fields


def id_one_hot(data: DomainData, fields: Sequence[FieldSpec]) -> sp.csr_matrix:
    """The one-hot of ``fields`` as a sparse float64 ``[N, sum(vocab_size - 1)]`` matrix.

    Field ``f`` owns columns ``offset_f .. offset_f + vocab_size_f - 2``; index ``k >= 1`` sets
    column ``offset_f + k - 1``, and the OOV index 0 sets nothing (an unseen id has no bias).
    """
    n = len(data)
    rows, cols = [], []
    offset = 0
    for spec in fields:
        index = data.features[spec.name].detach().cpu().numpy().astype(np.int64, copy=False)
        known = index != OOV_INDEX
        rows.append(np.flatnonzero(known))
        cols.append(offset + index[known] - 1)
        offset += spec.vocab_size - 1
    r, c = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(n, offset))


@dataclass
class IdLogisticRegression:
    """User bias + item bias, L2-regularised; ``C`` chosen on the validation AUC.

    One bias per value of every ``categorical_id`` field of the schema (:func:`id_fields`) plus an
    unpenalised intercept, fitted with L-BFGS. The grid is fitted from the smallest ``C`` upwards,
    each fit warm-started from the previous one's weights, so the whole grid costs little more than
    one fit (a few seconds at 250k training rows). Ties in validation AUC go to the smaller ``C``.

    After :meth:`fit`: ``c_`` (chosen ``C``), ``val_auc_`` ({C: validation AUC}), ``coef_``
    [features], ``intercept_`` and ``fields_`` (the id fields, from the training split's schema).
    """

    c_grid: Sequence[float] = DEFAULT_C_GRID
    max_iter: int = 500
    tol: float = 1e-6
    c_: float = math.nan
    val_auc_: dict[float, float] = field(default_factory=dict)
    coef_: np.ndarray | None = None
    intercept_: float = math.nan
    fields_: tuple[FieldSpec, ...] = ()
    schema_fingerprint_: str = ""

    def fit(self, train: DomainData, val: DomainData) -> IdLogisticRegression:
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        if not self.c_grid or min(self.c_grid) <= 0:
            raise ReferenceFitError(f"IdLogisticRegression: c_grid must be non-empty and positive, got {list(self.c_grid)}")
        if val.schema.fingerprint() != train.schema.fingerprint():
            raise ReferenceFitError(
                f"IdLogisticRegression: the {val.split} split of {val.domain!r} has another schema than the "
                f"{train.split} split of {train.domain!r}; both must come from one preprocessing run"
            )
        y = _check_both_classes(train, "IdLogisticRegression")
        y_val = _check_both_classes(val, "IdLogisticRegression")
        self.fields_ = id_fields(train.schema)
        self.schema_fingerprint_ = train.schema.fingerprint()
        x, x_val = id_one_hot(train, self.fields_), id_one_hot(val, self.fields_)
        model = LogisticRegression(solver="lbfgs", max_iter=self.max_iter, tol=self.tol, warm_start=True)
        self.val_auc_ = {}
        best: tuple[float, np.ndarray, float] | None = None
        for c in sorted(float(c) for c in self.c_grid):
            model.set_params(C=c)
            # L-BFGS only does vector operations; threaded BLAS on them is 10x slower on a busy machine.
            with threadpool_limits(1, user_api="blas"):
                model.fit(x, y)
            auc = _auc(y_val, x_val @ model.coef_[0] + model.intercept_[0])
            self.val_auc_[c] = auc
            if best is None or auc > best[0]:
                best = (auc, model.coef_[0].copy(), float(model.intercept_[0]))
                self.c_ = c
        assert best is not None
        self.coef_, self.intercept_ = best[1], best[2]
        return self

    def decision_function(self, data: DomainData) -> np.ndarray:
        """Logits float64 ``[N]``."""
        if self.coef_ is None:
            raise ReferenceFitError("IdLogisticRegression.predict called before fit")
        if data.schema.fingerprint() != self.schema_fingerprint_:
            raise ReferenceFitError(
                f"IdLogisticRegression: the {data.split} split of {data.domain!r} has another schema (vocabulary "
                "sizes) than the training split it was fitted on; its id indices would mean other ids"
            )
        return id_one_hot(data, self.fields_) @ self.coef_ + self.intercept_

    def predict(self, data: DomainData) -> np.ndarray:
        """Click probabilities float64 ``[N]``."""
        from scipy.special import expit

        return expit(self.decision_function(data))
