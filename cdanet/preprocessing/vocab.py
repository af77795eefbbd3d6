"""Steps 7-8: vocabularies from the training split, and encoding into the feature contract.

Index 0 of every vocabulary is OOV (``cdanet.contract.OOV_INDEX``): values never seen in train,
seen fewer than ``min_count`` times, or missing (no metadata / profile, ``NULL`` brand). The other
indices follow descending training frequency, ties by value, so they are deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cdanet.contract import ITEM_FIELD, USER_FIELD, FieldKind
from cdanet.preprocessing.domains import FieldSource
from cdanet.preprocessing.io import STATS
from cdanet.preprocessing.tables import MergeCounts, value_counts


def vocabulary(counts: Mapping[str, int], min_count: int = 1) -> list[str]:
    """Values with at least ``min_count`` occurrences, by descending count then value (index i + 1)."""
    kept = [(v, c) for v, c in counts.items() if c >= min_count]
    return [v for v, _ in sorted(kept, key=lambda vc: (-vc[1], vc[0]))]


class _CountFn(beam.DoFn):
    def __init__(self, fields: Sequence[FieldSource]) -> None:
        self._fields = tuple(fields)

    def process(self, table: pa.Table) -> Iterator[Any]:
        for f in self._fields:
            col = table[f.column]
            yield f.name, value_counts(col)
            if f.kind is FieldKind.MULTI_HOT:
                longest = pc.max(pc.list_value_length(col)).as_py() or 0
                yield beam.pvalue.TaggedOutput(STATS, (f.name, longest))


class BuildVocabularies(beam.PTransform):
    """Training chunks -> ``{"vocab": (field, [values...]), "stats": (("max_len", field), n)}``.

    A field with no value in the training split yields no vocabulary (the driver reports it).
    """

    def __init__(self, fields: Sequence[FieldSource], min_count: int = 1) -> None:
        super().__init__()
        self._fields = tuple(f for f in fields if f.is_categorical)
        self._min = min_count

    def expand(self, train: beam.PCollection) -> dict[str, beam.PCollection]:
        min_count = self._min
        counts = train | "Count" >> beam.ParDo(_CountFn(self._fields)).with_outputs(STATS, main="counts")
        vocab = (
            counts["counts"]
            | "Merge" >> beam.CombinePerKey(MergeCounts())
            | "Order" >> beam.MapTuple(lambda name, c: (name, vocabulary(c, min_count)))
            | "DropEmpty" >> beam.Filter(lambda kv: bool(kv[1]))
        )
        max_len = (
            counts[STATS]
            | "MaxLen" >> beam.CombinePerKey(max)
            | "MaxLenStat" >> beam.MapTuple(lambda name, n: (("max_len", name), n))
        )
        return {"vocab": vocab, STATS: max_len}


def encode_categorical(values: pa.ChunkedArray | pa.Array, vocab: pa.Array) -> pa.Array:
    """Indices in ``[0, len(vocab)]``: position in the vocabulary (distinct values) + 1, 0 for OOV and missing."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not len(vocab):
        return pa.array(np.zeros(len(values), np.int64), pa.int64())
    pos = pc.index_in(values, value_set=vocab.cast(values.type))  # null: OOV or missing
    return pc.add(pc.fill_null(pos.cast(pa.int64()), -1), 1)


def encode_multi_hot(values: pa.ChunkedArray | pa.Array, vocab: pa.Array) -> pa.Array:
    """``list<int64>`` of indices, same list lengths; a missing list becomes an empty list."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(values), 0).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = encode_categorical(pc.list_flatten(values), vocab)
    return pa.ListArray.from_arrays(pa.array(offsets), flat)


class _EncodeFn(beam.DoFn):
    def __init__(self, fields: Sequence[FieldSource], schema: pa.Schema) -> None:
        self._fields = tuple(fields)
        self._schema = schema
        self._vocabs: dict[str, pa.Array] | None = None
        self._vectors: tuple[pa.Array, np.ndarray] | None = None

    def _prepare(self, vocabs: Mapping[str, list[str]], vectors: pa.Table | None) -> None:
        # A side input has one value per run, so the lookup structures are built once per worker.
        if self._vocabs is None:
            self._vocabs = {f.name: pa.array(vocabs.get(f.name, [])) for f in self._fields if f.is_categorical}
        if self._vectors is None and vectors is not None:
            dim = self._dim(vectors)
            flat = pc.list_flatten(vectors["title"]).to_numpy(zero_copy_only=False).astype(np.float32)
            matrix = np.vstack([flat.reshape(vectors.num_rows, dim), np.zeros((1, dim), np.float32)])
            self._vectors = (vectors[ITEM_FIELD].combine_chunks(), matrix)

    @staticmethod
    def _dim(vectors: pa.Table) -> int:
        if vectors.num_rows == 0:
            return 0
        return int(pc.list_value_length(vectors["title"]).to_numpy()[0])

    def process(self, table: pa.Table, vocabs: Mapping[str, list[str]], vectors: pa.Table | None = None) -> Iterator[pa.Table]:
        from cdanet.preprocessing.glove import vector_column

        self._prepare(vocabs, vectors)
        assert self._vocabs is not None
        columns: list[pa.Array] = []
        for f in self._fields:
            col = table[f.column]
            if f.kind is FieldKind.DENSE_VECTOR:
                if self._vectors is None:
                    raise ValueError(f"field {f.name!r} needs title vectors but none were computed")
                items, matrix = self._vectors
                # the zero row (the last): an item without a vector
                ids = table[ITEM_FIELD]
                pos = pc.fill_null(pc.index_in(ids, value_set=items.cast(ids.type)), len(matrix) - 1).to_numpy()
                columns.append(vector_column(matrix[pos]))
            elif f.kind is FieldKind.MULTI_HOT:
                columns.append(encode_multi_hot(col, self._vocabs[f.name]))
            else:
                columns.append(encode_categorical(col, self._vocabs[f.name]))
        columns += [table["label"], table["timestamp"], table[USER_FIELD], table[ITEM_FIELD]]
        yield pa.Table.from_arrays(columns, schema=self._schema)


class EncodeFeatures(beam.PTransform):
    """Joined chunks -> chunks of the domain's ``arrow_schema`` (fields, label, timestamp, raw ids).

    ``vocabs``: a PCollection of (field, values) from :class:`BuildVocabularies`; ``vectors``: the
    singleton table of :class:`~cdanet.preprocessing.glove.TitleVectors` (domains with titles).
    """

    def __init__(self, fields: Sequence[FieldSource], schema: pa.Schema, vocabs: beam.PCollection,
                 vectors: beam.PCollection | None = None) -> None:
        super().__init__()
        self._fields, self._schema, self._vocabs, self._vectors = tuple(fields), schema, vocabs, vectors

    def expand(self, chunks: beam.PCollection) -> beam.PCollection:
        side: dict[str, Any] = {"vocabs": beam.pvalue.AsDict(self._vocabs)}
        if self._vectors is not None:
            side["vectors"] = beam.pvalue.AsSingleton(self._vectors)
        return chunks | "Encode" >> beam.ParDo(_EncodeFn(self._fields, self._schema), **side)
