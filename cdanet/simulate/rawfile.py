"""Writing raw text files, optionally with injected malformed lines and exact duplicate rows.

A file is described by a :class:`TextTable`: its header, its number of valid rows and a vectorised
``render`` from row indices to lines. Valid rows are rendered in chunks; injected lines are merged
in at seeded random positions. Each injected line has exactly ONE defect, named by its reason:

* ``wrong_column_count`` (CSV): a field removed.
* ``non_numeric_field``: a field that must parse as a number holds text (``abc``, ``n/a``, ``five``...).
* ``empty_id``: the user / item id field is empty.
* ``rating_out_of_range`` (Amazon reviews): a rating outside 1-5 (7.5, -1.0, 6.0, 10.0).
* ``invalid_value`` (Taobao): a value outside its allowed set (clk 2 or -1, behavior_type "click").
* ``broken_json``: the record is cut in half (JSON or, for 2014 metadata, a Python literal).
* ``missing_field`` (JSON lines): a required key is absent.
* ``undecodable_bytes``: bytes ``0xff 0xfe`` inside the id, so the line is not valid UTF-8.
* ``blank``: an empty line.

The names are the dead-letter reasons of :mod:`cdanet.preprocessing.formats`, so injected counts
and dead-letter counts compare key by key.

Exact duplicates of valid rows are counted separately (``duplicates``), never as malformed.
Files are written to a temporary name and renamed, and gzip output has a zero mtime and no file
name in its header, so the same inputs give byte-identical files.
"""

from __future__ import annotations

import ast
import gzip as gzip_module
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cdanet.atomic import replacing

Render = Callable[[np.ndarray], list[str]]

_NON_NUMERIC = ("abc", "n/a", "five", "12x", "--")
_BAD_BYTES = b"\xff\xfe"
_ROWS_PER_CHUNK = 250_000


@dataclass(frozen=True)
class CsvLayout:
    """Where the defects go in a comma-separated line (0-based field positions)."""

    n_fields: int
    id_field: int
    numeric_field: int | None = None
    range_field: int | None = None
    range_values: tuple[str, ...] = ()
    range_reason: str = "invalid_value"

    def reasons(self) -> tuple[str, ...]:
        out = ["wrong_column_count", "empty_id", "undecodable_bytes"]
        if self.numeric_field is not None:
            out.append("non_numeric_field")
        if self.range_field is not None:
            out.append(self.range_reason)
        return tuple(out)


@dataclass(frozen=True)
class JsonLayout:
    """Defect targets of a JSON-lines (``literal=False``) or Python-literal (``literal=True``) record."""

    id_key: str
    numeric_key: str | None = None
    range_key: str | None = None
    range_values: tuple[float, ...] = ()
    required_key: str | None = None
    literal: bool = False
    range_reason: str = "rating_out_of_range"

    def reasons(self) -> tuple[str, ...]:
        out = ["broken_json", "empty_id", "undecodable_bytes"]
        if self.required_key is not None:
            out.append("missing_field")
        if self.numeric_key is not None:
            out.append("non_numeric_field")
        if self.range_key is not None:
            out.append(self.range_reason)
        return tuple(out)


@dataclass(frozen=True)
class TextTable:
    """One raw text file: ``render(indices) -> lines`` (no newlines) for rows ``0..n_rows-1``."""

    relpath: str
    n_rows: int
    render: Render
    layout: CsvLayout | JsonLayout
    header: str | None = None
    allow_duplicates: bool = False  # interaction files only; metadata/profile files stay unique by key


@dataclass
class FileReport:
    """What was written to one file (``lines`` counts every line, header and injected ones included)."""

    relpath: str
    lines: int
    data_rows: int
    header: bool
    bytes: int
    duplicates: int = 0
    malformed: dict[str, int] = field(default_factory=dict)


def _corrupt_csv(line: str, reason: str, layout: CsvLayout, rng: np.random.Generator) -> bytes:
    fields = line.split(",")
    if reason == "wrong_column_count":
        del fields[int(rng.integers(0, len(fields)))]
    elif reason == "empty_id":
        fields[layout.id_field] = ""
    elif reason == "non_numeric_field":
        assert layout.numeric_field is not None
        fields[layout.numeric_field] = _NON_NUMERIC[int(rng.integers(0, len(_NON_NUMERIC)))]
    elif reason == layout.range_reason:
        assert layout.range_field is not None
        fields[layout.range_field] = layout.range_values[int(rng.integers(0, len(layout.range_values)))]
    elif reason == "undecodable_bytes":
        head = ",".join(fields[: layout.id_field]) + ("," if layout.id_field else "")
        return head.encode() + _BAD_BYTES + line[len(head):].encode()
    else:
        raise ValueError(f"reason {reason!r} does not apply to CSV files")
    return ",".join(fields).encode()


