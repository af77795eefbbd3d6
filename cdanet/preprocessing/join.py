"""Step 4: left-join item or user features onto the interactions.

Rows and feature records are hash-partitioned by the join key and co-grouped, so every row meets
the features of its key in one partition. Feature files may repeat a key (the 2014 metadata does):
the record on the lowest line wins and the repeats are counted. Rows whose key has no features
keep their id and get missing (-> OOV / zero) features; both the rows and the distinct keys
without features are counted. Each partition also emits the *catalogue* of the keys that occur in
the rows, joined with their features (used for title vectors and ``items.parquet``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cdanet.preprocessing.io import LINE_COLUMN, ROWS, STATS
from cdanet.preprocessing.tables import bounded, concat, partition

CATALOGUE = "catalogue"


def first_per_key(features: pa.Table, on: str) -> tuple[pa.Table, int]:
    """One record per key (the lowest ``_line``), without ``_line``, and the number of repeats."""
    if LINE_COLUMN in features.column_names:
        features = features.sort_by([(on, "ascending"), (LINE_COLUMN, "ascending")])
        features = features.drop_columns([LINE_COLUMN])
    else:
        features = features.sort_by([(on, "ascending")])
    keys = features[on]
    n = features.num_rows
    if n <= 1:
        return features, 0
    first = pc.not_equal(keys.slice(1), keys.slice(0, n - 1))
    mask = pa.concat_arrays([pa.array([True]), first.combine_chunks()])
    unique = features.filter(mask)
    return unique, n - unique.num_rows


def lookup(keys: pa.ChunkedArray | pa.Array, table: pa.Table, on: str) -> tuple[pa.Table, np.ndarray]:
    """The rows of ``table`` (unique on ``on``) matching ``keys`` in order, nulls where absent."""
    index = pd.Index(table[on].to_numpy(zero_copy_only=False))
    pos = index.get_indexer(keys.to_numpy(zero_copy_only=False))
    found = pos >= 0
    taken = table.drop_columns([on]).take(pa.array(pos, mask=~found))
    return taken, found


def left_join(rows: pa.Table, features: pa.Table | None, on: str, feature_schema: pa.Schema) -> tuple[pa.Table, int]:
    """``rows`` plus the feature columns of ``feature_schema`` (minus ``on``); rows without a match."""
    if features is None:
        features = feature_schema.empty_table()
    taken, found = lookup(rows[on], features, on)
    out = rows
    for name in taken.column_names:
        out = out.append_column(name, taken[name])
    return out, int((~found).sum())


class _JoinPartitionFn(beam.DoFn):
    def __init__(self, on: str, feature_schema: pa.Schema, what: str, catalogue_columns: Sequence[str]) -> None:
        self._on, self._schema, self._what = on, feature_schema, what
        self._catalogue_columns = tuple(catalogue_columns)

    def process(self, element: tuple[int, dict[str, Iterable[pa.Table]]]) -> Iterator[Any]:
        _, groups = element
        rows = concat(groups["rows"])
        features = concat(groups["features"])
        repeats = 0
        if features is not None:
            features, repeats = first_per_key(features, self._on)
        yield beam.pvalue.TaggedOutput(STATS, ((self._what, "duplicate_records"), repeats))
        if rows is None:
            return
        joined, missing_rows = left_join(rows, features, self._on, self._schema)
        yield beam.pvalue.TaggedOutput(STATS, ((self._what, "rows_without_features"), missing_rows))
        keys = pc.unique(rows[self._on])
        cat_rows = pa.table({self._on: keys})
        catalogue, missing_keys = left_join(cat_rows, features, self._on, self._schema)
        # Row-level columns (e.g. the category of a Taobao rec item) describe the key too: take the
        # smallest value per key so the catalogue does not depend on row order.
        if self._catalogue_columns:
            agg = rows.group_by(self._on, use_threads=False).aggregate([(c, "min") for c in self._catalogue_columns])
            agg = agg.rename_columns([c if c == self._on else c.removesuffix("_min") for c in agg.column_names])
            extra, _ = lookup(keys, agg, self._on)
            for name in extra.column_names:
                catalogue = catalogue.append_column(name, extra[name])
        yield beam.pvalue.TaggedOutput(STATS, ((self._what, "keys"), len(keys)))
        yield beam.pvalue.TaggedOutput(STATS, ((self._what, "keys_without_features"), missing_keys))
        for piece in bounded(catalogue):
            yield beam.pvalue.TaggedOutput(CATALOGUE, piece)
        yield from bounded(joined)


class JoinFeatures(beam.PTransform):
    """``{"rows": chunks, "features": chunks}`` -> ``{"rows", "catalogue", "stats"}``.

    ``feature_schema`` is the schema of the feature chunks (it fixes the joined columns even when a
    partition has no features). ``what`` prefixes the stats keys (``item_features``, ``user_features``).
    ``catalogue_columns`` are row columns copied into the catalogue (smallest value per key).
    """

    def __init__(self, on: str, feature_schema: pa.Schema, what: str, num_partitions: int = 16,
                 catalogue_columns: Sequence[str] = ()) -> None:
        super().__init__()
        if LINE_COLUMN in feature_schema.names:
            feature_schema = feature_schema.remove(feature_schema.get_field_index(LINE_COLUMN))
        self._on, self._schema, self._what, self._n = on, feature_schema, what, num_partitions
        self._catalogue_columns = tuple(catalogue_columns)

    def expand(self, inputs: dict[str, beam.PCollection]) -> dict[str, beam.PCollection]:
        on, n = self._on, self._n
        keyed = {
            name: inputs[name] | f"Partition{name.title()}" >> beam.FlatMap(lambda t: partition(t, on, n))
            for name in ("rows", "features")
        }
        out = (
            keyed
            | "CoGroup" >> beam.CoGroupByKey()
            | "Join" >> beam.ParDo(
                _JoinPartitionFn(on, self._schema, self._what, self._catalogue_columns)
            ).with_outputs(STATS, CATALOGUE, main=ROWS)
        )
        return {ROWS: out[ROWS], CATALOGUE: out[CATALOGUE], STATS: out[STATS]}
