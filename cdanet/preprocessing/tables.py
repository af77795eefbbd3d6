"""Helpers on ``pyarrow.Table`` chunks, the element type of every keyed step.

Keyed steps (dedup, k-core passes, joins) shuffle whole tables: each chunk is cut into hash
partitions of a key column, ``GroupByKey`` brings every row of one key into one partition, and the
work inside a partition is vectorised. Beam then pays per partition, not per row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def hash_buckets(values: pa.ChunkedArray | pa.Array, num_partitions: int) -> np.ndarray:
    """Stable bucket in ``[0, num_partitions)`` of each value: the same in every worker process
    (``pandas.util.hash_array`` uses a fixed key, unlike Python's salted ``hash``).

    A string column without nulls is dictionary-encoded by arrow first, so only its distinct values
    become Python objects to hash (the same hash per value as hashing every row)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    n = np.uint64(num_partitions)
    if values.null_count == 0 and (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        encoded = pc.dictionary_encode(values)
        keys = encoded.dictionary.to_numpy(zero_copy_only=False).astype(object)
        per_key = (pd.util.hash_array(keys, categorize=False) % n).astype(np.int64)
        return per_key[encoded.indices.to_numpy()]
    arr = values.to_numpy(zero_copy_only=False).astype(object)
    return (pd.util.hash_array(arr, categorize=True) % n).astype(np.int64)


def partition(table: pa.Table, column: str, num_partitions: int) -> Iterator[tuple[int, pa.Table]]:
    """Cut ``table`` into ``(bucket, rows)`` pieces by the hash of ``column``."""
    if table.num_rows == 0:
        return
    buckets = hash_buckets(table[column], num_partitions)
    order = np.argsort(buckets, kind="stable")
    ordered = buckets[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    for s, e in zip(starts, ends, strict=True):
        yield int(ordered[s]), table.take(pa.array(order[s:e]))


#: Most rows in one table element that a keyed step emits. Beam 2.77's multi-process FnApiRunner (the
#: local runner) silently dropped large elements (150 MB tables; 50 MB ones arrived) on their way to a
#: stage that waits for a side input: at the paper's Amazon size the split received 86.9 % of the book
#: rows. 100k rows keep every element near the size of the parsed chunks.
MAX_ELEMENT_ROWS = 100_000


def bounded(table: pa.Table, max_rows: int = MAX_ELEMENT_ROWS) -> Iterator[pa.Table]:
    """``table`` in pieces of at most ``max_rows`` rows, each a copy: a pickled slice would carry its
    parent's whole buffers."""
    if table.num_rows <= max_rows:
        yield table
        return
    for start in range(0, table.num_rows, max_rows):
        yield table.take(pa.array(np.arange(start, min(start + max_rows, table.num_rows))))


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema`` (the parquet writer rejects any other schema)."""
    return table.select(schema.names).cast(schema)


def concat(tables: Iterable[pa.Table]) -> pa.Table | None:
    """One table from many chunks of the same schema, or ``None`` if there are none."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return None
    return pa.concat_tables(tables).combine_chunks()


def value_counts(values: pa.ChunkedArray | pa.Array) -> dict[Any, int]:
    """Counts of the non-null values of a column (a list column counts each element)."""
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        values = pc.list_flatten(values)
    vc = pc.value_counts(values.drop_null())
    return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True))


class MergeCounts(beam.CombineFn):
    """Sums ``{value: count}`` dictionaries."""

    def create_accumulator(self) -> Counter:
        return Counter()

    def add_input(self, acc: Counter, counts: Mapping[Any, int]) -> Counter:
        acc.update(counts)
        return acc

    def merge_accumulators(self, accs: Iterable[Counter]) -> Counter:
        accs = iter(accs)
        out = next(accs)
        for a in accs:
            out.update(a)
        return out

    def extract_output(self, acc: Counter) -> dict[Any, int]:
        return dict(acc)


def rows(table: pa.Table) -> list[dict[str, Any]]:
    """The rows of a table as dicts (for tests and small outputs)."""
    return table.to_pylist()


def ToRows() -> beam.PTransform:  # noqa: N802 - reads like a transform class at the call site
    """Table chunks -> one dict per row (for tests and audits, never on the hot path)."""
    return beam.FlatMap(rows)
