"""The learnable ceiling: the MAP solver on synthetic rows, and the ceiling on simulated + preprocessed data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

from cdanet.contract import load_schemas
from cdanet.data import load_split
from cdanet.evaluation import compute_metrics
from cdanet.references import IdLogisticRegression, ItemPopularity
from cdanet.simulate import load_ground_truth, load_user_prior, simulate
from cdanet.studies.ceiling import VARIANT_BOTH, VARIANT_TARGET, learnable_ceiling, map_user_latents
from cdanet.studies.oracle import oracle_auc


def _rows(rng: np.random.Generator, taste: np.ndarray, activity: np.ndarray, per_user: np.ndarray,
          a: float = 1.3, c: float = 0.15) -> dict[str, np.ndarray]:
    n_topics = taste.shape[1]
    user = np.repeat(np.arange(len(per_user)), per_user)
    topic = rng.integers(0, n_topics, len(user))
    offset = rng.normal(-1.0, 0.7, len(user))
    logit = offset + a * taste[user, topic] + c * activity[user]
    label = (rng.random(len(user)) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return {"user": user, "topic": topic, "offset": offset, "taste_weight": np.full(len(user), a),
            "activity_weight": np.full(len(user), c), "label": label}


def test_map_recovers_a_known_taste_from_many_rows():
    rng = np.random.default_rng(0)
    n_users, n_topics = 40, 3
    taste = rng.normal(0.3, 1.0, (n_users, n_topics))
    activity = rng.normal(0.0, 1.0, n_users)
    rows = _rows(rng, taste, activity, np.full(n_users, 3000))
    mean = np.full((n_users, n_topics), 0.3)
    est_taste, est_activity = map_user_latents(**rows, prior_mean=mean, prior_sd=np.ones((n_users, n_topics)))
    # ~1000 rows per (user, topic) pin down the user's logit term of each topic to ~0.07 (posterior sd).
    # Activity and an equal shift of all tastes are told apart only by their priors, so the split
    # between them is loose; their sum per topic is what the rows determine.
    err = np.abs(1.3 * est_taste + 0.15 * est_activity[:, None] - (1.3 * taste + 0.15 * activity[:, None]))
    assert err.mean() < 0.08 and err.max() < 0.3, (err.mean(), err.max())
    assert np.corrcoef(est_taste.ravel(), taste.ravel())[0, 1] > 0.95
    # Few rows: the estimate is pulled to the prior mean.
    few = _rows(rng, taste, activity, np.full(n_users, 3))
    est_few, _ = map_user_latents(**few, prior_mean=mean, prior_sd=np.ones((n_users, n_topics)))
    assert np.abs(est_few - mean).mean() < np.abs(taste - mean).mean() / 2


def test_map_is_the_exact_joint_optimum():
    """The arrowhead Newton solve agrees with a generic optimiser on the same posterior."""
    rng = np.random.default_rng(1)
    n_users, n_topics = 6, 4
    taste = rng.normal(0.0, 1.5, (n_users, n_topics))
    activity = rng.normal(0.0, 2.0, n_users)
    rows = _rows(rng, taste, activity, np.array([0, 1, 5, 30, 200, 60]), c=0.8)
    mean = rng.normal(0.0, 0.5, (n_users, n_topics))
    sd = rng.uniform(0.5, 1.5, (n_users, n_topics))
    act_sd = rng.uniform(0.5, 2.0, n_users)
    est_taste, est_activity = map_user_latents(**rows, prior_mean=mean, prior_sd=sd, activity_sd=act_sd)

    def neg_log_posterior(x: np.ndarray) -> float:
        t, act = x[: n_users * n_topics].reshape(n_users, n_topics), x[n_users * n_topics:]
        z = rows["offset"] + rows["taste_weight"] * t[rows["user"], rows["topic"]] + rows["activity_weight"] * act[rows["user"]]
        return float((np.logaddexp(0, z) - rows["label"] * z).sum() + 0.5 * (((t - mean) / sd) ** 2).sum()
                     + 0.5 * ((act / act_sd) ** 2).sum())

    ref = minimize(neg_log_posterior, np.r_[mean.ravel(), np.zeros(n_users)], method="BFGS", options={"gtol": 1e-9})
    np.testing.assert_allclose(est_taste.ravel(), ref.x[: n_users * n_topics], atol=1e-4)
    np.testing.assert_allclose(est_activity, ref.x[n_users * n_topics:], atol=1e-4)
    assert neg_log_posterior(np.r_[est_taste.ravel(), est_activity]) <= ref.fun + 1e-9
    # The user without rows keeps the prior.
    np.testing.assert_array_equal(est_taste[0], mean[0])
    assert est_activity[0] == 0.0


def test_map_rejects_rows_outside_the_prior():
    with pytest.raises(ValueError, match="outside"):
        map_user_latents(np.array([2]), np.array([0]), np.zeros(1), np.ones(1), np.ones(1), np.ones(1),
                         np.zeros((2, 3)), np.ones((2, 3)))


# ---- on the simulator's data, preprocessed ----------------------------------------------------------


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(simulator output, processed root) of the tiny Amazon simulation, through the real preprocessing."""
    from cdanet.preprocessing import run_preprocessing

    root = tmp_path_factory.mktemp("ceiling")
    raw, processed = str(root / "raw"), str(root / "processed")
    simulate(raw, dataset="amazon", scale="tiny", seed=0)
    run_preprocessing("amazon", os.path.join(raw, "amazon"), processed,
                      glove_path=os.path.join(raw, "glove", "glove.sim.50d.txt"), beam_args=["--runner=FnApiRunner"])
    return raw, processed


