"""Step 2 (labels, duplicates) and the data window on parsed interaction chunks.

Duplicate policy: rows that share (user_id, item_id, timestamp) are one interaction. One row is
kept, its label is the maximum (a repeated positive event stays positive) and its other columns
take their minimum so the choice does not depend on the order Beam delivers rows in. The number
of dropped duplicates goes into stats.json. Rows of the same pair at different times are kept:
they are separate events and count towards k-core degrees.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cdanet.contract import ITEM_FIELD, USER_FIELD
from cdanet.preprocessing.io import ROWS, STATS
from cdanet.preprocessing.tables import bounded, concat, partition

INTERACTION_KEY = (USER_FIELD, ITEM_FIELD, "timestamp")
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class LabelRule:
    """How a raw signal becomes the binary label: ``column > threshold`` or ``column in positive_values``."""

    column: str
    threshold: float | None = None
    positive_values: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if (self.threshold is None) == (self.positive_values is None):
            raise ValueError(f"LabelRule for {self.column!r} needs exactly one of threshold and positive_values")

    def describe(self) -> str:
        if self.threshold is not None:
            return f"{self.column} > {self.threshold:g}"
        return f"{self.column} in {list(self.positive_values or ())}"

    def apply(self, table: pa.Table) -> pa.Table:
        """Replace the signal column by ``label`` (int64 0/1)."""
        values = table[self.column]
        if self.threshold is not None:
            positive = pc.greater(values, self.threshold)
        else:
            positive = pc.is_in(values, value_set=pa.array(list(self.positive_values or ()), values.type))
        label = pc.cast(positive, pa.int64())
        i = table.schema.get_field_index(self.column)
        return table.remove_column(i).append_column("label", label)


class BinariseLabels(beam.PTransform):
    """Table chunks with the rule's signal column -> the same chunks with an int64 ``label``."""

    def __init__(self, rule: LabelRule) -> None:
        super().__init__()
        self._rule = rule

    def expand(self, chunks: beam.PCollection) -> beam.PCollection:
        return chunks | "Binarise" >> beam.Map(self._rule.apply)


def _window_fn(table: pa.Table, lo: int | None, hi: int | None) -> Iterator[Any]:
    ts = table["timestamp"].to_numpy()
    keep = np.ones(len(ts), dtype=bool)
    if hi is not None:
        late = ts > hi
        yield beam.pvalue.TaggedOutput(STATS, (("rows", "dropped_after_max_timestamp"), int(late.sum())))
        keep &= ~late
    if lo is not None:
        early = (ts <= lo) & keep
        yield beam.pvalue.TaggedOutput(STATS, (("rows", "dropped_outside_window"), int(early.sum())))
        keep &= ~early
    if keep.any():
        yield table.filter(pa.array(keep))


class TimeWindow(beam.PTransform):
    """Keep rows with ``max_timestamp - window_days * 86400 < timestamp <= max_timestamp``.

    Without ``max_timestamp`` the window ends at the newest row. Returns ``{"rows", "stats"}``;
    an identity when both are ``None``.
    """

    def __init__(self, max_timestamp: int | None = None, window_days: int | None = None) -> None:
        super().__init__()
        self._max = max_timestamp
        self._days = window_days

    def expand(self, chunks: beam.PCollection) -> dict[str, beam.PCollection]:
        if self._max is None and self._days is None:
            return {ROWS: chunks, STATS: chunks.pipeline | "NoWindowStats" >> beam.Create([])}
        if self._days is not None and self._max is None:
            end = (
                chunks
                | "MaxTimestamp" >> beam.Map(lambda t: pc.max(t["timestamp"]).as_py())
                | "GlobalMax" >> beam.CombineGlobally(lambda xs: max((x for x in xs if x is not None), default=0))
            )
            out = chunks | "Window" >> beam.ParDo(
                _WindowEndFn(self._days), end=beam.pvalue.AsSingleton(end)
            ).with_outputs(STATS, main=ROWS)
        else:
            lo = None if self._days is None else self._max - self._days * SECONDS_PER_DAY
            out = chunks | "Window" >> beam.ParDo(_WindowFn(lo, self._max)).with_outputs(STATS, main=ROWS)
        return {ROWS: out[ROWS], STATS: out[STATS]}


class _WindowFn(beam.DoFn):
    def __init__(self, lo: int | None, hi: int | None) -> None:
        self._lo, self._hi = lo, hi

    def process(self, table: pa.Table) -> Iterator[Any]:
        yield from _window_fn(table, self._lo, self._hi)


class _WindowEndFn(beam.DoFn):
    def __init__(self, days: int) -> None:
        self._days = days

    def process(self, table: pa.Table, end: int) -> Iterator[Any]:
        yield from _window_fn(table, end - self._days * SECONDS_PER_DAY, None)


def deduplicate(table: pa.Table) -> pa.Table:
    """One row per (user_id, item_id, timestamp): label = max, other columns = min."""
    others = [c for c in table.column_names if c not in (*INTERACTION_KEY, "label")]
    agg = table.group_by(list(INTERACTION_KEY), use_threads=False).aggregate(
        [("label", "max"), *((c, "min") for c in others)]
    )
    agg = agg.rename_columns([*INTERACTION_KEY, "label", *others])
    return agg.select(table.column_names)


class _DedupFn(beam.DoFn):
    def process(self, element: tuple[int, Iterable[pa.Table]]) -> Iterator[Any]:
        table = concat(element[1])
        if table is None:
            return
        out = deduplicate(table)
        yield beam.pvalue.TaggedOutput(STATS, (("rows", "duplicates"), table.num_rows - out.num_rows))
        yield from bounded(out)


class Deduplicate(beam.PTransform):
    """Table chunks -> ``{"rows", "stats"}`` without duplicate (user, item, timestamp) rows.

    Rows are hash-partitioned by user, so every copy of a row meets in one partition.
    """

    def __init__(self, num_partitions: int = 16) -> None:
        super().__init__()
        self._n = num_partitions

    def expand(self, chunks: beam.PCollection) -> dict[str, beam.PCollection]:
        n = self._n
        out = (
            chunks
            | "ByUser" >> beam.FlatMap(lambda t: partition(t, USER_FIELD, n))
            | "Group" >> beam.GroupByKey()
            | "Dedup" >> beam.ParDo(_DedupFn()).with_outputs(STATS, main=ROWS)
        )
        return {ROWS: out[ROWS], STATS: out[STATS]}

