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
    base_rate_logloss,
    calibration,
    compute_metrics,
    confusion_matrix_at,
    evaluate,
    predict_scores,
    reliability_diagram,
    roc_curve_points,
    train_positive_rate,
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


def test_base_rate_logloss_is_the_logloss_of_a_constant_prediction() -> None:
    labels = np.array([0, 0, 0, 1, 0, 1, 0, 0])
    assert base_rate_logloss(labels, 0.3) == pytest.approx(log_loss(labels, np.full(8, 0.3)))
    # the test split's own rate is the best constant; any other rate (e.g. the training one) does worse
    assert base_rate_logloss(labels, 0.25) < base_rate_logloss(labels, 0.3)
    assert np.isfinite(base_rate_logloss(labels, 0.0))  # clipped like compute_metrics
    with pytest.raises(EvaluationError, match="base rate"):
        base_rate_logloss(labels, 1.5)


def test_reliability_bins_have_equal_mass_and_the_hand_computed_ece() -> None:
    labels = np.array([0, 0, 1, 0, 1, 1, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.15, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9])
    r = reliability_diagram(labels, scores, n_bins=4)
    assert r.count == [3, 3, 2, 2]  # sizes differ by at most one
    assert r.bin_lower == [0.1, 0.3, 0.6, 0.8] and r.bin_upper == [0.2, 0.4, 0.7, 0.9]
    assert r.mean_predicted == pytest.approx([0.15, 0.35, 0.65, 0.85])
    assert r.observed_rate == pytest.approx([1 / 3, 2 / 3, 0.5, 1.0])
    expected = (3 * abs(0.15 - 1 / 3) + 3 * abs(0.35 - 2 / 3) + 2 * 0.15 + 2 * 0.15) / 10
    assert r.ece == pytest.approx(expected)
    assert len(reliability_diagram(labels, scores, n_bins=50).count) == 10  # never an empty bin
    json.dumps(r.__dict__)  # plain lists, like the ROC data
    with pytest.raises(ValueError, match="n_bins"):
        reliability_diagram(labels, scores, n_bins=0)


def test_calibrated_scores_have_a_small_ece_and_beat_the_base_rate() -> None:
    rng = np.random.default_rng(3)
    p = rng.beta(1, 6, 20_000)
    labels = (rng.random(20_000) < p).astype(int)
    good = calibration("movie", labels, p, base_rate=labels.mean(), n_bins=10)
    assert good.ece < 0.01 and good.beats_base_rate
    assert good.base_rate_logloss == pytest.approx(log_loss(labels, np.full(labels.size, labels.mean())))
    overconfident = calibration("movie", labels, np.clip(p * 3, 0, 0.999), base_rate=labels.mean())
    assert overconfident.ece > 0.1 and not overconfident.beats_base_rate
    d = good.to_dict()
    assert d["reliability"]["count"] == [2000] * 10 and d["ece"] == good.ece


def test_train_positive_rate_reads_the_training_labels(processed_dir, processed_schemas) -> None:
    train = load_split(processed_dir, processed_schemas["movie"], "train")
    stats = json.load(open(f"{processed_dir}/movie/stats.json"))
    rate = train_positive_rate(processed_dir, processed_schemas["movie"])
    assert rate == pytest.approx(float(train.label.mean())) == pytest.approx(stats["positive_rate"]["train"])
