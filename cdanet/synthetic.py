"""Synthetic *processed* data with a planted, learnable cross-domain signal.

Writes exactly what preprocessing writes (``schema.json``, ``stats.json`` and chronological
train/validation/test parquet shards per domain, see :mod:`cdanet.contract`), so every module
downstream of preprocessing can be tested and benchmarked without the raw datasets.

Generative model (shared by both domains, which is what makes cross-domain transfer pay off):

* ``T`` latent topics. Every user ``u`` has a taste vector ``theta_u ~ N(0, I_T)``, the SAME in both
  domains (users are shared across domains, as in the paper's Amazon movie/book data).
* Every item ``i`` of a domain has one topic ``t_i``, a quality ``q_i ~ N(0, (0.7 s)^2)`` and item-side
  fields derived from its topic (genre / category / director / writer / brand / a "GloVe" title
  vector near the topic's centroid), so the topic is visible through the domain's OWN fields.
* A row (u, i, timestamp) is clicked with probability
  ``sigmoid(taste_scale * theta_u[t_i] + b_{t_i} + q_i - 0.8)`` with topic biases ``b_t ~ N(0, s^2)``
  and ``s = item_scale``.

The user-taste term is only identifiable through the user id, so a model that pools evidence
about a user from both domains (CDAnet, the joint baselines) can beat a single-domain model on the
sparse target domain. The domains have DIFFERENT field sets (heterogeneous inputs, paper Sec. 3).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cdanet.config import DATASETS
from cdanet.contract import STATS_FILENAME, DomainSchema, FieldKind, FieldSpec, shard_name

#: Default row counts: the target domain is the sparse one, as in the paper's Table 1.
DEFAULT_ROWS: dict[str, dict[str, int]] = {
    "amazon": {"movie": 3000, "book": 6000},
    "taobao": {"ad": 3000, "rec": 6000},
}

_SPLIT_FRACTIONS = (("train", 0.8), ("validation", 0.1), ("test", 0.1))
_T0 = 1_356_998_400  # 2013-01-01, the era of the Amazon 2014 dump
_ONE_YEAR = 365 * 24 * 3600


@dataclass(frozen=True)
class _DomainSpec:
    """How one synthetic domain derives its fields from topics (internal)."""

    item_prefix: str
    topic_field: str  # categorical field carrying the (noisy) item topic, e.g. genre
    topic_values_per_topic: int
    creator_field: str | None  # per-item categorical drawn from a topic-specific pool (director...)
    creators_per_topic: int
    multi_hot_field: str | None  # list of topic-related categories
    multi_hot_max_len: int
    title_field: str | None
    user_fields: tuple[str, ...] = ()  # user-side categoricals (Taobao ad: age level, gender)


_SPECS: dict[str, dict[str, _DomainSpec]] = {
    "amazon": {
        "movie": _DomainSpec("M", "genre", 2, "director", 6, None, 0, "title"),
        "book": _DomainSpec("B", "writer", 8, None, 0, "category", 4, "title"),
    },
    "taobao": {
        "ad": _DomainSpec("A", "cate_id", 3, "brand", 5, None, 0, None, ("age_level", "gender")),
        "rec": _DomainSpec("R", "cate_id", 3, None, 0, "category", 3, None),
    },
}


def write_synthetic_processed(
    root: str,
    dataset: str = "amazon",
    n_users: int = 100,
    rows_per_domain: Mapping[str, int] | None = None,
    seed: int = 0,
    *,
    n_items: Mapping[str, int] | int | None = None,
    n_topics: int = 4,
    title_dim: int = 8,
    taste_scale: float = 2.0,
    item_scale: float = 1.5,
    user_overlap: float = 0.8,
    train_shards: int = 2,
) -> dict[str, DomainSchema]:
    """Write a processed two-domain dataset under ``root``; return the schema of each domain.

    Args:
        root: the processed root; ``<root>/<domain>/`` is created for both domains of ``dataset``.
        dataset: ``"amazon"`` (movie: user_id, item_id, genre, director, title; book: user_id,
            item_id, category multi-hot, writer, title) or ``"taobao"`` (ad: user_id, item_id,
            cate_id, brand, age_level, gender; rec: user_id, item_id, cate_id, category multi-hot).
        n_users: users in the shared population; each domain sees a random ``user_overlap``
            fraction of them.
        rows_per_domain: interactions per domain (all splits); defaults to :data:`DEFAULT_ROWS`.
        seed: everything is a deterministic function of the arguments.
        n_items: items per domain (one int for both, or per domain); default ``rows // 20``.
        n_topics: latent topics ``T`` shared by the domains.
        title_dim: length of the dense title vector (50 for GloVe-6B-50d sizes).
        taste_scale: weight of the user-taste term in the click logit (the cross-domain signal).
        item_scale: spread of the item-side terms (topic bias, item quality) in the click logit.
        train_shards: the train split is written as this many shards with rows scattered across
            them in random order (as Beam's sharding does), so readers must sort.

    Splits are chronological 8:1:1 (paper Sec. 5.1.3). Categorical index 0 is OOV and unused here.
    """
    if dataset not in _SPECS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(_SPECS)}")
    rows = dict(DEFAULT_ROWS[dataset] if rows_per_domain is None else rows_per_domain)
    missing = [d for d in DATASETS[dataset] if d not in rows]
    if missing:
        raise ValueError(f"rows_per_domain lacks domains {missing} of dataset {dataset!r}")
    if n_users < 2 or n_topics < 2 or title_dim < 1 or train_shards < 1 or not 0 < user_overlap <= 1:
        raise ValueError("need n_users >= 2, n_topics >= 2, title_dim >= 1, train_shards >= 1, 0 < user_overlap <= 1")

    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((n_users, n_topics)).astype(np.float32)
    user_raw = np.array([f"U{u:07d}" for u in range(n_users)], dtype=object)
    schemas: dict[str, DomainSchema] = {}
    for d_index, domain in enumerate(DATASETS[dataset]):
        n_rows = int(rows[domain])
        if n_rows < 20:
            raise ValueError(f"rows_per_domain[{domain!r}] = {n_rows}: need at least 20 rows for 8:1:1 splits")
        items = n_items if isinstance(n_items, int) else (n_items or {}).get(domain, max(10, n_rows // 20))
        domain_rng = np.random.default_rng([seed, d_index])
        schemas[domain] = _write_domain(
            os.path.join(root, domain), dataset, domain, _SPECS[dataset][domain], domain_rng,
            theta=theta, user_raw=user_raw, n_rows=n_rows, n_items=int(items), title_dim=title_dim,
            taste_scale=taste_scale, item_scale=item_scale, user_overlap=user_overlap, train_shards=train_shards,
        )
    return schemas


def _write_domain(
    domain_dir: str,
    dataset: str,
    domain: str,
    spec: _DomainSpec,
    rng: np.random.Generator,
    *,
    theta: np.ndarray,
    user_raw: np.ndarray,
    n_rows: int,
    n_items: int,
    title_dim: int,
    taste_scale: float,
    item_scale: float,
    user_overlap: float,
    train_shards: int,
) -> DomainSchema:
    n_users, n_topics = theta.shape
    domain_users = np.sort(rng.choice(n_users, size=max(2, int(round(user_overlap * n_users))), replace=False))
    item_topic = rng.integers(0, n_topics, n_items)
    item_quality = rng.normal(0.0, 0.7 * item_scale, n_items).astype(np.float32)
    topic_bias = rng.normal(0.0, item_scale, n_topics).astype(np.float32)

    row_user_local = rng.integers(0, len(domain_users), n_rows)
    row_user = domain_users[row_user_local]
    row_item = rng.integers(0, n_items, n_rows)
    timestamps = np.sort(rng.integers(_T0, _T0 + _ONE_YEAR, n_rows)).astype(np.int64)
    t = item_topic[row_item]
    logit = taste_scale * theta[row_user, t] + topic_bias[t] + item_quality[row_item] - 0.8
    label = (rng.random(n_rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)

    # Vocabulary indices start at 1 (0 is OOV); the user vocabulary is the domain's own user set.
    fields: list[FieldSpec] = [
        FieldSpec("user_id", FieldKind.CATEGORICAL_ID, vocab_size=len(domain_users) + 1),
        FieldSpec("item_id", FieldKind.CATEGORICAL_ID, vocab_size=n_items + 1),
    ]
    columns: dict[str, pa.Array] = {
        "user_id": pa.array(row_user_local + 1, pa.int64()),
        "item_id": pa.array(row_item + 1, pa.int64()),
    }
    # The topic field is right 85% of the time, so models must combine it with other evidence.
    noisy_topic = np.where(rng.random(n_items) < 0.85, item_topic, rng.integers(0, n_topics, n_items))
    per = spec.topic_values_per_topic
    item_topic_value = 1 + noisy_topic * per + rng.integers(0, per, n_items)
    fields.append(FieldSpec(spec.topic_field, FieldKind.CATEGORICAL, vocab_size=n_topics * per + 1))
    columns[spec.topic_field] = pa.array(item_topic_value[row_item], pa.int64())
    if spec.creator_field:
        per = spec.creators_per_topic
        item_creator = 1 + item_topic * per + rng.integers(0, per, n_items)
        fields.append(FieldSpec(spec.creator_field, FieldKind.CATEGORICAL, vocab_size=n_topics * per + 1))
        columns[spec.creator_field] = pa.array(item_creator[row_item], pa.int64())
    if spec.multi_hot_field:
        vocab, max_len = 2 * n_topics + 1, spec.multi_hot_max_len
        # One topic category plus 0..max_len-1 random ones; lengths vary so padding is exercised.
        lengths = rng.integers(1, max_len + 1, n_items)
        cats = 1 + rng.integers(0, vocab - 1, (n_items, max_len))
        cats[:, 0] = 1 + 2 * item_topic + rng.integers(0, 2, n_items)
        row_lengths = lengths[row_item]
        offsets = np.concatenate([[0], np.cumsum(row_lengths)]).astype(np.int32)
        values = cats[row_item][np.arange(max_len) < row_lengths[:, None]].astype(np.int64)  # row-major
        fields.append(FieldSpec(spec.multi_hot_field, FieldKind.MULTI_HOT, vocab_size=vocab, max_len=max_len))
        columns[spec.multi_hot_field] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    if spec.title_field:
        centroids = rng.standard_normal((n_topics, title_dim)).astype(np.float32)
        item_title = centroids[item_topic] + 0.5 * rng.standard_normal((n_items, title_dim)).astype(np.float32)
        flat = item_title[row_item].reshape(-1)
        offsets = np.arange(0, n_rows * title_dim + 1, title_dim, dtype=np.int32)
        fields.append(FieldSpec(spec.title_field, FieldKind.DENSE_VECTOR, dim=title_dim))
        columns[spec.title_field] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float32()))
    for name in spec.user_fields:
        if name == "age_level":  # tied to the user's favourite topic: a weak user-side signal
            user_value = 1 + np.argmax(theta, axis=1) % 6
            vocab = 7
        else:
            user_value = 1 + rng.integers(0, 2, n_users)
            vocab = 3
        fields.append(FieldSpec(name, FieldKind.CATEGORICAL, vocab_size=vocab))
        columns[name] = pa.array(user_value[row_user].astype(np.int64), pa.int64())

    schema = DomainSchema(
        dataset=dataset, domain=domain, fields=tuple(fields),
        metadata={"source": "cdanet.synthetic", "n_topics": int(n_topics)},
    )
    columns["label"] = pa.array(label, pa.int64())
    columns["timestamp"] = pa.array(timestamps, pa.int64())
    columns["user_id_raw"] = pa.array(user_raw[row_user], pa.string())
    columns["item_id_raw"] = pa.array([f"{spec.item_prefix}{i:07d}" for i in row_item], pa.string())
    table = pa.Table.from_pydict(columns, schema=schema.arrow_schema())

    os.makedirs(domain_dir, exist_ok=True)
    schema.save(domain_dir)
    stats: dict[str, dict[str, float]] = {"rows": {}, "positive_rate": {}}
    start = 0
    for i, (split, frac) in enumerate(_SPLIT_FRACTIONS):
        stop = n_rows if i == len(_SPLIT_FRACTIONS) - 1 else start + int(round(frac * n_rows))
        part = table.slice(start, stop - start)
        shards = train_shards if split == "train" else 1
        # Scatter rows over shards in random order, as a distributed writer would.
        assignment = rng.integers(0, shards, part.num_rows)
        order = rng.permutation(part.num_rows)
        for s in range(shards):
            idx = order[assignment[order] == s]
            pq.write_table(part.take(pa.array(idx)), os.path.join(domain_dir, shard_name(split, s, shards)))
        stats["rows"][split] = part.num_rows
        stats["positive_rate"][split] = float(np.mean(label[start:stop]))
        start = stop
    with open(os.path.join(domain_dir, STATS_FILENAME), "w") as fh:
        json.dump(stats, fh, indent=2, sort_keys=True)
    return schema
