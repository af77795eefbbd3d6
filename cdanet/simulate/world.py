"""The latent world behind the raw files: users' tastes, item topics, exposures and true clicks.

The ground truth of one interaction of user ``u`` with item ``i`` at normalised time ``tau``::

    logit = b_d + a * taste[u, topic(i)] + effect(i) + c * activity(u)
            + drift * (tau - 1/2) + trend[topic(i)] * (tau - 1/2) + extra_d(u, i)
    p_click = sigmoid(logit),    label ~ Bernoulli(p_click)

``b_d`` is calibrated so that the mean of ``p_click`` over the domain equals its target positive
rate. ``taste`` is shared by a user's rows in both domains of a dataset, which is what makes
cross-domain transfer possible; ``effect(i)`` grows with the item's exposure popularity;
``extra_d`` holds domain-specific, noise-free terms (e.g. Taobao's ad position and price level).

Exposure is not uniform either: a user picks a topic from a softmax over their taste (with some
uniform exploration) and then an item of that topic by Zipf popularity, so per-user and per-item
counts are heavy-tailed and k-core filtering removes a real minority of rows.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

#: Rows per vectorised chunk; bounds the [rows, topics] temporaries to a few hundred MB at paper scale.
_CHUNK = 1 << 21


def child_rng(seed: int, *names: str) -> np.random.Generator:
    """An independent generator per named stream, so one dataset's files never depend on another's."""
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -35.0, 35.0)))


@dataclass(frozen=True)
class ClickModel:
    """Coefficients of the ground-truth logit (see the module docstring)."""

    target_rate: float  # mean p_click of the domain
    taste_weight: float = 1.3  # a
    activity_weight: float = 0.15  # c
    popularity_weight: float = 0.35  # effect(i) per standard deviation of log exposure weight
    quality_sd: float = 0.35  # item-specific part of effect(i)
    drift: float = 0.3
    trend_sd: float = 0.25


@dataclass(frozen=True)
class ExposureModel:
    """How users pick items: counts per user, topic choice and time spread."""

    activity_sigma: float = 1.3  # log-normal spread of per-user row counts (heavy tail)
    select_temperature: float = 0.9  # softmax(temperature * taste) picks the topic of a row
    explore: float = 0.3  # probability of a uniformly random topic instead
    zipf_exponent: float = 1.0  # item popularity within a topic: weight ~ rank ** -exponent
    time_spread: float = 0.18  # sd of a row's normalised time around its user's centre


@dataclass
class Population:
    """The users of one dataset family (both domains), indexed 0..n-1.

    ``taste`` [n, T], ``activity`` [n] (standard normal), ``centre`` [n] (normalised time of the
    user's activity, skewed late like real review volume). How ``taste`` was drawn (its prior):
    ``taste[u] ~ N(base_mean + group_taste[u], taste_sd^2 I)`` with ``base_mean`` [T] shared by all
    users and ``group_taste`` [n, T] the demographic prototype of the user's group (None: no groups).
    """

    taste: np.ndarray
    activity: np.ndarray
    centre: np.ndarray
    base_mean: np.ndarray
    taste_sd: float = 1.0
    group_taste: np.ndarray | None = None

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, n_topics: int,
             group_taste: np.ndarray | None = None) -> Population:
        """``group_taste`` [n, T] adds a demographic prototype (Taobao profiles) to the taste."""
        topic_mean = rng.normal(0.0, 0.4, n_topics)
        taste = rng.normal(0.0, 1.0, (n, n_topics)) + topic_mean
        scale = 1.0
        if group_taste is not None:
            scale = 0.75
            taste = scale * taste + group_taste
        return cls(taste=taste, activity=rng.normal(0.0, 1.0, n), centre=rng.power(1.6, n),
                   base_mean=scale * topic_mean, taste_sd=scale, group_taste=group_taste)

    def taste_prior(self, group_known: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean [n, T], sd [n, T]) of each user's taste before any of their rows is seen.

        ``group_known`` [n] bool says whose demographic group the data reveal (Taobao: users with a
        profile row); the others get the Gaussian with the moments of the population's mixture of
        group prototypes. Every user's activity has the prior N(0, 1).
        """
        n, n_topics = self.taste.shape
        mean = np.broadcast_to(self.base_mean, (n, n_topics)).copy()
        sd = np.full((n, n_topics), self.taste_sd)
        if self.group_taste is not None:
            known = np.ones(n, dtype=bool) if group_known is None else np.asarray(group_known, dtype=bool)
            mean[known] += self.group_taste[known]
            mean[~known] += self.group_taste.mean(axis=0)
            sd[~known] = np.sqrt(self.taste_sd ** 2 + self.group_taste.var(axis=0))
        return mean, sd


def split_users(n_target: int, n_source: int, n_shared: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Population indices of the target and source domain users; the first ``n_shared`` are in both.

    Returns (target [n_target], source [n_source], population size).
    """
    target = np.arange(n_target, dtype=np.int64)
    source = np.concatenate([np.arange(n_shared), np.arange(n_target, n_target + n_source - n_shared)])
    return target, source.astype(np.int64), n_target + n_source - n_shared


@dataclass
class Catalog:
    """The items of one domain: ``topic`` [I] int64, exposure ``weight`` [I], logit ``effect`` [I]."""

    topic: np.ndarray
    weight: np.ndarray
    effect: np.ndarray

    def __len__(self) -> int:
        return int(self.topic.shape[0])

    @classmethod
    def draw(cls, rng: np.random.Generator, n_items: int, n_topics: int, exposure: ExposureModel,
             click: ClickModel) -> Catalog:
        # Every topic gets items (balanced), so exposure never picks a topic without items.
        topic = rng.permutation(np.arange(n_items) % n_topics).astype(np.int64)
        rank = np.empty(n_items, dtype=np.float64)
        for k in range(n_topics):
            members = np.flatnonzero(topic == k)
            rank[members] = rng.permutation(len(members)) + 1.0
        weight = rank ** -exposure.zipf_exponent
        log_w = np.log(weight)
        z = (log_w - log_w.mean()) / (log_w.std() + 1e-12)
        effect = click.popularity_weight * z + rng.normal(0.0, click.quality_sd, n_items)
        return cls(topic=topic, weight=weight, effect=effect)


def sample_in_groups(rng: np.random.Generator, row_group: np.ndarray, member_group: np.ndarray,
                     member_weight: np.ndarray) -> np.ndarray:
    """For each row, a member of the row's group drawn proportionally to ``member_weight``.

    ``row_group`` [N] and ``member_group`` [M] are int group ids in ``[0, G)``; every group present
    in ``row_group`` must have members. Fully vectorised: the per-group CDFs are laid end to end at
    offsets 0, 1, 2, ... so one ``searchsorted`` serves all groups. Returns member indices [N].
    """
    order = np.argsort(member_group, kind="stable")
    g_sorted = member_group[order]
    w_sorted = member_weight[order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
    totals = np.add.reduceat(w_sorted, starts)
    csum = np.cumsum(w_sorted)
    before = np.repeat(np.r_[0.0, csum[starts[1:] - 1]], np.diff(np.r_[starts, len(g_sorted)]))
    within = (csum - before) / np.repeat(totals, np.diff(np.r_[starts, len(g_sorted)]))
    ends = np.r_[starts[1:], len(g_sorted)] - 1
    within[ends] = 1.0  # exact 1.0 at each group's end, so rounding never spills into the next group
    cdf = g_sorted + within
    u = rng.random(row_group.shape[0]) * (1.0 - 1e-9)
    idx = np.searchsorted(cdf, row_group + u, side="right")
    return order[np.minimum(idx, len(order) - 1)]


@dataclass
class Interactions:
    """Rows of one domain. ``user``: population index, ``item``: catalog index, ``tau``: normalised
    time in [0, 1), ``logit``: ground-truth logit before the calibrated bias (all shape [N])."""

    user: np.ndarray
    item: np.ndarray
    tau: np.ndarray
    logit: np.ndarray

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def take(self, index: np.ndarray) -> Interactions:
        return Interactions(self.user[index], self.item[index], self.tau[index], self.logit[index])


def _pick_items(rng: np.random.Generator, row_user: np.ndarray, population: Population, catalog: Catalog,
                exposure: ExposureModel) -> np.ndarray:
    """One item per row: a topic from softmax(temperature * taste) (or uniform, with probability
    ``explore``) via the Gumbel-max trick, then an item of that topic by Zipf popularity."""
    n_topics = population.taste.shape[1]
    topic = np.empty(row_user.shape[0], dtype=np.int64)
    for s in range(0, len(row_user), _CHUNK):
        u = row_user[s:s + _CHUNK]
        scores = exposure.select_temperature * population.taste[u] + rng.gumbel(size=(len(u), n_topics))
        t = scores.argmax(axis=1)
        explore = rng.random(len(u)) < exposure.explore
        t[explore] = rng.integers(0, n_topics, int(explore.sum()))
        topic[s:s + _CHUNK] = t
    return sample_in_groups(rng, topic, catalog.topic, catalog.weight)


def draw_exposures(rng: np.random.Generator, users: np.ndarray, n_rows: int, population: Population,
                   catalog: Catalog, exposure: ExposureModel) -> Interactions:
    """About ``n_rows`` distinct (user, item) rows for ``users`` (population indices).

    Every user gets at least one row; the rest follow a log-normal activity (heavy tail). A user
    rates an item at most once: repeated pairs are redrawn, and the few that still repeat after
    that are dropped, so the result can be slightly smaller than ``n_rows``. ``logit`` is left at
    zero (see :func:`click_logits`).
    """
    n_users, n_items = len(users), len(catalog)
    w = np.exp(exposure.activity_sigma * population.activity[users] + 0.3 * rng.normal(size=n_users))
    cap = max(1, n_items // 2)
    wanted = 1 + rng.multinomial(n_rows - n_users, w / w.sum())
    # Rows above the per-user cap go to the other users by the same weights (water filling).
    for _ in range(20):
        excess = int(np.maximum(wanted - cap, 0).sum())
        open_ = wanted < cap
        if excess == 0 or not open_.any():
            break
        wanted = np.minimum(wanted, cap)
        wanted[open_] += rng.multinomial(excess, w[open_] / w[open_].sum())
    wanted = np.minimum(wanted, cap)

    # Heavy users exhaust their favourite topics' popular items, so repeated pairs are redrawn for a
    # few rounds to keep the per-user counts (and the heavy tail) close to what was drawn.
    row_user = np.empty(0, dtype=np.int64)
    item = np.empty(0, dtype=np.int64)
    deficit = wanted
    for round_ in range(6):
        new_user = np.repeat(users, deficit)
        if round_ < 3:
            new_item = _pick_items(rng, new_user, population, catalog, exposure)
        else:
            # What is still missing comes from the long tail (uniform over items), as heavy users' do.
            new_item = rng.integers(0, n_items, len(new_user))
        keys = np.concatenate([row_user, new_user]) * n_items + np.concatenate([item, new_item])
        _, first = np.unique(keys, return_index=True)
        keep = np.sort(first)
        row_user = np.concatenate([row_user, new_user])[keep]
        item = np.concatenate([item, new_item])[keep]
        have = np.bincount(row_user, minlength=int(users.max()) + 1)
        deficit = wanted - have[users]
        if deficit.sum() <= 0.002 * n_rows:
            break

    # Reflect at 0 and 1 instead of clipping, so no mass piles up on the first/last timestamp.
    tau = population.centre[row_user] + exposure.time_spread * rng.normal(size=len(row_user))
    tau = np.abs(tau)
    tau = 1.0 - np.abs(1.0 - tau)
    tau = np.clip(tau, 0.0, np.nextafter(1.0, 0.0))
    return Interactions(row_user, item, tau, np.zeros(len(row_user)))


def click_logits(rng: np.random.Generator, rows: Interactions, population: Population, catalog: Catalog,
                 click: ClickModel, extra: np.ndarray | None = None) -> Interactions:
    """``rows`` with ``logit`` filled in (everything but the calibrated bias; module docstring)."""
    n_topics = population.taste.shape[1]
    trend = rng.normal(0.0, click.trend_sd, n_topics)
    topic = catalog.topic[rows.item]
    centred_time = rows.tau - 0.5
    logit = (
        click.taste_weight * population.taste[rows.user, topic]
        + catalog.effect[rows.item]
        + click.activity_weight * population.activity[rows.user]
        + click.drift * centred_time
        + trend[topic] * centred_time
    )
    if extra is not None:
        logit = logit + extra
    return Interactions(rows.user, rows.item, rows.tau, logit)


def calibrate_bias(logit: np.ndarray, target_rate: float) -> float:
    """The bias ``b`` with ``mean(sigmoid(logit + b)) == target_rate`` (bisection).

    Solved on an evenly strided subsample of at most 200k rows: deterministic and fast at paper scale.
    """
    sample = logit[:: max(1, len(logit) // 200_000)]
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if sigmoid(sample + mid).mean() < target_rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def sample_labels(rng: np.random.Generator, logit: np.ndarray, target_rate: float,
                  bias: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(p_click float64 [N], label int64 [N]) with the bias calibrated to ``target_rate``.

    ``bias``: the result of ``calibrate_bias(logit, target_rate)`` when the caller already has it.
    """
    p = sigmoid(logit + (calibrate_bias(logit, target_rate) if bias is None else bias))
    label = (rng.random(len(p)) < p).astype(np.int64)
    return p, label


def known_offset(rows: Interactions, population: Population, catalog: Catalog, click: ClickModel,
                 bias: float) -> np.ndarray:
    """Everything in the ground-truth logit but the user's taste and activity terms, bias included.

    ``logit = offset + taste_weight * taste[u, topic(i)] + activity_weight * activity[u]`` per row
    (float64 [N]): what a learner that knew every item-side and time term would still have to infer.
    """
    topic = catalog.topic[rows.item]
    return (rows.logit + bias - click.taste_weight * population.taste[rows.user, topic]
            - click.activity_weight * population.activity[rows.user])
