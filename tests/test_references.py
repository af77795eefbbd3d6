"""Reference predictors (base rate, item popularity, id-only logistic regression) on tiny processed data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cdanet.contract import DomainSchema, FieldKind
from cdanet.data import DomainData, load_split
from cdanet.evaluation import compute_metrics
from cdanet.references import (
    BaseRate,
    IdLogisticRegression,
    ItemPopularity,
    ReferenceFitError,
    id_fields,
    id_one_hot,
)


@pytest.fixture(scope="module")
def movie(processed_dir: str, processed_schemas: dict[str, DomainSchema]) -> dict[str, DomainData]:
    return {s: load_split(processed_dir, processed_schemas["movie"], s) for s in ("train", "validation", "test")}


@pytest.fixture(scope="module")
def fitted_lr(movie: dict[str, DomainData]) -> IdLogisticRegression:
    return IdLogisticRegression().fit(movie["train"], movie["validation"])


def _labels(data: DomainData) -> np.ndarray:
    return data.label.numpy()


def test_id_one_hot_has_one_column_per_known_id_and_none_for_oov(movie):
    train = movie["train"]
    fields = id_fields(train.schema)
    assert [f.name for f in fields] == [f.name for f in train.schema.fields if f.kind is FieldKind.CATEGORICAL_ID]
    assert len(fields) == 2
    user, item = fields
    x = id_one_hot(train, fields)
    assert x.shape == (len(train), user.vocab_size - 1 + item.vocab_size - 1)
    row = 7
    u, i = int(train.features[user.name][row]), int(train.features[item.name][row])
    assert sorted(x[row].indices.tolist()) == [u - 1, user.vocab_size - 1 + i - 1]
    oov = _with_ids(train.take(np.arange(3)), user=0)
    x_oov = id_one_hot(oov, fields)
    assert (x_oov.getnnz(axis=1) == 1).all()  # only the item column is left


def _with_ids(data: DomainData, **values: int) -> DomainData:
    """``data`` with id fields (``user``/``item``: the first/second categorical_id field) set to a value."""
    names = dict(zip(("user", "item"), (f.name for f in id_fields(data.schema)), strict=False))
    features = dict(data.features)
    for key, v in values.items():
        features[names[key]] = torch.full_like(features[names[key]], v)
    return dataclasses.replace(data, features=features)


def test_lr_selects_the_c_with_the_best_validation_auc(movie, fitted_lr):
    train, val = movie["train"], movie["validation"]
    assert list(fitted_lr.val_auc_) == sorted(fitted_lr.c_grid)
    assert fitted_lr.c_ == max(fitted_lr.val_auc_, key=fitted_lr.val_auc_.get)
    # The kept weights are those of the chosen C, and each C's score is its own model's (cold fits agree).
    assert roc_auc_score(_labels(val), fitted_lr.predict(val)) == pytest.approx(fitted_lr.val_auc_[fitted_lr.c_])
    for c in (min(fitted_lr.c_grid), fitted_lr.c_, max(fitted_lr.c_grid)):
        cold = IdLogisticRegression(c_grid=[c]).fit(train, val)
        assert cold.val_auc_[c] == pytest.approx(fitted_lr.val_auc_[c], abs=2e-3)
    # A penalty so strong that every bias is ~0 ranks at chance: the grid must not pick it.
    pair = IdLogisticRegression(c_grid=[1e-7, 1.0]).fit(train, val)
    assert pair.val_auc_[1e-7] < pair.val_auc_[1.0] and pair.c_ == 1.0
    assert IdLogisticRegression(c_grid=[1.0, 1e-7]).fit(train, val).c_ == 1.0  # grid order does not matter


def test_lr_predicts_probabilities_that_beat_chance_and_the_base_rate(movie, fitted_lr):
    train, val, test = movie["train"], movie["validation"], movie["test"]
    p = fitted_lr.predict(test)
    assert p.shape == (len(test),) and p.dtype == np.float64
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    lr = compute_metrics("movie", _labels(test), p)
    base = compute_metrics("movie", _labels(test), BaseRate().fit(train, val).predict(test))
    assert lr.auc > 0.65, lr  # the synthetic clicks depend on user taste and item quality
    assert lr.logloss < base.logloss
    # Unseen ids get no bias: a row with both ids OOV scores the intercept.
    unseen = _with_ids(test.take(np.arange(4)), user=0, item=0)
    assert fitted_lr.predict(unseen) == pytest.approx(np.full(4, 1 / (1 + np.exp(-fitted_lr.intercept_))))


def test_lr_rejects_what_it_cannot_fit(movie, processed_dir, taobao_processed_dir):
    train, val = movie["train"], movie["validation"]
    with pytest.raises(ReferenceFitError, match="before fit"):
        IdLogisticRegression().predict(val)
    one_class = dataclasses.replace(val, label=torch.zeros_like(val.label))
    with pytest.raises(ReferenceFitError, match="needs both classes"):
        IdLogisticRegression().fit(train, one_class)
    with pytest.raises(ReferenceFitError, match="c_grid"):
        IdLogisticRegression(c_grid=[]).fit(train, val)
    no_ids = dataclasses.replace(train.schema, fields=tuple(
        f for f in train.schema.fields if f.kind is not FieldKind.CATEGORICAL_ID))
    with pytest.raises(ReferenceFitError, match="no categorical_id field"):
        id_fields(no_ids)
    ad = DomainSchema.load(f"{taobao_processed_dir}/ad")
    with pytest.raises(ReferenceFitError, match="another schema"):
        IdLogisticRegression(c_grid=[1.0]).fit(train, val).predict(load_split(taobao_processed_dir, ad, "test"))


def test_item_popularity_is_the_shrunk_training_ctr(movie):
    train, val, test = movie["train"], movie["validation"], movie["test"]
    pop = ItemPopularity().fit(train, val)
    assert pop.prior_ == min(pop.val_logloss_, key=pop.val_logloss_.get)
    assert len(set(pop.val_logloss_.values())) > 1  # the prior strength matters on this data
    y = _labels(train)
    p0 = y.mean()
    assert pop.global_rate_ == pytest.approx(p0)
    item = train.item_ids[0]
    mine = train.item_ids == item
    expected = (y[mine].sum() + pop.prior_ * p0) / (mine.sum() + pop.prior_)
    assert pop.predict(train.take(np.array([0])))[0] == pytest.approx(expected)
    unseen = dataclasses.replace(test.take(np.arange(2)), item_ids=np.array(["never-shown", "nor-this"], dtype=object))
    assert pop.predict(unseen) == pytest.approx([p0, p0])
    scores = pop.predict(test)
    assert ((scores > 0) & (scores < 1)).all()
    assert compute_metrics("movie", _labels(test), scores).auc > 0.55  # item quality is part of the clicks


def test_base_rate_predicts_the_training_rate(movie):
    train, val, test = movie["train"], movie["validation"], movie["test"]
    p = BaseRate().fit(train, val).predict(test)
    assert p == pytest.approx(np.full(len(test), _labels(train).mean()))
    with pytest.raises(ReferenceFitError, match="before fit"):
        BaseRate().predict(test)