@pytest.mark.slow
def test_ceiling_lies_between_the_id_references_and_the_oracle(simulated):
    raw, processed = simulated
    ceiling = learnable_ceiling(raw, processed, "movie")
    oracle = oracle_auc(raw, processed, "movie")
    schema = load_schemas(processed, ["movie"])["movie"]
    train, val, test = (load_split(processed, schema, s) for s in ("train", "validation", "test"))
    labels = test.label.numpy()
    lr = compute_metrics("movie", labels, IdLogisticRegression().fit(train, val).predict(test))
    pop = compute_metrics("movie", labels, ItemPopularity().fit(train, val).predict(test))
    assert set(ceiling) == {VARIANT_TARGET, VARIANT_BOTH}
    target, both = ceiling[VARIANT_TARGET], ceiling[VARIANT_BOTH]
    assert target.n == both.n == target.test_rows == len(test) == oracle.n
    assert both.pretest_rows > 2 * target.pretest_rows == 2 * (len(train) + len(val))
    assert lr.auc > 0.55  # ids alone carry signal
    assert max(lr.auc, pop.auc) + 0.1 < target.auc < oracle.auc
    assert both.auc < oracle.auc
    assert both.logloss < lr.logloss and target.logloss < lr.logloss


@pytest.mark.slow
def test_source_rows_sharpen_the_inferred_tastes(simulated):
    """On the ground-truth rows themselves: adding the source domain brings the MAP tastes closer to the truth."""
    raw, _ = simulated
    users = load_user_prior(raw, "amazon").to_pandas()
    index = pd.Index(users["user"])
    mean, sd = np.stack(users["prior_mean"].to_numpy()), np.stack(users["prior_sd"].to_numpy())
    true = np.stack(users["taste"].to_numpy())

    def rows(domain: str) -> dict[str, np.ndarray]:
        gt = load_ground_truth(raw, domain).to_pandas()
        return {"user": index.get_indexer(gt["user"]), **{k: gt[k].to_numpy() for k in (
            "topic", "offset", "taste_weight", "activity_weight", "label")}}

    movie, book = rows("movie"), rows("book")
    both = {k: np.concatenate([movie[k], book[k]]) for k in movie}
    movie_users = np.unique(movie["user"])
    errors = {}
    for name, r in (("movie", movie), ("both", both)):
        taste, _ = map_user_latents(**r, prior_mean=mean, prior_sd=sd)
        errors[name] = float(np.sqrt(((taste - true)[movie_users] ** 2).mean()))
    prior_error = float(np.sqrt(((mean - true)[movie_users] ** 2).mean()))
    assert errors["both"] < errors["movie"] < prior_error, (errors, prior_error)


def test_ceiling_needs_the_user_priors(tmp_path: Path, processed_dir: str):
    simulate(str(tmp_path), dataset="amazon", scale="tiny", seed=0)
    os.remove(os.path.join(tmp_path, "ground_truth", "amazon_users.parquet"))
    with pytest.raises(FileNotFoundError, match="simulate again"):
        learnable_ceiling(str(tmp_path), processed_dir, "movie")
