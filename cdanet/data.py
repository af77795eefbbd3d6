"""Processed parquet -> contiguous tensors, and the two-domain batch sampler.

A split of one domain is read once (:func:`cdanet.contract.split_tables`), checked against its
:class:`~cdanet.contract.DomainSchema`, sorted deterministically and converted to contiguous tensors
(:class:`DomainData`). Training then only gathers rows by index (``index_select``), so no per-row
Python runs in the training loop. Vocabularies are :mod:`cdanet.contract.vocab`'s.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from cdanet.batch import Batch
from cdanet.config import EPOCH_BASES
from cdanet.contract import (
    USER_FIELD,
    DataError,
    DomainSchema,
    FieldKind,
    FieldSpec,
    load_vocabularies,
    non_null_column,
    split_tables,
    vocab_lookup,
)

__all__ = [
    "Batch",
    "DataError",
    "DomainData",
    "TwoDomainSampler",
    "load_split",
    "stable_seed",
    "table_to_batch",
    "user_history",
    "user_link",
]

logger = logging.getLogger(__name__)


@dataclass
class DomainData:
    """One split of one domain as contiguous tensors.

    ``features[name]``: categorical int64 ``[N]``; multi_hot int64 ``[N, max_len]`` (0-padded);
    dense_vector float32 ``[N, dim]``. ``label`` float32 ``[N]``. Rows are sorted by
    (timestamp, raw user id, raw item id, label). ``user_ids``/``item_ids`` (numpy str objects) and
    ``timestamps`` (numpy int64) stay on the host for auditing and for joining predictions back.
    ``truncated`` counts, per multi-hot field, the rows whose list was longer than ``max_len`` and
    was truncated on load (kept, not dropped).
    """

    schema: DomainSchema
    split: str
    features: dict[str, torch.Tensor]
    label: torch.Tensor
    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    sources: tuple[str, ...] = ()
    truncated: dict[str, int] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        return self.schema.domain

    @property
    def device(self) -> torch.device:
        return self.label.device

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def batch(self, index: torch.Tensor) -> Batch:
        """Gather rows ``index`` (int64 ``[B]``, on this data's device) into a :class:`Batch`."""
        return Batch(
            {name: t.index_select(0, index) for name, t in self.features.items()},
            self.label.index_select(0, index),
        )

    def to(self, device: torch.device | str) -> DomainData:
        """A copy with the tensors on ``device`` (host-side audit arrays are shared)."""
        return replace(
            self,
            features={k: v.to(device) for k, v in self.features.items()},
            label=self.label.to(device),
        )

    def take(self, rows: np.ndarray) -> DomainData:
        """The rows ``rows`` (numpy int64 indices) as a new :class:`DomainData`."""
        index = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(self.device)
        b = self.batch(index)
        return replace(
            self, features=b.features, label=b.label, user_ids=self.user_ids[rows],
            item_ids=self.item_ids[rows], timestamps=self.timestamps[rows],
        )

    def subset(self, fraction: float, seed: int) -> DomainData:
        """A seeded uniform random ``fraction`` of the rows, kept in chronological order.

        Used for the sparsity study of paper Fig. 5: ``train.train_fraction`` shrinks the TARGET
        domain's training split only (validation and test stay fixed, the source domain is whole).
        At least one row is kept.
        """
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if fraction == 1:
            return self
        n = max(1, int(round(fraction * len(self))))
        rows = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return self.take(rows)


# ---- conversion ---------------------------------------------------------------------------------


def _categorical(spec: FieldSpec, col: pa.Array, source: str) -> np.ndarray:
    values = col.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    spec.check_indices(values, source)
    return values


def _multi_hot(spec: FieldSpec, col: pa.Array, source: str) -> tuple[np.ndarray, int]:
    """A list column -> int64 ``[N, max_len]`` padded with 0, built from the list offsets."""
    n = len(col)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    spec.check_indices(values, source)
    starts = np.cumsum(lengths) - lengths
    # Position of every flattened value inside its row; positions >= max_len are truncated.
    pos = np.arange(len(values), dtype=np.int64) - np.repeat(starts, lengths)
    rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
    keep = pos < spec.max_len
    out = np.zeros((n, spec.max_len), dtype=np.int64)
    out[rows[keep], pos[keep]] = values[keep]
    return out, int((lengths > spec.max_len).sum())


def _dense(spec: FieldSpec, col: pa.Array, source: str) -> np.ndarray:
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    wrong = lengths != spec.dim
    if wrong.any():
        row = int(np.argmax(wrong))
        raise DataError(
            f"{source}: column {spec.name!r} must hold exactly {spec.dim} floats per row (dim of the schema); "
            f"{int(wrong.sum())} row(s) differ, e.g. row {row} has {int(lengths[row])}"
        )
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    out = values.reshape(len(col), spec.dim)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise DataError(
            f"{source}: column {spec.name!r} has {int((~finite).sum())} row(s) with NaN/inf values, "
            f"e.g. row {row}; dense vectors must be finite"
        )
    return out


def _convert_features(schema: DomainSchema, table: pa.Table, source: str) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    features: dict[str, np.ndarray] = {}
    truncated: dict[str, int] = {}
    for spec in schema.fields:
        col = non_null_column(table, spec.name, source)
        if spec.kind is FieldKind.MULTI_HOT:
            features[spec.name], n_trunc = _multi_hot(spec, col, source)
            if n_trunc:
                truncated[spec.name] = n_trunc
        elif spec.kind is FieldKind.DENSE_VECTOR:
            features[spec.name] = _dense(spec, col, source)
        else:
            features[spec.name] = _categorical(spec, col, source)
    return features, truncated


def _labels(schema: DomainSchema, table: pa.Table, source: str) -> np.ndarray:
    label = non_null_column(table, schema.label_column, source).to_numpy(zero_copy_only=False)
    bad = (label != 0) & (label != 1)
    if bad.any():
        raise DataError(
            f"{source}: column {schema.label_column!r} must be 0 or 1; {int(bad.sum())} row(s) are not, "
            f"e.g. {label[np.argmax(bad)]}"
        )
    return label.astype(np.float32)


def table_to_batch(schema: DomainSchema, table: pa.Table, source: str = "<table>") -> Batch:
    """Processed feature rows (an arrow table in the parquet layout) -> a :class:`Batch`.

    Used by serving to score rows: only the feature columns are required; the label defaults to 0
    when the table has no label column. Rows keep the table's order.
    """
    schema.check_feature_columns(table.schema, source)
    features, truncated = _convert_features(schema, table, source)
    if truncated:
        logger.warning("%s: truncated over-long multi-hot lists (rows per field): %s", source, truncated)
    if schema.label_column in table.column_names:
        label = _labels(schema, table, source)
    else:
        label = np.zeros(table.num_rows, dtype=np.float32)
    # Copies: arrow hands out read-only views of its buffers, which torch must not write through.
    return Batch({k: torch.from_numpy(np.array(v)) for k, v in features.items()}, torch.from_numpy(label))


def load_split(processed_root: str, schema: DomainSchema, split: str) -> DomainData:
    """Read ``<processed_root>/<domain>/<split>*.parquet`` into a :class:`DomainData`.

    Every file is checked against ``schema`` (types, index ranges, dense lengths, finiteness, labels)
    and errors name the file and column. Rows are sorted by (timestamp, user id, item id, label) so
    the result does not depend on how a distributed writer sharded or ordered them.
    """
    files: list[str] = []
    parts: list[dict[str, np.ndarray]] = []
    labels, metas = [], []
    truncated: dict[str, int] = {}
    for path, table in split_tables(processed_root, schema, split):
        files.append(path)
        feats, trunc = _convert_features(schema, table, path)
        for k, v in trunc.items():
            truncated[k] = truncated.get(k, 0) + v
        parts.append(feats)
        labels.append(_labels(schema, table, path))
        metas.append(pa.table({
            "ts": non_null_column(table, schema.timestamp_column, path).cast(pa.int64()),
            "user": non_null_column(table, schema.user_id_column, path).cast(pa.string()),
            "item": non_null_column(table, schema.item_id_column, path).cast(pa.string()),
            "label": pa.array(labels[-1]),
        }))
    if truncated:
        logger.warning("%s/%s: truncated over-long multi-hot lists (rows per field): %s", schema.domain, split, truncated)
    meta = pa.concat_tables(metas)
    order = pc.sort_indices(
        meta, sort_keys=[("ts", "ascending"), ("user", "ascending"), ("item", "ascending"), ("label", "ascending")]
    ).to_numpy()
    features = {
        spec.name: torch.from_numpy(np.ascontiguousarray(np.concatenate([p[spec.name] for p in parts])[order]))
        for spec in schema.fields
    }
    return DomainData(
        schema=schema,
        split=split,
        features=features,
        label=torch.from_numpy(np.concatenate(labels)[order]),
        user_ids=meta.column("user").to_numpy()[order],
        item_ids=meta.column("item").to_numpy()[order],
        timestamps=meta.column("ts").to_numpy()[order],
        sources=tuple(files),
        truncated=truncated,
    )


# ---- per-user views of the training data ----------------------------------------------------


def _user_value_pairs(data: DomainData, field: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The distinct ``(user, value)`` pairs of ``field`` over ``data``'s rows (value 0, padding, not
    counted) as sorted keys ``user * field vocab + value``, each row's index into them, and the field's
    vocabulary size. Sparse: a dense ``[user vocab, field vocab]`` matrix takes 16 GB at the Taobao
    preset's 185k users x 7k categories, where these pairs take a few hundred MB."""
    users = data.features[USER_FIELD].cpu()
    x = data.features[field].cpu()
    n_values = data.schema.field(field).vocab_size
    if x.dim() == 1:
        x = x.unsqueeze(1)
    keep = x.flatten() > 0
    keys = (users.unsqueeze(1) * n_values + x).flatten()[keep]
    pairs, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    return pairs, inverse, n_values


def user_history(data: DomainData, field: str, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each user's ``k`` most frequent values of ``field`` in ``data`` (a training split), with counts.

    Returns ``(values, counts, totals)``: int64 and float32 ``[user vocab, k]`` (value 0 = padding with
    count 0 where a user has fewer than k distinct values) and float32 ``[user vocab]``, the user's count
    over all values. Only exposure is counted, never labels. Ties between equally frequent values go
    to the smaller value index.
    """
    n_users = data.schema.field(USER_FIELD).vocab_size
    pairs, inverse, n_values = _user_value_pairs(data, field)
    count = torch.bincount(inverse, minlength=len(pairs))
    user, value = pairs // n_values, pairs % n_values
    # Group by user, most frequent first, ties by value (pairs are sorted by (user, value); stable sorts).
    order = torch.sort(-count, stable=True).indices
    order = order[torch.sort(user[order], stable=True).indices]
    user, value, count = user[order], value[order], count[order]
    first = torch.ones_like(user, dtype=torch.bool)
    first[1:] = user[1:] != user[:-1]
    starts = torch.nonzero(first).flatten()
    rank = torch.arange(len(user)) - starts[torch.cumsum(first.long(), 0) - 1]
    top = rank < k
    values = torch.zeros(n_users, k, dtype=torch.long)
    counts = torch.zeros(n_users, k, dtype=torch.float32)
    values[user[top], rank[top]] = value[top]
    counts[user[top], rank[top]] = count[top].float()
    totals = torch.bincount(user, weights=count.double(), minlength=n_users).float()
    return values, counts, totals


def history_clicks(data: DomainData, field: str, values: torch.Tensor, counts: torch.Tensor,
                   prior: float = 2.0) -> torch.Tensor:
    """float32 ``[user vocab, k]``: for each user's profile ``values`` with their ``counts`` ``n`` (both
    from :func:`user_history` on the same ``data``), the click weight ``(clicks - b n) / (n + prior)``,
    ``b`` the split's click rate: above 0 where the user clicks that value more than average."""
    pairs, inverse, n_values = _user_value_pairs(data, field)
    x = data.features[field]
    per_row = data.label.cpu().double().unsqueeze(1).expand(-1, 1 if x.dim() == 1 else x.shape[1]).flatten()
    keep = (x.cpu() if x.dim() > 1 else x.cpu().unsqueeze(1)).flatten() > 0
    pair_clicks = torch.zeros(len(pairs), dtype=torch.float64).index_add_(0, inverse, per_row[keep])
    wanted = torch.arange(values.shape[0]).unsqueeze(1) * n_values + values
    at = torch.searchsorted(pairs, wanted).clamp(max=max(len(pairs) - 1, 0))
    found = (pairs[at] == wanted) if len(pairs) else torch.zeros_like(wanted, dtype=torch.bool)
    clicks = torch.where(found, pair_clicks[at] if len(pairs) else torch.zeros(()), torch.zeros(())).float()
    base = float(data.label.float().mean()) if len(data.label) else 0.0
    weights = (clicks - base * counts) / (counts + prior)
    return weights * (values > 0)


def user_link_from_rows(target: DomainData, source: DomainData) -> np.ndarray:
    """Like :func:`user_link`, from two loaded splits instead of the vocabulary files: int64 ``[target's
    user vocab]``, the source's index of each target user seen in ``target`` whose raw id has rows in
    ``source`` (0 otherwise)."""
    link = np.zeros(target.schema.field(USER_FIELD).vocab_size, dtype=np.int64)
    src = dict(zip(source.user_ids.tolist(), source.features[USER_FIELD].cpu().numpy().tolist(), strict=True))
    idx = target.features[USER_FIELD].cpu().numpy()
    for raw, i in zip(target.user_ids.tolist(), idx.tolist(), strict=True):
        if i > 0:
            link[i] = src.get(raw, 0)
    return link


def linked_history(history: Sequence[torch.Tensor], link: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-user tensors of one domain (a :func:`user_history`, click weights) re-indexed by another
    domain's users through ``link`` (:func:`user_link`: int64 ``[users]`` of indices into the first
    domain's users; 0 = not linked, which gets zeros: an empty profile)."""
    linked = link > 0
    return tuple(t[link] * (linked.unsqueeze(1) if t.dim() == 2 else linked) for t in history)


def user_link(processed_root: str, source: DomainSchema, target: DomainSchema, field: str = USER_FIELD) -> np.ndarray | None:
    """int64 ``[target's user vocab]``: for each target user index, the source's index of the same raw
    user id (0 when the source never saw that user); None when the processed data has no vocabularies."""
    vocabs = {s.domain: load_vocabularies(processed_root, s) for s in (source, target)}
    if vocabs[source.domain] is None or vocabs[target.domain] is None:
        return None
    return vocab_lookup(vocabs[target.domain][field], vocabs[source.domain][field])


# ---- sampling -----------------------------------------------------------------------------------


def stable_seed(*parts: object) -> int:
    """A stable 63-bit seed from its parts (Python's ``hash`` is salted per process)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class TwoDomainSampler:
    """Yields one training step at a time: ``{domain: Batch}`` with one batch per domain.

    The domains have different sizes, so an epoch is defined by a *basis* domain:

    * ``epoch_basis="larger"`` (default): an epoch is one pass over the larger domain in
      ``ceil(N_max / B)`` steps;
    * ``epoch_basis="target"``: an epoch is one pass over ``target_domain``.

    The basis domain is visited in a fresh random permutation each epoch; its last, partial batch is
    kept. Every other domain is *cycled*: it is consumed in batches of ``min(B, N)`` from a random
    permutation that is reshuffled each time it wraps around, so it is seen more than once (smaller
    domain) or only partly (``"target"`` basis with a smaller target). Each cycle restarts at the
    beginning of every epoch.

    Permutations come from ``torch.Generator``s seeded with (seed, epoch, domain, wrap), so
    :meth:`epoch` is a pure function of its arguments: a run resumed at an epoch boundary sees
    exactly the batches of an uninterrupted one. A single-domain model uses the same sampler with one
    domain. Index tensors are drawn on the host and moved to the data's device once per epoch.
    """

    def __init__(
        self,
        data: Mapping[str, DomainData],
        batch_size: int,
        *,
        epoch_basis: str = "larger",
        target_domain: str | None = None,
        seed: int = 0,
    ) -> None:
        if not data:
            raise ValueError("TwoDomainSampler needs at least one domain")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if epoch_basis not in EPOCH_BASES:
            raise ValueError(f"unknown epoch_basis {epoch_basis!r}; expected one of {EPOCH_BASES}")
        empty = [d for d, v in data.items() if len(v) == 0]
        if empty:
            raise DataError(f"training data of domain(s) {empty} is empty")
        self.data = dict(data)
        self.batch_size = batch_size
        self.seed = seed
        if len(self.data) == 1:
            self.basis = next(iter(self.data))
        elif epoch_basis == "target":
            if target_domain not in self.data:
                raise ValueError(f"epoch_basis 'target' needs target_domain in {sorted(self.data)}, got {target_domain!r}")
            self.basis = target_domain
        else:
            # Ties broken by name so the choice never depends on dict order.
            self.basis = max(sorted(self.data), key=lambda d: len(self.data[d]))

    def __len__(self) -> int:
        """Steps per epoch."""
        return -(-len(self.data[self.basis]) // self.batch_size)

    @property
    def samples_per_epoch(self) -> int:
        """Rows consumed per epoch, summed over domains."""
        steps, b = len(self), self.batch_size
        total = len(self.data[self.basis])
        for d, v in self.data.items():
            if d != self.basis:
                total += steps * min(b, len(v))
        return total

    def _perm(self, domain: str, epoch: int, wrap: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(stable_seed(self.seed, epoch, domain, wrap))
        return torch.randperm(len(self.data[domain]), generator=g)

    def epoch_indices(self, epoch: int) -> dict[str, list[torch.Tensor]]:
        """The row indices of every step of ``epoch``, per domain (host tensors)."""
        steps = len(self)
        out: dict[str, list[torch.Tensor]] = {}
        for domain, d in self.data.items():
            if domain == self.basis:
                out[domain] = list(self._perm(domain, epoch, 0).split(self.batch_size))
                continue
            b, n = min(self.batch_size, len(d)), len(d)
            needed = steps * b
            perms = [self._perm(domain, epoch, w) for w in range(-(-needed // n))]
            out[domain] = list(torch.cat(perms)[:needed].split(b))
        return out

    def epoch(self, epoch: int) -> Iterator[dict[str, Batch]]:
        """Iterate the steps of ``epoch`` (0-based)."""
        indices = self.epoch_indices(epoch)
        on_device = {d: torch.cat(ix).to(self.data[d].device).split([len(i) for i in ix]) for d, ix in indices.items()}
        for step in range(len(self)):
            yield {d: self.data[d].batch(on_device[d][step]) for d in self.data}
