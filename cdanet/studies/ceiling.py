"""The learnable ceiling on simulated data: the oracle's click model with the users' tastes inferred.

The simulator's click logit of user ``u`` on item ``i`` (:mod:`cdanet.simulate.world`) is::

    logit = offset(u, i, t) + a_d * taste[u, topic(i)] + c_d * activity[u]

where ``offset`` holds every item-side, time and bias term. The oracle knows all of it. The ceiling
knows everything except the user: the offsets, topics and weights of every row and each user's
prior (``ground_truth/<dataset>_users.parquet``), and it infers ``taste[u]`` and ``activity[u]`` by
MAP from the user's rows that precede the test split, i.e. from what a model could have learned
about the user. It then scores the test rows with the inferred values. No model that has to learn
the items too can be expected to beat it; the gap between it and the oracle is the irreducible
uncertainty about the users.

Two variants: from the target domain's pre-test rows (processed train + validation), and from
those plus the source domain's (taste and activity are shared by the two domains of a dataset;
each domain has its own weights ``a_d``, ``c_d`` and offsets). Users without pre-test rows keep
their prior mean.

Activity is inferred jointly with the tastes (exact MAP, not absorbed into the topic coordinates):
a row touches one taste coordinate and the activity, so the Hessian of each user's negative log
posterior is an arrowhead matrix (diagonal over topics plus the activity row and column) and one
Newton step costs O(topics) per user; :func:`map_user_latents` runs it for all users at once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cdanet.config import DATASETS
from cdanet.studies.oracle import ground_truth_root, processed_rows

logger = logging.getLogger(__name__)

VARIANT_TARGET = "target"
VARIANT_BOTH = "target + source"
VARIANTS: tuple[str, ...] = (VARIANT_TARGET, VARIANT_BOTH)
_TRUTH_COLUMNS = ("topic", "offset", "taste_weight", "activity_weight")


def map_user_latents(
    user: np.ndarray,
    topic: np.ndarray,
    offset: np.ndarray,
    taste_weight: np.ndarray,
    activity_weight: np.ndarray,
    label: np.ndarray,
    prior_mean: np.ndarray,
    prior_sd: np.ndarray,
    activity_sd: float | np.ndarray = 1.0,
    *,
    max_iter: int = 100,
    tol: float = 1e-12,
) -> tuple[np.ndarray, np.ndarray]:
    """MAP of every user's taste and activity under the simulator's logistic click model.

    Rows (all ``[R]``): ``user`` in ``[0, U)``, ``topic`` in ``[0, K)``, ``offset``, the weights
    ``taste_weight`` (a) and ``activity_weight`` (c) of the row's domain, and the 0/1 ``label``.
    Priors: ``taste[u, k] ~ N(prior_mean[u, k], prior_sd[u, k]^2)`` (``[U, K]``) and
    ``activity[u] ~ N(0, activity_sd^2)`` (scalar or ``[U]``). Returns (taste ``[U, K]``, activity ``[U]``).

    Damped Newton on the negative log posterior, which is strictly convex: per user, the arrowhead
    system is solved through the Schur complement of its diagonal block, and the step is halved
    (per user) until the Armijo condition holds. Stops when every user's Newton decrement is below
    ``tol``; a user without rows stays at the prior mean.
    """
    prior_mean = np.asarray(prior_mean, dtype=np.float64)
    n_users, n_topics = prior_mean.shape
    user = np.asarray(user, dtype=np.int64)
    topic = np.asarray(topic, dtype=np.int64)
    offset, a, c, y = (np.asarray(v, dtype=np.float64) for v in (offset, taste_weight, activity_weight, label))
    if not (user.shape == topic.shape == offset.shape == a.shape == c.shape == y.shape) or user.ndim != 1:
        raise ValueError("map_user_latents: the row arrays must be 1-d and of one length")
    if len(user) and (user.min() < 0 or user.max() >= n_users or topic.min() < 0 or topic.max() >= n_topics):
        raise ValueError(f"map_user_latents: user/topic indices outside [0, {n_users}) x [0, {n_topics})")
    precision = 1.0 / np.broadcast_to(np.asarray(prior_sd, dtype=np.float64), prior_mean.shape) ** 2
    precision_act = 1.0 / np.broadcast_to(np.asarray(activity_sd, dtype=np.float64), (n_users,)) ** 2
    cell = user * n_topics + topic
    size = n_users * n_topics

    def per_cell(values: np.ndarray) -> np.ndarray:
        return np.bincount(cell, values, minlength=size).reshape(n_users, n_topics)

    def per_user(values: np.ndarray) -> np.ndarray:
        return np.bincount(user, values, minlength=n_users)

    def logits(taste: np.ndarray, activity: np.ndarray) -> np.ndarray:
        return offset + a * taste.ravel()[cell] + c * activity[user]

    def objective(taste: np.ndarray, activity: np.ndarray) -> np.ndarray:
        """Each user's negative log posterior (up to a constant), ``[U]``."""
        z = logits(taste, activity)
        nll = per_user(np.logaddexp(0.0, z) - y * z)
        return nll + 0.5 * (precision * (taste - prior_mean) ** 2).sum(axis=1) + 0.5 * precision_act * activity ** 2

    taste, activity = prior_mean.copy(), np.zeros(n_users)
    f = objective(taste, activity)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-logits(taste, activity)))
        r, w = p - y, p * (1.0 - p)
        g_t = per_cell(a * r) + precision * (taste - prior_mean)
        g_a = per_user(c * r) + precision_act * activity
        h = per_cell(a * a * w) + precision  # diagonal of the taste block
        b = per_cell(a * c * w)  # taste-activity coupling
        e = per_user(c * c * w) + precision_act
        schur = e - (b * b / h).sum(axis=1)  # > 0: the Hessian is positive definite
        d_a = (g_a - (b * g_t / h).sum(axis=1)) / schur
        d_t = (g_t - b * d_a[:, None]) / h
        decrement = (g_t * d_t).sum(axis=1) + g_a * d_a  # g' H^-1 g
        if decrement.max(initial=0.0) < tol:
            break
        step = np.ones(n_users)
        for _ in range(40):
            new_t, new_a = taste - step[:, None] * d_t, activity - step * d_a
            new_f = objective(new_t, new_a)
            bad = new_f > f - 1e-4 * step * decrement
            if not bad.any():
                break
            step[bad] *= 0.5
        taste, activity, f = new_t, new_a, new_f
    else:
        logger.warning("map_user_latents: not converged after %d Newton steps (max decrement %.3g)",
                       max_iter, float(decrement.max()))
    return taste, activity


