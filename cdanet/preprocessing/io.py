"""Step 1: read raw files line by line through Beam's filesystems and parse them in chunks.

Files are read as bytes (``FileSystems.open`` handles local paths, gs://, s3:// and .gz), split on
``\\n`` and decoded per line with strict UTF-8, so a single bad byte sequence costs one dead letter
instead of the file. Lines travel in chunks of ``chunk_lines`` (one Beam element each) and every
chunk is parsed into one ``pyarrow.Table``: Beam's cost is per element, so per-line elements would
dominate the run time. Every line ends up in exactly one of: header, blank, parsed, dead letter.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from cdanet.preprocessing.formats import INVALID_VALUE, PARSER_ERROR, UNDECODABLE, LineFormat, Malformed
from cdanet.preprocessing.options import PreprocessingError

#: A chunk of raw lines: (file path, number of its first line (1-based), the lines without "\n").
LineChunk = tuple[str, int, list[bytes]]
#: A count for stats.json: (key path, value), summed per key. E.g. (("file", path, "blank"), 3).
Stat = tuple[tuple[str, ...], int]

ROWS, DEAD_LETTERS, STATS = "rows", "dead_letters", "stats"
LINE_COLUMN = "_line"
METRICS_NAMESPACE = "cdanet.preprocessing"
_BOM = b"\xef\xbb\xbf"
_READ_BLOCK = 1 << 22
_MAX_RAW_CHARS = 20_000


def iter_line_blocks(fh: BinaryIO) -> Iterator[list[bytes]]:
    """The lines of a binary stream (without ``\\n``) in blocks, reading 4 MiB at a time."""
    pending = b""
    while True:
        block = fh.read(_READ_BLOCK)
        if not block:
            break
        parts = (pending + block).split(b"\n")
        pending = parts.pop()
        yield parts
    if pending:  # a last line without a trailing newline is still a line
        yield [pending]


class _ReadChunksFn(beam.DoFn):
    def __init__(self, chunk_lines: int) -> None:
        self._chunk_lines = chunk_lines

    def process(self, path: str) -> Iterator[LineChunk]:
        n, first, buf = self._chunk_lines, 1, []
        try:
            with FileSystems.open(path) as fh:
                for lines in iter_line_blocks(fh):
                    buf.extend(lines)
                    while len(buf) >= n:
                        yield path, first, buf[:n]
                        first, buf = first + n, buf[n:]
        except (OSError, EOFError, zlib.error) as e:  # a truncated .gz, a vanished or unreadable file
            raise PreprocessingError(f"{path}: cannot be read after line {first + len(buf) - 1} "
                                     f"({type(e).__name__}: {e})") from e
        if buf:
            yield path, first, buf


class ReadLineChunks(beam.PTransform):
    """``PCollection[str]`` of file paths -> ``PCollection[LineChunk]``, spread over workers.

    One worker reads each file sequentially (line numbers need order); the chunks are then
    reshuffled so that parsing, the expensive part, runs in parallel.
    """

    def __init__(self, chunk_lines: int = 50_000) -> None:
        super().__init__()
        self._chunk_lines = chunk_lines

    def expand(self, paths: beam.PCollection) -> beam.PCollection:
        return (
            paths
            | "ReadChunks" >> beam.ParDo(_ReadChunksFn(self._chunk_lines))
            | "Spread" >> beam.Reshuffle()
        )


def dead_letter(path: str, line: int, reason: str, raw: bytes, detail: str = "") -> dict[str, Any]:
    """The dead-letter record of one malformed line (written as JSON lines)."""
    return {
        "file": path,
        "line": line,
        "reason": reason,
        "detail": detail,
        "raw": raw.decode("utf-8", errors="backslashreplace")[:_MAX_RAW_CHARS],
    }


class _ParseChunkFn(beam.DoFn):
    def __init__(self, fmt: LineFormat, domain: str, line_numbers: bool) -> None:
        self._fmt = fmt
        self._domain = domain
        self._line_numbers = line_numbers

    def setup(self) -> None:
        self._parsed = Metrics.counter(METRICS_NAMESPACE, f"{self._domain}.parsed")
        self._blank = Metrics.counter(METRICS_NAMESPACE, f"{self._domain}.blank")
        self._malformed = Metrics.counter(METRICS_NAMESPACE, f"{self._domain}.malformed")

    def process(self, chunk: LineChunk) -> Iterator[Any]:
        path, first, lines = chunk
        # The vectorised fast path, for chunks of plain well-formed lines only (never the one holding line 1,
        # with its header or BOM); any doubt and the chunk is parsed line by line below, the definition.
        table = self._fmt.parse_chunk(lines) if first > 1 else None
        if table is not None:
            yield from self._emit(path, table, range(first, first + len(lines)), Counter(lines=len(lines)))
            return
        fmt, parse = self._fmt, self._fmt.parse
        columns: list[list[Any]] = [[] for _ in fmt.columns]
        numbers: list[int] = []
        raws: list[bytes] = []
        counts: Counter[str] = Counter(lines=len(lines))
        for offset, raw in enumerate(lines):
            line_no = first + offset
            if line_no == 1:
                raw = raw.removeprefix(_BOM)
                if fmt.header is not None:
                    counts["header"] += 1
                    continue
            raw = raw.removesuffix(b"\r")
            if not raw.strip():
                counts["blank"] += 1
                continue
            try:
                values = parse(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                counts[f"malformed:{UNDECODABLE}"] += 1
                yield beam.pvalue.TaggedOutput(DEAD_LETTERS, dead_letter(path, line_no, UNDECODABLE, raw, str(e)))
                continue
            except Malformed as e:
                counts[f"malformed:{e.reason}"] += 1
                yield beam.pvalue.TaggedOutput(DEAD_LETTERS, dead_letter(path, line_no, e.reason, raw, e.detail))
                continue
            except Exception as e:  # noqa: BLE001 - any failure of one line is that line's dead letter
                # RecursionError, OverflowError, MemoryError from a crafted line must not stop the job.
                counts[f"malformed:{PARSER_ERROR}"] += 1
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTERS, dead_letter(path, line_no, PARSER_ERROR, raw, f"{type(e).__name__}: {str(e)[:200]}"))
                continue
            for col, v in zip(columns, values, strict=True):
                col.append(v)
            numbers.append(line_no)
            raws.append(raw)
        parsed_table, rejected = _to_table(fmt, columns, numbers)
        for i in rejected:
            counts[f"malformed:{INVALID_VALUE}"] += 1
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, dead_letter(
                path, numbers[i], INVALID_VALUE, raws[i], "a value does not fit its column's type"))
        kept = numbers if not rejected else [n for i, n in enumerate(numbers) if i not in rejected]
        yield from self._emit(path, parsed_table, kept, counts)

    def _emit(self, path: str, table: pa.Table | None, numbers: Sequence[int], counts: Counter[str]) -> Iterator[Any]:
        """The parsed rows (with their line numbers in ``_line`` where wanted), the metrics and the stats."""
        parsed = 0 if table is None else table.num_rows
        counts["parsed"] = parsed
        self._parsed.inc(parsed)
        self._blank.inc(counts["blank"])
        self._malformed.inc(sum(v for k, v in counts.items() if k.startswith("malformed:")))
        if table is not None and parsed:
            if self._line_numbers:
                table = table.append_column(LINE_COLUMN, pa.array(numbers, pa.int64()))
            yield table
        for key, value in counts.items():
            yield beam.pvalue.TaggedOutput(STATS, (("file", path, key), value))


def _to_table(fmt: LineFormat, columns: list[list[Any]], numbers: list[int]) -> tuple[pa.Table | None, set[int]]:
    """The parsed values as one table, and the positions of rows that fit no column type (dropped).

    The parsers range-check what they return, so the fast path is the whole chunk at once; only when
    that fails (a value the parsers let through but arrow rejects) is each row tried on its own.
    """
    if not numbers:
        return None, set()
    try:
        return pa.Table.from_arrays([pa.array(col, type=t) for col, (_, t) in zip(columns, fmt.columns, strict=True)],
                                    schema=fmt.arrow_schema), set()
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        pass
    rejected: set[int] = set()
    for i in range(len(numbers)):
        try:
            for col, (_, t) in zip(columns, fmt.columns, strict=True):
                pa.array([col[i]], type=t)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            rejected.add(i)
    keep = [i for i in range(len(numbers)) if i not in rejected]
    if not keep:
        return None, rejected
    return pa.Table.from_arrays([pa.array([col[i] for i in keep], type=t)
                                 for col, (_, t) in zip(columns, fmt.columns, strict=True)],
                                schema=fmt.arrow_schema), rejected


class ParseLines(beam.PTransform):
    """``PCollection[LineChunk]`` -> ``{"rows": Table chunks, "dead_letters": dicts, "stats": Stat}``.

    ``rows`` hold ``fmt.columns``; ``dead_letters`` one record per malformed line (file, line,
    reason, detail, raw text); ``stats`` per-file counts of lines, header, blank, parsed and
    ``malformed:<reason>``. Malformed lines are also counted with ``Metrics.counter``. With
    ``line_numbers`` the rows carry their line in ``_line`` (feature files: the first record wins).
    """

    def __init__(self, fmt: LineFormat, domain: str, line_numbers: bool = False) -> None:
        super().__init__()
        self._fmt = fmt
        self._domain = domain
        self._line_numbers = line_numbers

    def expand(self, chunks: beam.PCollection) -> dict[str, beam.PCollection]:
        out = chunks | "Parse" >> beam.ParDo(_ParseChunkFn(self._fmt, self._domain, self._line_numbers)).with_outputs(
            DEAD_LETTERS, STATS, main=ROWS
        )
        return {ROWS: out[ROWS], DEAD_LETTERS: out[DEAD_LETTERS], STATS: out[STATS]}


class WriteDeadLetters(beam.PTransform):
    """Dead-letter records -> ``<prefix>-SSSSS-of-NNNNN.jsonl`` (one empty shard when there are none)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self._prefix = prefix

    def expand(self, records: beam.PCollection) -> beam.pvalue.PDone:
        return (
            records
            | "ToJson" >> beam.Map(lambda r: json.dumps(r, ensure_ascii=False, sort_keys=True))
            | "Write" >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl")
        )
