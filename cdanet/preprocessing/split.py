"""Step 6: deterministic chronological train / validation / test split (paper Sec. 5.1.2, 8:1:1).

Rows are ordered by the key (timestamp, user_id, item_id), which is unique after deduplication,
so the order is total and independent of how Beam delivers rows. With N rows, the first
floor(0.8 N) rows are train, the next floor(0.9 N) - floor(0.8 N) validation, the rest test (the
paper's Table 1 sizes follow exactly this rule). Rows that share a timestamp at a cut are divided
by (user_id, item_id), so ``max(train.timestamp) <= min(validation.timestamp)`` and
``max(validation.timestamp) <= min(test.timestamp)`` hold, with equality only at a shared second.

No global sort is needed: per-timestamp counts locate the timestamp of each cut and the rank
inside it; only the rows at those (at most two) timestamps are collected to find the exact cut key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from cdanet.contract import ITEM_FIELD, SPLITS, USER_FIELD
from cdanet.preprocessing.tables import MergeCounts, value_counts

#: The first row (timestamp, user_id, item_id) after a cut; ``None`` when nothing follows the cut.
CutKey = tuple[int, str, str] | None


def cut_positions(n: int, fractions: Sequence[float]) -> list[int]:
    """Rows before each cut: ``[floor(f0 * n), floor((f0 + f1) * n)]``."""
    out, acc = [], 0.0
    for f in fractions[:-1]:
        acc += f
        out.append(min(n, math.floor(acc * n + 1e-9)))
    return out


def locate_cuts(ts_counts: dict[int, int], fractions: Sequence[float]) -> list[tuple[int, int] | None]:
    """For each cut, (timestamp, rows of that timestamp before the cut), or ``None`` past the end."""
    n = sum(ts_counts.values())
    positions = cut_positions(n, fractions)
    out: list[tuple[int, int] | None] = []
    for pos in positions:
        before, found = 0, None
        for ts in sorted(ts_counts):
            if before + ts_counts[ts] > pos:
                found = (ts, pos - before)
                break
            before += ts_counts[ts]
        out.append(found)
    return out


def cut_keys(boundary_rows: Iterable[tuple[int, str, str]], located: Sequence[tuple[int, int] | None]) -> list[CutKey]:
    """The exact first key after each cut from the rows at the cut timestamps."""
    rows = sorted(boundary_rows)
    keys: list[CutKey] = []
    for loc in located:
        if loc is None:
            keys.append(None)
            continue
        ts, rank = loc
        at = [r for r in rows if r[0] == ts]
        keys.append(at[rank])
    return keys


def before(table: pa.Table, key: CutKey) -> pa.ChunkedArray | pa.BooleanScalar:
    """Mask of rows whose (timestamp, user_id, item_id) sorts before ``key``."""
    if key is None:
        return pa.chunked_array([pa.array([True] * table.num_rows)])
    ts, user, item = key
    t, u, i = table["timestamp"], table[USER_FIELD], table[ITEM_FIELD]
    same_user_earlier_item = pc.and_(pc.equal(u, user), pc.less(i, item))
    same_ts_earlier = pc.and_(pc.equal(t, ts), pc.or_(pc.less(u, user), same_user_earlier_item))
    return pc.or_(pc.less(t, ts), same_ts_earlier)


def assign(table: pa.Table, keys: Sequence[CutKey]) -> dict[str, pa.Table]:
    """Split one chunk by the cut keys."""
    first, second = before(table, keys[0]), before(table, keys[1])
    return {
        "train": table.filter(first),
        "validation": table.filter(pc.and_(second, pc.invert(first))),
        "test": table.filter(pc.invert(second)),
    }


class _AssignFn(beam.DoFn):
    def process(self, table: pa.Table, keys: list[CutKey]) -> Iterator[Any]:
        for split, part in assign(table, keys).items():
            if part.num_rows:
                yield part if split == "train" else beam.pvalue.TaggedOutput(split, part)


def _rows_at(table: pa.Table, located: list[tuple[int, int] | None]) -> Iterator[tuple[int, str, str]]:
    stamps = sorted({loc[0] for loc in located if loc is not None})
    if not stamps:
        return
    hit = table.filter(pc.is_in(table["timestamp"], value_set=pa.array(stamps, pa.int64())))
    yield from zip(hit["timestamp"].to_pylist(), hit[USER_FIELD].to_pylist(), hit[ITEM_FIELD].to_pylist(), strict=True)


class ChronologicalSplit(beam.PTransform):
    """Table chunks -> ``{"train", "validation", "test", "cuts"}`` (``cuts``: a singleton list of
    the two :data:`CutKey` values, for audit)."""

    def __init__(self, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> None:
        super().__init__()
        if len(fractions) != 3:
            raise ValueError(f"ChronologicalSplit needs three fractions, got {fractions}")
        self._fractions = tuple(fractions)

    def expand(self, chunks: beam.PCollection) -> dict[str, beam.PCollection]:
        fractions = self._fractions
        located = (
            chunks
            | "TimestampCounts" >> beam.Map(lambda t: value_counts(t["timestamp"]))
            | "MergeCounts" >> beam.CombineGlobally(MergeCounts())
            | "LocateCuts" >> beam.Map(locate_cuts, fractions)
        )
        keys = (
            chunks
            | "RowsAtCuts" >> beam.FlatMap(_rows_at, beam.pvalue.AsSingleton(located))
            | "CollectRows" >> beam.combiners.ToList()
            | "CutKeys" >> beam.Map(cut_keys, beam.pvalue.AsSingleton(located))
        )
        out = chunks | "Assign" >> beam.ParDo(_AssignFn(), beam.pvalue.AsSingleton(keys)).with_outputs(
            "validation", "test", main="train"
        )
        result = {split: out[split] for split in SPLITS}
        result["cuts"] = keys
        return result
