"""Processed parquet -> contiguous tensors, and the two-domain batch sampler.

A split of one domain is read once, checked against its :class:`~cdanet.features.DomainSchema`,
sorted deterministically and converted to contiguous tensors (:class:`DomainData`). Training then
only gathers rows by index (``index_select``), so no per-row Python runs in the training loop.

Vocabularies (raw value <-> index, one file per categorical field) are read and checked here too,
and :func:`remap_table` re-encodes processed rows from one run's vocabularies into another's, so a
model can score data that was preprocessed after it was trained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from cdanet.batch import Batch
from cdanet.config import EPOCH_BASES
from cdanet.features import USER_FIELD, DomainSchema, FieldKind, FieldSpec, SchemaError, split_files

__all__ = [
    "Batch",
    "DataError",
    "DomainData",
    "TwoDomainSampler",
    "Vocabulary",
    "VocabularyError",
    "encode_values",
    "load_split",
    "load_vocabularies",
    "processed_vocab_dir",
    "read_vocabularies",
    "remap_table",
    "stable_seed",
    "structural_differences",
    "table_to_batch",
    "vocab_fingerprint",
    "vocab_lookup",
    "write_vocabularies",
]

logger = logging.getLogger(__name__)


class DataError(SchemaError):
    """Processed data that violates the feature contract (values, not types)."""


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


def _column(table: pa.Table, name: str, source: str) -> pa.Array:
    col = table.column(name).combine_chunks()
    if col.null_count:
        raise DataError(
            f"{source}: column {name!r} has {col.null_count} null value(s); the feature contract "
            "requires every row to carry a value (use OOV index 0 / an empty list instead)"
        )
    return col


def _categorical(spec: FieldSpec, col: pa.Array, source: str) -> np.ndarray:
    values = col.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    _check_range(spec, values, source)
    return values


def _check_range(spec: FieldSpec, values: np.ndarray, source: str) -> None:
    bad = (values < 0) | (values >= spec.vocab_size)
    if bad.any():
        first = int(values[np.argmax(bad)])
        raise DataError(
            f"{source}: column {spec.name!r} has {int(bad.sum())} index(es) outside [0, {spec.vocab_size}) "
            f"(vocab_size of the schema), e.g. {first}; the schema and the parquet files are out of sync"
        )


def _multi_hot(spec: FieldSpec, col: pa.Array, source: str) -> tuple[np.ndarray, int]:
    """A list column -> int64 ``[N, max_len]`` padded with 0, built from the list offsets."""
    n = len(col)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    _check_range(spec, values, source)
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


def _check_feature_columns(schema: DomainSchema, actual: pa.Schema, source: str) -> None:
    problems = [
        f"missing feature column {f.name!r} ({f.kind.value}, expected {f.arrow_type()})"
        if f.name not in actual.names
        else f"column {f.name!r} has type {actual.field(f.name).type}, expected {f.arrow_type()}"
        for f in schema.fields
        if f.name not in actual.names or not f.accepts(actual.field(f.name).type)
    ]
    if problems:
        raise SchemaError(f"{source} does not match the features of domain {schema.domain!r}: " + "; ".join(problems))


def _convert_features(schema: DomainSchema, table: pa.Table, source: str) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    features: dict[str, np.ndarray] = {}
    truncated: dict[str, int] = {}
    for spec in schema.fields:
        col = _column(table, spec.name, source)
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
    label = _column(table, schema.label_column, source).to_numpy(zero_copy_only=False)
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
    _check_feature_columns(schema, table.schema, source)
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
    domain_dir = os.path.join(processed_root, schema.domain)
    files = split_files(domain_dir, split)
    parts: list[dict[str, np.ndarray]] = []
    labels, metas = [], []
    truncated: dict[str, int] = {}
    for path in files:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as e:
            raise DataError(f"{path} is not a readable parquet file: {e}") from e
        schema.check_arrow_schema(table.schema, path)
        feats, trunc = _convert_features(schema, table, path)
        for k, v in trunc.items():
            truncated[k] = truncated.get(k, 0) + v
        parts.append(feats)
        labels.append(_labels(schema, table, path))
        metas.append(pa.table({
            "ts": _column(table, schema.timestamp_column, path).cast(pa.int64()),
            "user": _column(table, schema.user_id_column, path).cast(pa.string()),
            "item": _column(table, schema.item_id_column, path).cast(pa.string()),
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


# ---- vocabularies and re-encoding ---------------------------------------------------------------
#
# Preprocessing writes one vocabulary per categorical field next to the splits,
# ``<processed_root>/<domain>/vocab/<field>.txt``: UTF-8, one value per ``\n``-terminated line,
# line i = the raw value encoded as index i, line 0 = the OOV marker (``<OOV>``). Daily retraining
# rebuilds them, so the same index can mean another raw value tomorrow; :func:`remap_table`
# re-encodes rows from one vocabulary into another by raw value.

Vocabulary = tuple[str, ...]
"""Raw values by index: ``vocab[i]`` is the value encoded as index ``i``; ``vocab[0]`` is the OOV marker."""

VOCAB_DIRNAME = "vocab"  # default folder name; a schema's metadata["vocab"]["dir"] overrides it
OOV_MARKER = "<OOV>"  # default line 0; a schema's metadata["vocab"]["oov_marker"] overrides it


class VocabularyError(DataError):
    """A vocabulary file is missing, unreadable, or does not fit the schema it is used with."""


def _vocab_meta(schema: DomainSchema) -> Mapping[str, object]:
    meta = schema.metadata.get("vocab")
    return meta if isinstance(meta, Mapping) else {}


def processed_vocab_dir(processed_root: str, schema: DomainSchema) -> str:
    """``<processed_root>/<domain>/vocab``: where preprocessing writes the domain's vocabularies."""
    return os.path.join(processed_root, schema.domain, str(_vocab_meta(schema).get("dir", VOCAB_DIRNAME)))


