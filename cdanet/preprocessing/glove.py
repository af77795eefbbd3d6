"""Step 5: GloVe title vectors (paper Sec. 5.1.1: movie and book names as Glove-6B vectors).

The GloVe text format is ``word v1 ... vn`` per line without a header (``glove.6B.300d.txt``),
plain, gzipped, or inside a zip such as ``glove.6B.zip``. The dimension is the number of values on
the first line. The file is streamed once and only the words of the titles' vocabulary are
decoded, so a 400k x 300 table is never held in memory. A title is lower-cased and split on
non-letters; its vector is the mean of the vectors of its known words, or zeros (counted) when it
has no known word or there is no title at all.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from cdanet.contract import ITEM_FIELD
from cdanet.preprocessing.io import STATS, iter_line_blocks
from cdanet.preprocessing.options import PreprocessingError
from cdanet.preprocessing.tables import concat

_TOKEN = re.compile(r"[^\W\d_]+")
VECTORS = "vectors"


def tokenize(title: str | None) -> list[str]:
    """Lower-cased runs of letters: ``"Star Wars: Episode IV (1977)"`` -> star, wars, episode, iv."""
    return _TOKEN.findall(title.lower()) if title else []


@dataclass(frozen=True)
class GloveVectors:
    """The vectors of the kept words. ``vectors``: float32 ``[len(words), dim]``."""

    path: str
    dim: int
    words: tuple[str, ...]
    vectors: np.ndarray
    lines: int

    def lookup(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}


@contextmanager
def open_glove(path: str, member: str | None = None) -> Iterator[BinaryIO]:
    """A binary stream of the GloVe text: plain, ``.gz`` (by Beam's filesystems) or a zip member."""
    if not path.lower().endswith(".zip"):
        with FileSystems.open(path) as fh:
            yield fh
        return
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw, zipfile.ZipFile(raw) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        if member is None:
            texts = [n for n in names if n.endswith(".txt")]
            if len(texts) != 1:
                raise PreprocessingError(
                    f"{path} holds {len(texts)} .txt files {texts[:8]}; choose one with glove_member "
                    "(e.g. --glove-member glove.6B.300d.txt)"
                )
            member = texts[0]
        elif member not in names:
            raise PreprocessingError(f"{path} has no member {member!r}; members: {names[:20]}")
        with zf.open(member) as fh:
            yield fh  # type: ignore[misc]


_NAMED_DIM = re.compile(r"(\d+)d(?:\.|$)")


def check_glove_header(path: str, member: str | None = None) -> int:
    """Check the first line of a GloVe file before any Beam run; returns its dimension.

    The line must be a word and at least one number, all numeric, and when the file (or zip member)
    is named ``*.<N>d.txt`` as the GloVe downloads are, there must be N of them. Raises
    :class:`PreprocessingError` naming the file, the line and the expected format.
    """
    with open_glove(path, member) as fh:
        first = fh.readline().rstrip(b"\r\n")
        name = getattr(fh, "name", None) if member is None else member
    where = f"{path}" + (f" (member {member})" if member else "")
    if not first:
        raise PreprocessingError(f"{where} is empty: expected GloVe text lines 'word v1 ... vn'")
    parts = first.split(b" ")
    dim = len(parts) - 1
    if dim < 1:
        raise PreprocessingError(f"{where}: line 1 is not 'word v1 ... vn' (GloVe text format, no header): "
                                 f"{first[:80]!r}")
    try:
        np.array(parts[1:], dtype=np.float32)
    except ValueError:
        raise PreprocessingError(f"{where}: line 1 has a non-numeric value; expected 'word v1 ... vn' with "
                                 f"{dim} numbers (GloVe text format, no header)") from None
    named = _NAMED_DIM.search(str(name or path).rsplit("/", 1)[-1])
    if named and int(named.group(1)) != dim:
        raise PreprocessingError(f"{where}: line 1 has {dim} values but the file name says {named.group(1)}d; "
                                 f"expected 'word' followed by {named.group(1)} numbers per line")
    return dim


def read_glove(path: str, vocabulary: Collection[str] | None = None, member: str | None = None) -> GloveVectors:
    """Stream a GloVe file and keep the vectors of ``vocabulary`` (all words when ``None``).

    Raises :class:`PreprocessingError` naming the file and line when a kept line is not
    ``word`` followed by ``dim`` numbers. Later repeats of a word are ignored.
    """
    wanted = None if vocabulary is None else {w.encode("utf-8") for w in vocabulary}
    dim = 0
    words: list[str] = []
    seen: set[bytes] = set()
    rows: list[np.ndarray] = []
    line_no = 0
    with open_glove(path, member) as fh:
        for block in iter_line_blocks(fh):
            for raw in block:
                line_no += 1
                raw = raw.rstrip(b"\r")
                if line_no == 1:
                    dim = len(raw.split(b" ")) - 1
                    if dim < 1:
                        raise PreprocessingError(
                            f"{path}: line 1 is not 'word v1 ... vn' (GloVe text format, no header): {raw[:80]!r}"
                        )
                cut = raw.find(b" ")
                word = raw[:cut]
                if cut <= 0 or word in seen or (wanted is not None and word not in wanted):
                    continue
                parts = raw.split(b" ")
                if len(parts) > dim + 1:
                    continue  # glove.840B has a few "words" with spaces; they never match a title token
                if len(parts) < dim + 1:
                    raise PreprocessingError(
                        f"{path}: line {line_no} has {len(parts) - 1} values, expected {dim} (from line 1; "
                        f"GloVe text format 'word v1 ... v{dim}')"
                    )
                try:
                    vec = np.array(parts[1:], dtype=np.float32)
                except ValueError:
                    raise PreprocessingError(
                        f"{path}: line {line_no} of word {word.decode('utf-8', 'replace')!r} has a non-numeric "
                        f"value; expected {dim} numbers after the word"
                    ) from None
                seen.add(word)
                words.append(word.decode("utf-8", errors="replace"))
                rows.append(vec)
    if line_no == 0:
        raise PreprocessingError(f"{path} is empty: expected GloVe text lines 'word v1 ... vn'")
    matrix = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
    return GloveVectors(path=path, dim=dim, words=tuple(words), vectors=matrix, lines=line_no)


def title_vectors(titles: Iterable[str | None], glove: GloveVectors) -> tuple[np.ndarray, int, int]:
    """Mean word vector per title: float32 ``[n, dim]``; (titles without a title, without a known word)."""
    index = glove.lookup()
    titles = list(titles)
    out = np.zeros((len(titles), glove.dim), np.float32)
    no_title = no_word = 0
    for i, title in enumerate(titles):
        if not title:
            no_title += 1
            continue
        ids = [index[t] for t in tokenize(title) if t in index]
        if ids:
            out[i] = glove.vectors[ids].mean(axis=0)
        else:
            no_word += 1
    return out, no_title, no_word


def vector_column(matrix: np.ndarray) -> pa.ListArray:
    """A ``list<float32>`` column from a ``[n, dim]`` matrix."""
    n, dim = matrix.shape
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32) if n else np.zeros(1, np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), pa.float32()))


