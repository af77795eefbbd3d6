"""Offline evaluation: AUC and logloss per domain, per-row predictions, ROC, confusion and calibration data.

AUC is the paper's metric (Sec. 5.2.1); logloss is reported alongside because a gate on AUC alone
would bless a model with badly calibrated scores. A logloss means little on its own, so
:func:`calibration` puts it next to the *base-rate logloss* (the logloss of predicting the training
split's click rate for every row: a model that does not beat it has learnt nothing usable as a
probability) and a reliability diagram (equal-mass bins of predicted probability against the
observed click rate) with its expected calibration error. ROC points, the confusion matrix and the
reliability bins are plain lists so the pipeline can log and plot them without this module knowing KFP.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from sklearn.metrics import log_loss, roc_auc_score, roc_curve

from cdanet.atomic import replacing, write_json
from cdanet.contract import DomainSchema, read_split
from cdanet.data import DomainData

PREDICTIONS_FILENAME = "predictions.parquet"
METRICS_FILENAME = "metrics.json"


class EvaluationError(ValueError):
    """A split cannot be evaluated (e.g. it holds only one class, so AUC is undefined)."""


@dataclass(frozen=True)
class DomainMetrics:
    """Metrics of one domain on one split."""

    domain: str
    auc: float
    logloss: float
    n: int
    positive_rate: float


@dataclass(frozen=True)
class RocCurve:
    """ROC curve points, ascending in fpr; ``thresholds[0]`` is +inf in sklearn, clipped here to 1."""

    fpr: list[float]
    tpr: list[float]
    thresholds: list[float]


def compute_metrics(domain: str, labels: np.ndarray, scores: np.ndarray) -> DomainMetrics:
    """AUC and logloss of click probabilities ``scores`` [N] against 0/1 ``labels`` [N]."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise EvaluationError(f"domain {domain!r}: labels {labels.shape} and scores {scores.shape} must be equal 1-d")
    n = int(labels.shape[0])
    positives = int(labels.sum())
    if n == 0 or positives in (0, n):
        raise EvaluationError(
            f"domain {domain!r}: AUC needs both classes, but the {n} evaluated rows have {positives} positive(s); "
            "the split is degenerate (check the labelling threshold and the chronological split)"
        )
    if not np.isfinite(scores).all():
        raise EvaluationError(f"domain {domain!r}: the model produced {int((~np.isfinite(scores)).sum())} non-finite scores")
    return DomainMetrics(
        domain=domain,
        auc=float(roc_auc_score(labels, scores)),
        logloss=float(log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1])),
        n=n,
        positive_rate=positives / n,
    )


def roc_curve_points(labels: np.ndarray, scores: np.ndarray, max_points: int = 200) -> RocCurve:
    """The ROC curve downsampled to at most ``max_points`` points (first and last always kept)."""
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    fpr, tpr, thr = roc_curve(np.asarray(labels), np.asarray(scores, dtype=np.float64))
    if len(fpr) > max_points:
        keep = np.unique(np.linspace(0, len(fpr) - 1, max_points).round().astype(int))
        fpr, tpr, thr = fpr[keep], tpr[keep], thr[keep]
    thr = np.minimum(thr, 1.0)  # sklearn puts +inf first, which JSON and KFP cannot carry
    return RocCurve(fpr.tolist(), tpr.tolist(), thr.tolist())


