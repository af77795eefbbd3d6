"""cdanet.evaluation: metrics against sklearn, degenerate splits, ROC/confusion data, predictions."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from cdanet.config import tiny_config
from cdanet.data import load_split
from cdanet.evaluation import (
    EvaluationError,
    compute_metrics,
    confusion_matrix_at,
    evaluate,
    predict_scores,
    roc_curve_points,
)
from cdanet.models import build_model


def test_compute_metrics_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.clip(0.3 * labels + rng.random(500) * 0.7, 0, 1)
    m = compute_metrics("movie", labels, scores)
    assert m.auc == pytest.approx(roc_auc_score(labels, scores))
    assert m.logloss == pytest.approx(log_loss(labels, scores), rel=1e-6)
    assert (m.n, m.positive_rate) == (500, labels.mean())


def test_degenerate_split_gives_a_clear_error() -> None:
    with pytest.raises(EvaluationError, match=r"domain 'book': AUC needs both classes.*10 evaluated rows have 0 positive"):
        compute_metrics("book", np.zeros(10), np.linspace(0, 1, 10))
    with pytest.raises(EvaluationError, match="non-finite scores"):
        compute_metrics("book", np.array([0, 1]), np.array([0.2, np.nan]))


def test_roc_points_are_downsampled_and_keep_the_ends() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 5000)
    scores = rng.random(5000)
    roc = roc_curve_points(labels, scores, max_points=200)
    assert 2 < len(roc.fpr) <= 200 and len(roc.fpr) == len(roc.tpr) == len(roc.thresholds)
    assert (roc.fpr[0], roc.tpr[0]) == (0.0, 0.0) and (roc.fpr[-1], roc.tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(roc.fpr) >= 0) and np.all(np.diff(roc.thresholds) <= 0)
    assert max(roc.thresholds) <= 1.0  # no +inf: it must survive JSON
    json.dumps(roc.__dict__)


def test_confusion_matrix_counts() -> None:
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.6, 0.4, 0.7, 0.9])
    assert confusion_matrix_at(labels, scores, 0.5) == [[1, 1], [1, 2]]
    assert confusion_matrix_at(labels, scores, 0.0) == [[0, 2], [0, 3]]


def test_evaluate_a_model_and_write_predictions(processed_dir, processed_schemas, tmp_path) -> None:
    cfg = tiny_config(model="mlp")
    torch.manual_seed(0)
    model = build_model(cfg, processed_schemas)
    test = {"movie": load_split(processed_dir, processed_schemas["movie"], "test")}
    scores = predict_scores(model, test["movie"], batch_size=7)  # uneven batches must cover every row
    assert scores.shape == (len(test["movie"]),) and ((scores > 0) & (scores < 1)).all()
    np.testing.assert_allclose(scores, predict_scores(model, test["movie"], batch_size=10_000), rtol=1e-5, atol=1e-6)
    assert model.training  # the model's mode is restored

    result = evaluate(model, test, batch_size=64, target_domain="movie")
    m = result["movie"]
    assert m.auc == pytest.approx(roc_auc_score(test["movie"].label.numpy(), result.scores["movie"]))
    assert sum(map(sum, result.confusion_matrix("movie"))) == m.n
    # Default cut-off: the positive rate, so both predicted classes occur.
    cm = result.confusion_matrix("movie")
    assert cm == confusion_matrix_at(test["movie"].label.numpy(), result.scores["movie"], m.positive_rate)
    pred_path, metrics_path = result.write(str(tmp_path))
    table = pq.read_table(pred_path)
    assert table.column_names == ["domain", "user_id_raw", "item_id_raw", "timestamp", "label", "score"]
    assert table.num_rows == m.n
    assert table.column("user_id_raw").to_pylist() == test["movie"].user_ids.tolist()
    np.testing.assert_array_equal(table.column("score").to_numpy(), result.scores["movie"])
    assert json.load(open(metrics_path))["metrics"]["movie"]["auc"] == m.auc

    with pytest.raises(EvaluationError, match=r"no test data for domain\(s\) \['movie'\]"):
        evaluate(model, {"book": load_split(processed_dir, processed_schemas["book"], "test")})