class _TokensFn(beam.DoFn):
    def process(self, table: pa.Table) -> Iterator[set[str]]:
        tokens: set[str] = set()
        for title in table["title"].to_pylist():
            tokens.update(tokenize(title))
        yield tokens


class _ReadGloveFn(beam.DoFn):
    def __init__(self, member: str | None) -> None:
        self._member = member

    def process(self, path: str, vocabulary: set[str]) -> Iterator[Any]:
        glove = read_glove(path, vocabulary, self._member)
        yield beam.pvalue.TaggedOutput(STATS, (("glove", "dim"), glove.dim))
        yield beam.pvalue.TaggedOutput(STATS, (("glove", "lines"), glove.lines))
        yield beam.pvalue.TaggedOutput(STATS, (("glove", "title_vocabulary"), len(vocabulary)))
        yield beam.pvalue.TaggedOutput(STATS, (("glove", "words_kept"), len(glove.words)))
        yield glove


class _VectorsFn(beam.DoFn):
    def process(self, table: pa.Table, glove: GloveVectors) -> Iterator[Any]:
        matrix, no_title, no_word = title_vectors(table["title"].to_pylist(), glove)
        yield beam.pvalue.TaggedOutput(STATS, (("title", "items"), table.num_rows))
        yield beam.pvalue.TaggedOutput(STATS, (("title", "without_title"), no_title))
        yield beam.pvalue.TaggedOutput(STATS, (("title", "without_known_word"), no_word))
        yield pa.table({ITEM_FIELD: table[ITEM_FIELD], "title": vector_column(matrix)})


def _union(sets: Iterable[set[str]]) -> set[str]:
    out: set[str] = set()
    for s in sets:
        out |= s
    return out


class TitleVectors(beam.PTransform):
    """Catalogue chunks (``item_id``, ``title``) -> ``{"vectors": one Table (item_id, title:
    list<float32>), "stats"}`` from the GloVe file at ``glove_path``."""

    def __init__(self, glove_path: str, member: str | None = None) -> None:
        super().__init__()
        self._path, self._member = glove_path, member

    def expand(self, catalogue: beam.PCollection) -> dict[str, beam.PCollection]:
        vocabulary = (
            catalogue
            | "Tokens" >> beam.ParDo(_TokensFn())
            | "Vocabulary" >> beam.CombineGlobally(_union)
        )
        glove = (
            catalogue.pipeline
            | "GlovePath" >> beam.Create([self._path])
            | "ReadGlove" >> beam.ParDo(
                _ReadGloveFn(self._member), vocabulary=beam.pvalue.AsSingleton(vocabulary)
            ).with_outputs(STATS, main="glove")
        )
        vectors = catalogue | "Vectors" >> beam.ParDo(
            _VectorsFn(), glove=beam.pvalue.AsSingleton(glove["glove"])
        ).with_outputs(STATS, main=VECTORS)
        table = (
            vectors[VECTORS]
            | "Collect" >> beam.combiners.ToList()
            | "Concat" >> beam.Map(lambda ts: concat(ts) or pa.table(
                {ITEM_FIELD: pa.array([], pa.string()), "title": pa.array([], pa.list_(pa.float32()))}))
        )
        stats = (glove[STATS], vectors[STATS]) | "Stats" >> beam.Flatten()
        return {VECTORS: table, STATS: stats}