def _corrupt_record(line: str, reason: str, layout: JsonLayout, rng: np.random.Generator) -> bytes:
    if reason == "broken_json":
        return line[: len(line) // 2].encode()
    record = ast.literal_eval(line) if layout.literal else json.loads(line)
    if reason == "empty_id":
        record[layout.id_key] = ""
    elif reason == "missing_field":
        del record[layout.required_key]
    elif reason == "non_numeric_field":
        record[layout.numeric_key] = _NON_NUMERIC[int(rng.integers(0, len(_NON_NUMERIC)))]
    elif reason == layout.range_reason:
        record[layout.range_key] = layout.range_values[int(rng.integers(0, len(layout.range_values)))]
    elif reason != "undecodable_bytes":
        raise ValueError(f"reason {reason!r} does not apply to record files")
    text = repr(record) if layout.literal else json.dumps(record, ensure_ascii=False)
    if reason == "undecodable_bytes":
        quote = "'" if layout.literal else '"'
        marker = f"{quote}{layout.id_key}{quote}: {quote}".encode()
        return text.encode().replace(marker, marker + _BAD_BYTES, 1)
    return text.encode()


def split_evenly(total: int, reasons: Sequence[str]) -> dict[str, int]:
    """``total`` spread over ``reasons`` as evenly as possible; earlier reasons get the remainder."""
    base, rest = divmod(total, len(reasons))
    return {r: base + (1 if i < rest else 0) for i, r in enumerate(reasons)}


def plan_injections(table: TextTable, rng: np.random.Generator, malformed_fraction: float,
                    duplicate_fraction: float) -> tuple[list[tuple[int, bytes]], dict[str, int], int]:
    """Lines to insert: ([(before valid row index, payload)], malformed counts by reason, duplicates)."""
    inserts: list[tuple[int, bytes]] = []
    counts: dict[str, int] = {}
    n_bad = int(round(malformed_fraction * table.n_rows))
    if n_bad:
        counts = {r: c for r, c in split_evenly(n_bad, (*table.layout.reasons(), "blank")).items() if c}
        for reason, count in counts.items():
            sources = rng.integers(0, table.n_rows, count)
            positions = rng.integers(0, table.n_rows + 1, count)
            if reason == "blank":
                inserts.extend((int(p), b"") for p in positions)
                continue
            lines = table.render(sources)
            for pos, line in zip(positions, lines, strict=True):
                if isinstance(table.layout, CsvLayout):
                    payload = _corrupt_csv(line, reason, table.layout, rng)
                else:
                    payload = _corrupt_record(line, reason, table.layout, rng)
                inserts.append((int(pos), payload))
    n_dup = int(round(duplicate_fraction * table.n_rows)) if table.allow_duplicates else 0
    if n_dup:
        sources = rng.choice(table.n_rows, n_dup, replace=False)
        positions = rng.integers(0, table.n_rows + 1, n_dup)
        inserts.extend((int(p), line.encode()) for p, line in zip(positions, table.render(sources), strict=True))
    inserts.sort(key=lambda x: x[0])  # stable: equal positions keep their generation order
    return inserts, counts, n_dup


def write_table(out_dir: str, table: TextTable, rng: np.random.Generator, malformed_fraction: float = 0.0,
                duplicate_fraction: float = 0.0, gzip: bool = False) -> FileReport:
    """Write ``table`` under ``out_dir`` (``.gz`` appended to its path when ``gzip``)."""
    relpath = table.relpath + (".gz" if gzip else "")
    path = os.path.join(out_dir, relpath)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    inserts, malformed, n_dup = plan_injections(table, rng, malformed_fraction, duplicate_fraction)
    lines = 0
    with replacing(path) as tmp, open(tmp, "wb") as raw:
        out = gzip_module.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) if gzip else raw
        try:
            if table.header is not None:
                out.write(table.header.encode() + b"\n")
                lines += 1
            k = 0
            for start in range(0, table.n_rows, _ROWS_PER_CHUNK):
                stop = min(start + _ROWS_PER_CHUNK, table.n_rows)
                rendered = table.render(np.arange(start, stop))
                parts: list[bytes] = []
                cursor = start
                last_chunk = stop == table.n_rows
                while k < len(inserts) and (inserts[k][0] < stop or (last_chunk and inserts[k][0] == stop)):
                    pos, payload = inserts[k]
                    if pos > cursor:
                        parts.append(("\n".join(rendered[cursor - start: pos - start]) + "\n").encode())
                        cursor = pos
                    parts.append(payload + b"\n")
                    k += 1
                if stop > cursor:
                    parts.append(("\n".join(rendered[cursor - start:]) + "\n").encode())
                out.write(b"".join(parts))
            lines += table.n_rows + len(inserts)
        finally:
            if out is not raw:
                out.close()
    return FileReport(relpath=relpath, lines=lines, data_rows=table.n_rows, header=table.header is not None,
                      bytes=os.path.getsize(path), duplicates=n_dup, malformed=malformed)


def write_lines(out_dir: str, relpath: str, lines: Sequence[str]) -> FileReport:
    """A plain text file without injections (the GloVe file)."""
    path = os.path.join(out_dir, relpath)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        for start in range(0, len(lines), _ROWS_PER_CHUNK):
            fh.write(("\n".join(lines[start:start + _ROWS_PER_CHUNK]) + "\n").encode())
    return FileReport(relpath=relpath, lines=len(lines), data_rows=len(lines), header=False,
                      bytes=os.path.getsize(path))