def read_vocabulary(path: str, spec: FieldSpec, oov_marker: str = OOV_MARKER) -> Vocabulary:
    """Read one vocabulary file and check it against ``spec`` (line count, OOV line, uniqueness)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError as e:
        raise VocabularyError(
            f"no vocabulary for field {spec.name!r} at {path}: expected a UTF-8 text file with one raw value "
            f"per line (line i = value of index i, line 0 = {oov_marker!r}) as written by preprocessing"
        ) from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise VocabularyError(f"{path} is not UTF-8 text ({e}); vocabulary files are UTF-8, one value per line") from e
    # Split on "\n" only: str.splitlines would also split values containing \r, \x1c or \u2028.
    values = tuple((text[:-1] if text.endswith("\n") else text).split("\n"))
    if len(values) != spec.vocab_size:
        raise VocabularyError(
            f"{path} has {len(values)} line(s) but field {spec.name!r} has vocab_size {spec.vocab_size} in its "
            f"schema (line 0 {oov_marker!r} plus one line per value); the vocabulary and schema.json are out of sync"
        )
    if values[0] != oov_marker:
        raise VocabularyError(f"{path}: line 0 is {values[0]!r}, expected the OOV marker {oov_marker!r}")
    if len(set(values[1:])) != len(values) - 1:
        dupes = sorted(v for v, n in Counter(values[1:]).items() if n > 1)
        raise VocabularyError(
            f"{path}: {len(dupes)} value(s) appear on more than one line, e.g. {dupes[0]!r}; "
            "each raw value needs exactly one index"
        )
    return values


def read_vocabularies(vocab_dir: str, schema: DomainSchema) -> dict[str, Vocabulary]:
    """The vocabulary of every categorical field of ``schema`` from ``<vocab_dir>/<field>.txt``."""
    marker = str(_vocab_meta(schema).get("oov_marker", OOV_MARKER))
    return {
        spec.name: read_vocabulary(os.path.join(vocab_dir, f"{spec.name}.txt"), spec, marker)
        for spec in schema.fields
        if spec.is_categorical
    }


def load_vocabularies(processed_root: str, schema: DomainSchema) -> dict[str, Vocabulary] | None:
    """The vocabularies of one processed domain, or None when it has no vocab folder at all.

    Data written without vocabularies (e.g. :mod:`cdanet.synthetic`) gives None; a vocab folder
    that lacks a field's file, or whose files do not fit the schema, raises :class:`VocabularyError`.
    """
    vocab_dir = processed_vocab_dir(processed_root, schema)
    if not os.path.isdir(vocab_dir):
        return None
    return read_vocabularies(vocab_dir, schema)


def user_history(data: DomainData, field: str, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each user's ``k`` most frequent values of ``field`` in ``data`` (a training split), with counts.

    Returns ``(values, counts, totals)``: int64 and float32 ``[user vocab, k]`` (value 0 = padding with
    count 0 where a user has fewer than k distinct values) and float32 ``[user vocab]``, the user's count
    over all values. Only exposure is counted, never labels.
    """
    users = data.features[USER_FIELD].cpu()
    x = data.features[field].cpu()
    n_users, n_values = data.schema.field(USER_FIELD).vocab_size, data.schema.field(field).vocab_size
    if x.dim() == 1:
        x = x.unsqueeze(1)
    keys = (users.unsqueeze(1) * n_values + x).flatten()[x.flatten() > 0]
    counts = torch.bincount(keys, minlength=n_users * n_values).view(n_users, n_values).float()
    top, values = counts.topk(min(k, n_values), dim=1)
    values[top == 0] = 0
    pad = k - values.shape[1]  # a field with fewer than k values: padding columns
    if pad > 0:
        values = torch.cat([values, values.new_zeros(n_users, pad)], dim=1)
        top = torch.cat([top, top.new_zeros(n_users, pad)], dim=1)
    return values, top, counts.sum(1)