def confusion_matrix_at(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> list[list[int]]:
    """``[[TN, FP], [FN, TP]]``: rows are the true class (0, 1), columns the prediction ``score >= threshold``."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(scores) >= threshold
    return [[int((~y & ~p).sum()), int((~y & p).sum())], [int((y & ~p).sum()), int((y & p).sum())]]


def base_rate_logloss(labels: np.ndarray, rate: float) -> float:
    """Logloss of predicting the constant click probability ``rate`` for every row of ``labels`` [N].

    With ``rate`` the *training* split's positive rate this is the score of a model that knows only
    the base rate; clipped like :func:`compute_metrics` so a 0 or 1 rate gives a finite number.
    """
    y = np.asarray(labels, dtype=np.float64)
    if y.ndim != 1 or y.size == 0:
        raise EvaluationError(f"base-rate logloss needs a non-empty 1-d label array, got shape {y.shape}")
    rate = float(rate)
    if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
        raise EvaluationError(f"the base rate must be a probability in [0, 1], got {rate}")
    p = min(max(rate, 1e-7), 1 - 1e-7)
    return float(-(y * math.log(p) + (1 - y) * math.log(1 - p)).mean())


@dataclass(frozen=True)
class ReliabilityDiagram:
    """Binned predicted probability against the observed click rate (one entry per bin, ascending).

    Bins hold equal numbers of rows (equal mass), so every point rests on the same amount of
    evidence even when the scores crowd around the base rate, as CTR scores do. ``ece`` is the
    expected calibration error: the row-weighted mean of ``|mean_predicted - observed_rate|``.
    """

    bin_lower: list[float]
    bin_upper: list[float]
    mean_predicted: list[float]
    observed_rate: list[float]
    count: list[int]
    ece: float


def reliability_diagram(labels: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> ReliabilityDiagram:
    """Equal-mass reliability bins of click probabilities ``scores`` [N] against 0/1 ``labels`` [N].

    Rows are sorted by score (stable) and cut into ``min(n_bins, N)`` chunks whose sizes differ by at
    most one; rows with tied scores may fall into neighbouring bins, which keeps the masses equal.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(scores, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1 or y.size == 0:
        raise EvaluationError(f"labels {y.shape} and scores {p.shape} must be equal, non-empty 1-d arrays")
    if not np.isfinite(p).all():
        raise EvaluationError(f"{int((~np.isfinite(p)).sum())} non-finite scores")
    chunks = np.array_split(np.argsort(p, kind="stable"), min(n_bins, y.size))
    lower = [float(p[c].min()) for c in chunks]
    upper = [float(p[c].max()) for c in chunks]
    predicted = [float(p[c].mean()) for c in chunks]
    observed = [float(y[c].mean()) for c in chunks]
    count = [int(c.size) for c in chunks]
    ece = float(sum(n * abs(a - b) for n, a, b in zip(count, predicted, observed, strict=True)) / y.size)
    return ReliabilityDiagram(lower, upper, predicted, observed, count, ece)


@dataclass(frozen=True)
class Calibration:
    """How usable a domain's scores are as probabilities: logloss against the base rate, reliability bins."""

    domain: str
    logloss: float
    base_rate: float
    base_rate_logloss: float
    reliability: ReliabilityDiagram

    @property
    def ece(self) -> float:
        return self.reliability.ece

    @property
    def beats_base_rate(self) -> bool:
        return self.logloss < self.base_rate_logloss

    def to_dict(self) -> dict:
        """JSON-ready: the scalars plus the bins as plain lists."""
        return {"domain": self.domain, "logloss": self.logloss, "base_rate": self.base_rate,
                "base_rate_logloss": self.base_rate_logloss, "ece": self.ece,
                "reliability": asdict(self.reliability)}


def calibration(domain: str, labels: np.ndarray, scores: np.ndarray, base_rate: float,
                n_bins: int = 10) -> Calibration:
    """Logloss, base-rate logloss (``base_rate``: the training split's positive rate) and reliability bins."""
    m = compute_metrics(domain, labels, scores)
    return Calibration(domain, m.logloss, float(base_rate), base_rate_logloss(labels, base_rate),
                       reliability_diagram(labels, scores, n_bins))


def train_positive_rate(processed_root: str, schema: DomainSchema) -> float:
    """The click rate of ``schema.domain``'s training split, read from its parquet label column.

    Read from the rows rather than ``stats.json`` because the label column is the one contract every
    writer of processed data (Beam preprocessing, the synthetic generator) shares.
    """
    labels = read_split(processed_root, schema, "train", columns=[schema.label_column]).table.column(0).to_numpy()
    if labels.size == 0:
        raise EvaluationError(f"domain {schema.domain!r}: the training split has no rows")
    return float(labels.mean())


@dataclass
class EvaluationResult:
    """Per-domain metrics of a model on one split, with the scores they came from."""

    split: str
    domains: dict[str, DomainMetrics]
    scores: dict[str, np.ndarray] = field(repr=False)
    data: dict[str, DomainData] = field(repr=False)
    target_domain: str | None = None

    def __getitem__(self, domain: str) -> DomainMetrics:
        return self.domains[domain]

    def to_dict(self) -> dict[str, dict[str, float]]:
        """``{domain: {auc, logloss, n, positive_rate}}`` (JSON-ready)."""
        return {d: {k: v for k, v in asdict(m).items() if k != "domain"} for d, m in self.domains.items()}

    def roc(self, domain: str, max_points: int = 200) -> RocCurve:
        """ROC points of ``domain`` (at most ``max_points``) for KFP ``ClassificationMetrics``."""
        return roc_curve_points(self.data[domain].label.cpu().numpy(), self.scores[domain], max_points)

    def confusion_matrix(self, domain: str, threshold: float | None = None) -> list[list[int]]:
        """``[[TN, FP], [FN, TP]]`` of ``domain`` at ``threshold``.

        Without a threshold the cut-off is the domain's positive rate: CTR scores are calibrated
        probabilities around the base rate, so 0.5 would call nearly every row negative.
        """
        cut = self.domains[domain].positive_rate if threshold is None else threshold
        return confusion_matrix_at(self.data[domain].label.cpu().numpy(), self.scores[domain], cut)

    def calibration(self, domain: str, base_rate: float, n_bins: int = 10) -> Calibration:
        """Calibration of ``domain``'s scores; ``base_rate`` is the training split's positive rate."""
        return calibration(domain, self.data[domain].label.cpu().numpy(), self.scores[domain], base_rate, n_bins)

    def predictions_table(self) -> pa.Table:
        """One row per evaluated example: domain, raw user id, raw item id, timestamp, label, score."""
        tables = []
        for domain, d in self.data.items():
            tables.append(pa.table({
                "domain": pa.array([domain] * len(d), pa.string()),
                "user_id_raw": pa.array(d.user_ids, pa.string()),
                "item_id_raw": pa.array(d.item_ids, pa.string()),
                "timestamp": pa.array(d.timestamps, pa.int64()),
                "label": pa.array(d.label.cpu().numpy().astype(np.int64)),
                "score": pa.array(self.scores[domain].astype(np.float32)),
            }))
        return pa.concat_tables(tables)

    def write(self, output_dir: str) -> tuple[str, str]:
        """Write ``predictions.parquet`` and ``metrics.json`` into ``output_dir``; return their paths."""
        os.makedirs(output_dir, exist_ok=True)
        pred_path = os.path.join(output_dir, PREDICTIONS_FILENAME)
        metrics_path = os.path.join(output_dir, METRICS_FILENAME)
        _atomic_write_parquet(self.predictions_table(), pred_path)
        write_json(metrics_path, {"split": self.split, "metrics": self.to_dict()})
        return pred_path, metrics_path


def _atomic_write_parquet(table: pa.Table, path: str) -> None:
    with replacing(path) as tmp:
        pq.write_table(table, tmp)




def predict_scores(
    model: torch.nn.Module,
    data: DomainData,
    *,
    batch_size: int = 65536,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Click probabilities ``sigmoid(logit)`` [N] (float32, numpy) for every row of ``data``.

    Runs in eval mode under ``torch.inference_mode()`` in contiguous slices of ``batch_size``; the
    model's train/eval mode is restored afterwards.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.empty(len(data), dtype=np.float32)
    try:
        with torch.inference_mode():
            for start in range(0, len(data), batch_size):
                index = torch.arange(start, min(start + batch_size, len(data)), device=data.device)
                batch = data.batch(index).to(device)
                logits = model({data.domain: batch})[data.domain]
                out[start : start + len(index)] = torch.sigmoid(logits.float()).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def evaluate(
    model: torch.nn.Module,
    data: Mapping[str, DomainData],
    *,
    split: str = "test",
    batch_size: int = 65536,
    device: torch.device | str | None = None,
    domains: tuple[str, ...] | None = None,
    target_domain: str | None = None,
) -> EvaluationResult:
    """Score every domain of ``model.eval_domains`` (or ``domains``); all must be in ``data``."""
    wanted = domains if domains is not None else tuple(getattr(model, "eval_domains", tuple(data)))
    missing = [d for d in wanted if d not in data]
    if missing:
        raise EvaluationError(f"no {split} data for domain(s) {missing} that the model scores; have {sorted(data)}")
    scores = {d: predict_scores(model, data[d], batch_size=batch_size, device=device) for d in wanted}
    metrics = {d: compute_metrics(d, data[d].label.cpu().numpy(), scores[d]) for d in wanted}
    return EvaluationResult(split=split, domains=metrics, scores=scores, data={d: data[d] for d in wanted},
                            target_domain=target_domain)