@dataclass(frozen=True)
class CeilingScore:
    """The learnable ceiling of one target domain, one variant.

    ``n`` test rows were scored (of ``test_rows``); ``pretest_rows`` rows informed the tastes.
    """

    domain: str
    variant: str
    auc: float
    logloss: float
    n: int
    test_rows: int
    pretest_rows: int

    def describe(self) -> str:
        return (f"{self.domain}: learnable ceiling ({self.variant}) on {self.n} of {self.test_rows} test rows, "
                f"tastes inferred from {self.pretest_rows} pre-test rows")


def dataset_of(domain: str) -> tuple[str, str]:
    """(dataset, source domain) of target ``domain``."""
    for dataset, domains in DATASETS.items():
        if domain in domains:
            return dataset, next(d for d in domains if d != domain)
    raise ValueError(f"unknown domain {domain!r}; expected one of {[d for ds in DATASETS.values() for d in ds]}")


def _with_truth(rows: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (processed) joined to their ground truth; rows without one are dropped."""
    joined = rows.merge(truth, how="inner", left_on=["user_id_raw", "item_id_raw", "timestamp"],
                        right_on=["user", "item", "timestamp"])
    return joined[["user_id_raw", "label", *_TRUTH_COLUMNS]]


def _truth(root: str, domain: str) -> pd.DataFrame:
    from cdanet.simulate import load_ground_truth

    table = load_ground_truth(root, domain)
    missing = sorted({"user", "item", "timestamp", *_TRUTH_COLUMNS} - set(table.column_names))
    if missing:
        raise FileNotFoundError(f"ground truth of {domain!r} under {root} lacks columns {missing}: it was written "
                                "before the simulator recorded the parts of the logit; simulate again")
    truth = table.select(["user", "item", "timestamp", *_TRUTH_COLUMNS]).to_pandas()
    return truth.drop_duplicates(["user", "item", "timestamp"])


def learnable_ceiling(oracle_dir: str, processed_root: str, domain: str,
                      min_match: float = 0.99) -> dict[str, CeilingScore]:
    """``{variant: CeilingScore}`` of target ``domain``; empty when the test rows do not join the ground truth.

    Raises ``FileNotFoundError`` when the simulation lacks the users' priors or the logit parts.
    """
    from cdanet.evaluation import compute_metrics
    from cdanet.simulate import load_user_prior

    dataset, source = dataset_of(domain)
    root = ground_truth_root(oracle_dir)
    users = load_user_prior(root, dataset).to_pandas()
    target_truth = _truth(root, domain)
    test_rows = processed_rows(processed_root, domain, "test")
    test = _with_truth(test_rows, target_truth)
    if not len(test_rows) or len(test) / len(test_rows) < min_match:
        logger.warning("%s: only %d of %d test rows match the ground truth; no learnable ceiling",
                       domain, len(test), len(test_rows))
        return {}
    labels = test["label"].to_numpy()
    if labels.min() == labels.max():
        logger.warning("%s: the test rows hold one class; no learnable ceiling", domain)
        return {}
    pretest = {domain: pd.concat([_with_truth(processed_rows(processed_root, domain, s), target_truth)
                                  for s in ("train", "validation")], ignore_index=True)}
    if os.path.isdir(os.path.join(processed_root, source)):
        source_truth = _truth(root, source)
        pretest[source] = pd.concat([_with_truth(processed_rows(processed_root, source, s), source_truth)
                                     for s in ("train", "validation")], ignore_index=True)

    index = pd.Index(users["user"])
    prior_mean = np.stack(users["prior_mean"].to_numpy())
    prior_sd = np.stack(users["prior_sd"].to_numpy())
    activity_sd = users["activity_prior_sd"].to_numpy(dtype=np.float64)
    test_user = index.get_indexer(test["user_id_raw"])
    if (test_user < 0).any():
        raise ValueError(f"{domain}: {int((test_user < 0).sum())} test users are missing from the {dataset} user priors")
    out: dict[str, CeilingScore] = {}
    for variant, domains in ((VARIANT_TARGET, [domain]), (VARIANT_BOTH, [domain, source])):
        if any(d not in pretest for d in domains):
            continue
        rows = pd.concat([pretest[d] for d in domains], ignore_index=True)
        row_user = index.get_indexer(rows["user_id_raw"])
        rows, row_user = rows[row_user >= 0], row_user[row_user >= 0]
        taste, activity = map_user_latents(
            row_user, rows["topic"].to_numpy(), rows["offset"].to_numpy(), rows["taste_weight"].to_numpy(),
            rows["activity_weight"].to_numpy(), rows["label"].to_numpy(), prior_mean, prior_sd, activity_sd)
        z = (test["offset"].to_numpy() + test["taste_weight"].to_numpy() * taste[test_user, test["topic"].to_numpy()]
             + test["activity_weight"].to_numpy() * activity[test_user])
        metrics = compute_metrics(domain, labels, 1.0 / (1.0 + np.exp(-z)))
        out[variant] = CeilingScore(domain, variant, metrics.auc, metrics.logloss, len(test), len(test_rows), len(rows))
    return out


def learnable_ceilings(oracle_dir: str | None, processed_root: str,
                       domains: list[str]) -> dict[str, dict[str, CeilingScore]]:
    """``{domain: {variant: CeilingScore}}``; empty without an ``oracle_dir``.

    A simulation written before the simulator recorded the users' priors has no ceiling: it is
    left out with a warning rather than failing a study whose runs are done.
    """
    if not oracle_dir:
        return {}
    out: dict[str, dict[str, CeilingScore]] = {}
    for d in domains:
        try:
            scores = learnable_ceiling(oracle_dir, processed_root, d)
        except FileNotFoundError as e:
            logger.warning("no learnable ceiling for %s: %s", d, e)
            continue
        if scores:
            out[d] = scores
    return out
