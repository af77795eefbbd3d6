"""Step 3: k-core filtering to the exact fixed point.

The k-core keeps the largest set of rows in which every user and every item has at least ``k``
rows; it is unique, so any order of removals that ends in a state where nothing can be removed
reaches it. A *pass* hash-partitions the rows by one key (user or item), so every row of a key
meets in one partition, and drops the rows of keys with fewer than ``k`` rows. Passes alternate
user, item, user, ... (a *round* is a user pass plus an item pass).

Beam has no loops, so :class:`KCoreFilter` unrolls ``rounds`` rounds and reports the rows removed
by every pass. Convergence test: after any pass but the very first, if the pass removed nothing,
the table is what the previous pass produced, so both keys satisfy the bound and the fixed point is
reached. The driver (:func:`cdanet.preprocessing.pipeline.run_preprocessing`) checks the last pass
of each run and runs more rounds on the output until that holds; it never stops early.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from cdanet.contract import ITEM_FIELD, USER_FIELD
from cdanet.preprocessing.interactions import deduplicate
from cdanet.preprocessing.io import ROWS, STATS
from cdanet.preprocessing.tables import bounded, concat, partition


def pass_column(pass_no: int) -> str:
    """Pass 1, 3, 5, ... filter users; pass 2, 4, ... filter items."""
    return USER_FIELD if pass_no % 2 == 1 else ITEM_FIELD


def filter_by_degree(table: pa.Table, column: str, k: int) -> tuple[pa.Table, int]:
    """Rows whose ``column`` value occurs at least ``k`` times in ``table``, and the number of kept keys."""
    vc = pc.value_counts(table[column])
    keep = vc.field("values").filter(pc.greater_equal(vc.field("counts"), k))
    return table.filter(pc.is_in(table[column], value_set=keep)), len(keep)


class _DegreeFilterFn(beam.DoFn):
    def __init__(self, column: str, k: int, pass_no: int, dedup: bool = False) -> None:
        self._column, self._k, self._pass, self._dedup = column, k, pass_no, dedup

    def process(self, element: tuple[int, Iterable[pa.Table]]) -> Iterator[Any]:
        table = concat(element[1])
        if table is None:
            return
        if self._dedup:  # every copy of a row has the same user, so it is in this partition
            unique = deduplicate(table)
            yield beam.pvalue.TaggedOutput(STATS, (("rows", "duplicates"), table.num_rows - unique.num_rows))
            table = unique
        kept, keys = filter_by_degree(table, self._column, self._k)
        tag = f"{self._pass:03d}"
        yield beam.pvalue.TaggedOutput(STATS, (("kcore", tag, "removed"), table.num_rows - kept.num_rows))
        yield beam.pvalue.TaggedOutput(STATS, (("kcore", tag, "rows"), kept.num_rows))
        yield beam.pvalue.TaggedOutput(STATS, (("kcore", tag, "users" if self._column == USER_FIELD else "items"), keys))
        if kept.num_rows:
            yield from bounded(kept)


class DegreePass(beam.PTransform):
    """One pass: drop rows whose ``user_id`` (odd ``pass_no``) or ``item_id`` has < k rows.

    With ``dedup`` (a user pass only) the rows of each user partition are first deduplicated
    (:func:`~cdanet.preprocessing.interactions.deduplicate`, stat ``("rows", "duplicates")``): the same
    result as :class:`~cdanet.preprocessing.interactions.Deduplicate` before the pass, one shuffle fewer.
    """

    def __init__(self, k: int, pass_no: int, num_partitions: int = 16, dedup: bool = False) -> None:
        super().__init__()
        if dedup and pass_column(pass_no) != USER_FIELD:
            raise ValueError("a deduplicating pass must partition by user (an odd pass number)")
        self._k, self._pass, self._n, self._dedup = k, pass_no, num_partitions, dedup

    def expand(self, chunks: beam.PCollection) -> dict[str, beam.PCollection]:
        column, n = pass_column(self._pass), self._n
        out = (
            chunks
            | "Partition" >> beam.FlatMap(lambda t: partition(t, column, n))
            | "Group" >> beam.GroupByKey()
            | "Filter" >> beam.ParDo(_DegreeFilterFn(column, self._k, self._pass, self._dedup)).with_outputs(
                STATS, main=ROWS)
        )
        return {ROWS: out[ROWS], STATS: out[STATS]}


class KCoreFilter(beam.PTransform):
    """Table chunks (``user_id``, ``item_id``, ...) -> ``{"rows", "stats"}`` after ``rounds`` rounds.

    ``first_pass`` numbers the passes across driver iterations (it must be odd: runs start with a
    user pass). ``stats`` holds ``(("kcore", "<pass>", "removed"|"rows"|"users"|"items"), n)``.
    With ``deduplicate`` the first pass also drops duplicate rows (:class:`DegreePass`), and ``stats``
    holds ``(("rows", "duplicates"), n)`` too.
    """

    def __init__(self, k: int, rounds: int = 3, num_partitions: int = 16, first_pass: int = 1,
                 deduplicate: bool = False) -> None:
        super().__init__()
        if k < 1 or rounds < 1 or first_pass < 1 or first_pass % 2 != 1:
            raise ValueError(f"KCoreFilter needs k >= 1, rounds >= 1 and an odd first_pass, got {k}, {rounds}, {first_pass}")
        self._k, self._rounds, self._n, self._first = k, rounds, num_partitions, first_pass
        self._dedup = deduplicate

    @property
    def passes(self) -> range:
        return range(self._first, self._first + 2 * self._rounds)

    def expand(self, chunks: beam.PCollection) -> dict[str, beam.PCollection]:
        stats = []
        rows = chunks
        for p in self.passes:
            out = rows | f"Pass{p:03d}" >> DegreePass(self._k, p, self._n, dedup=self._dedup and p == self._first)
            rows = out[ROWS]
            stats.append(out[STATS])
        merged = tuple(stats) | "PassStats" >> beam.Flatten()
        return {ROWS: rows, STATS: merged}


def converged(pass_stats: dict[int, int], last_pass: int) -> bool:
    """Whether the fixed point is reached: the last pass (never the very first) removed nothing."""
    return last_pass > 1 and pass_stats.get(last_pass, 0) == 0


def kcore_reference(pairs: Sequence[tuple[str, str]], k: int) -> list[int]:
    """Indices of the rows of ``pairs`` in the k-core, by plain repeated removal (a test oracle)."""
    alive = set(range(len(pairs)))
    while True:
        users = Counter(pairs[i][0] for i in alive)
        items = Counter(pairs[i][1] for i in alive)
        drop = {i for i in alive if users[pairs[i][0]] < k or items[pairs[i][1]] < k}
        if not drop:
            return sorted(alive)
        alive -= drop