def history_clicks(data: DomainData, field: str, values: torch.Tensor, prior: float = 2.0) -> torch.Tensor:
    """float32 ``[user vocab, k]``: for each user's profile ``values`` (from :func:`user_history` on the
    same ``data``), the click weight ``(clicks - b n) / (n + prior)`` of the user's ``n`` rows with that
    value, ``b`` the split's click rate: above 0 where the user clicks that value more than average."""
    users = data.features[USER_FIELD].cpu()
    x = data.features[field].cpu()
    x = x if x.dim() == 2 else x.unsqueeze(1)
    n_users, n_values = data.schema.field(USER_FIELD).vocab_size, data.schema.field(field).vocab_size
    keys = (users.unsqueeze(1) * n_values + x).flatten()
    keep = x.flatten() > 0
    label = data.label.cpu().float().unsqueeze(1).expand_as(x).flatten()
    n = torch.bincount(keys[keep], minlength=n_users * n_values).float()
    clicks = torch.bincount(keys[keep], weights=label[keep], minlength=n_users * n_values).float()
    index = torch.arange(n_users).unsqueeze(1) * n_values + values
    base = float(data.label.float().mean()) if len(data.label) else 0.0
    weights = (clicks[index] - base * n[index]) / (n[index] + prior)
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


def write_vocabularies(vocab_dir: str, vocabs: Mapping[str, Sequence[str]]) -> None:
    """Write ``<vocab_dir>/<field>.txt`` in the preprocessing format (the inverse of :func:`read_vocabularies`)."""
    os.makedirs(vocab_dir, exist_ok=True)
    for name, values in vocabs.items():
        bad = next((v for v in values if "\n" in v), None)
        if bad is not None:
            raise VocabularyError(f"vocabulary of field {name!r}: value {bad!r} contains a newline and cannot be stored")
        with open(os.path.join(vocab_dir, f"{name}.txt"), "wb") as fh:
            fh.write(("\n".join(values) + "\n").encode("utf-8"))


def vocab_fingerprint(vocabs: Mapping[str, Sequence[str]]) -> str:
    """A stable hash of the (field -> values) mapping, to detect a changed vocabulary cheaply."""
    payload = json.dumps({name: list(values) for name, values in vocabs.items()}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def encode_values(vocab: Sequence[str], values: Sequence[str | None] | np.ndarray | pa.Array) -> np.ndarray:
    """Raw values -> int64 indices ``[N]`` under ``vocab``; unknown and missing values -> OOV 0.

    For serving callers that hold raw values (e.g. a writer's name) and a model's vocabulary.
    """
    index = pc.index_in(pa.array(values, pa.string()), value_set=pa.array(vocab[1:], pa.string()))
    # index_in gives the position in vocab[1:] (null when absent): +1 turns it into the index.
    return pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1


def vocab_lookup(vocab_from: Sequence[str], vocab_to: Sequence[str]) -> np.ndarray:
    """int64 ``[len(vocab_from)]``: ``lookup[i]`` = the index in ``vocab_to`` of ``vocab_from[i]``, 0 if absent.

    Index 0 (OOV) always maps to 0, whatever string the OOV markers are.
    """
    lookup = np.zeros(len(vocab_from), dtype=np.int64)
    lookup[1:] = encode_values(vocab_to, vocab_from[1:])
    return lookup


def structural_differences(
    schema_from: DomainSchema, schema_to: DomainSchema, names: tuple[str, str] = ("the source", "the target")
) -> list[str]:
    """What keeps rows of ``schema_from`` from being re-encoded into ``schema_to``; empty when nothing does.

    Field names, kinds and dense dims must agree. Vocabulary sizes may differ (that is what
    re-encoding resolves), and so may ``max_len``: lists are cut to the target's ``max_len``
    when loaded, as for any over-long list. ``names`` label the two schemas in the messages.
    """
    src, dst = names
    problems: list[str] = []
    names_from, names_to = set(schema_from.field_names), set(schema_to.field_names)
    if names_to - names_from:
        problems.append(f"fields {sorted(names_to - names_from)} of {dst} are missing from {src}")
    if names_from - names_to:
        problems.append(f"fields {sorted(names_from - names_to)} of {src} are unknown to {dst}")
    for name in sorted(names_from & names_to):
        a, b = schema_from.field(name), schema_to.field(name)
        if a.kind is not b.kind:
            problems.append(f"field {name!r} is {a.kind.value} in {src} but {b.kind.value} in {dst}")
        elif a.kind is FieldKind.DENSE_VECTOR and a.dim != b.dim:
            problems.append(f"dense field {name!r} has dim {a.dim} in {src} but {b.dim} in {dst}")
    return problems


def _checked_vocab(vocabs: Mapping[str, Sequence[str]], spec: FieldSpec, which: str) -> Sequence[str]:
    vocab = vocabs.get(spec.name)
    if vocab is None:
        raise VocabularyError(f"the {which} vocabularies lack categorical field {spec.name!r}")
    if len(vocab) != spec.vocab_size:
        raise VocabularyError(
            f"the {which} vocabulary of field {spec.name!r} has {len(vocab)} entries, but its schema says "
            f"vocab_size {spec.vocab_size}"
        )
    return vocab


def remap_table(
    table: pa.Table,
    schema_from: DomainSchema,
    vocab_from: Mapping[str, Sequence[str]],
    schema_to: DomainSchema,
    vocab_to: Mapping[str, Sequence[str]],
    source: str = "<table>",
) -> pa.Table:
    """Re-encode processed rows from one set of vocabularies into another, by raw value.

    Every ``categorical_id`` / ``categorical`` index and every element of a ``multi_hot`` list is
    replaced by the index its raw value has in ``vocab_to``; values ``vocab_to`` does not know, and
    OOV, become 0. Dense vectors, label, timestamp, raw ids and any other column pass through
    unchanged, in the same column order. Vectorised: one int64 lookup array per field
    (:func:`vocab_lookup`), gathered with numpy.

    Raises :class:`~cdanet.features.SchemaError` when the schemas differ structurally
    (:func:`structural_differences`), :class:`VocabularyError` when a vocabulary is missing or does
    not fit its schema, and :class:`DataError` (naming ``source``) for nulls or indices outside
    ``schema_from``'s vocabulary.
    """
    problems = structural_differences(schema_from, schema_to)
    if problems:
        raise SchemaError(
            f"{source}: rows of domain {schema_from.domain!r} cannot be re-encoded into the other schema: "
            + "; ".join(problems)
        )
    _check_feature_columns(schema_from, table.schema, source)
    unknown: dict[str, int] = {}
    for spec in schema_from.fields:
        if not spec.is_categorical:
            continue
        lookup = vocab_lookup(_checked_vocab(vocab_from, spec, "source"),
                              _checked_vocab(vocab_to, schema_to.field(spec.name), "target"))
        unknown[spec.name] = int((lookup[1:] == 0).sum())
        col = _column(table, spec.name, source)
        if spec.kind is FieldKind.MULTI_HOT:
            flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
            _check_range(spec, flat, source)
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            list_type = pa.LargeListArray if offsets[-1] > np.iinfo(np.int32).max else pa.ListArray
            offsets_type = pa.int64() if list_type is pa.LargeListArray else pa.int32()
            new = list_type.from_arrays(pa.array(offsets, offsets_type), pa.array(lookup[flat], pa.int64()))
        else:
            values = col.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
            _check_range(spec, values, source)
            new = pa.array(lookup[values], pa.int64())
        at = table.schema.get_field_index(spec.name)
        table = table.set_column(at, pa.field(spec.name, new.type, nullable=table.schema.field(at).nullable), new)
    logger.info("%s: re-encoded domain %r by raw value; values of the source vocabularies unknown to the target "
                "(now OOV 0): %s", source, schema_from.domain, unknown)
    return table


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
