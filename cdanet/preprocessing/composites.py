"""The per-domain composite transforms: raw files -> labelled rows, and k-cored rows -> encoded splits.

:class:`IngestDomain` chains steps 1-2 of ``docs/preprocessing.md`` (parse with dead letters,
labels, data window; duplicates are dropped by the first k-core pass, :class:`~.kcore.KCoreFilter`); :class:`FeaturizeDomain` chains steps 4-8 (feature joins, GloVe title
vectors, chronological split, vocabularies, encoding). Each takes its parameters in its
constructor and reads nothing but its input PCollections; the driver (:mod:`.pipeline`) decides
where they read from and write to.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from cdanet.contract import ITEM_FIELD, SPLITS, USER_FIELD, FieldKind
from cdanet.preprocessing.domains import LAYOUTS, DomainLayout, LabelSource
from cdanet.preprocessing.formats import RawFile
from cdanet.preprocessing.glove import VECTORS, TitleVectors
from cdanet.preprocessing.interactions import BinariseLabels, LabelRule, TimeWindow
from cdanet.preprocessing.io import DEAD_LETTERS, LINE_COLUMN, ROWS, STATS, ParseLines, ReadLineChunks, Stat
from cdanet.preprocessing.join import CATALOGUE, JoinFeatures
from cdanet.preprocessing.options import PreprocessingError, PreprocessOptions
from cdanet.preprocessing.split import ChronologicalSplit
from cdanet.preprocessing.tables import conform
from cdanet.preprocessing.vocab import BuildVocabularies, EncodeFeatures


def label_rule(layout: DomainLayout, options: PreprocessOptions) -> LabelRule:
    """The rule that turns the domain's raw signal into its binary label, with the options' thresholds."""
    column = layout.label.value
    if layout.label is LabelSource.RATING:
        return LabelRule(column, threshold=options.rating_threshold)
    if layout.label is LabelSource.CLICK:
        return LabelRule(column, threshold=0.0)
    return LabelRule(column, positive_values=tuple(options.positive_behaviors))


def interaction_schema(fmt_schema: pa.Schema, rule: LabelRule) -> pa.Schema:
    schema = fmt_schema.remove(fmt_schema.get_field_index(rule.column))
    return schema.append(pa.field("label", pa.int64()))


@dataclass(frozen=True)
class DomainInputs:
    """The discovered raw files of a domain, by role."""

    domain: str
    files: tuple[RawFile, ...]

    def get(self, role: str) -> RawFile | None:
        return next((f for f in self.files if f.role == role), None)


class IngestDomain(beam.PTransform):
    """Raw files of one domain -> ``{"rows", "items", "users", "dead_letters", "stats"}``.

    ``rows``: labelled interaction chunks inside the data window, duplicates still in them (the driver's
    first k-core pass drops them: it partitions by user as deduplication does, so no extra shuffle,
    :class:`~cdanet.preprocessing.kcore.KCoreFilter` ``deduplicate``); ``items`` / ``users``: parsed
    feature chunks (absent when the domain has no such file).
    """

    def __init__(self, inputs: DomainInputs, options: PreprocessOptions) -> None:
        super().__init__()
        self._inputs, self._options = inputs, options

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        o, dom = self._options, self._inputs.domain
        out: dict[str, beam.PCollection] = {}
        dead, stats = [], []
        for f in self._inputs.files:
            label = f.role.title()
            parsed = (
                pbegin
                | f"{label}Path" >> beam.Create([f.path])
                | f"Read{label}" >> ReadLineChunks(o.chunk_lines)
                | f"Parse{label}" >> ParseLines(f.fmt, dom, line_numbers=f.role != "interactions")
            )
            dead.append(parsed[DEAD_LETTERS])
            stats.append(parsed[STATS])
            out[f.role] = parsed[ROWS]
        rows = out.pop("interactions") | "Labels" >> BinariseLabels(label_rule(LAYOUTS[dom], o))
        window = rows | "Window" >> TimeWindow(o.max_timestamp, o.window_days)
        stats.append(window[STATS])
        return {
            ROWS: window[ROWS],
            **out,
            DEAD_LETTERS: tuple(dead) | "AllDeadLetters" >> beam.Flatten(),
            STATS: tuple(stats) | "AllStats" >> beam.Flatten(),
        }


class FeaturizeDomain(beam.PTransform):
    """k-cored rows (+ item / user feature chunks) -> encoded splits, catalogue, vocabularies, stats."""

    def __init__(self, layout: DomainLayout, options: PreprocessOptions, item_schema: pa.Schema | None,
                 user_schema: pa.Schema | None, row_schema: pa.Schema, glove_path: str | None) -> None:
        super().__init__()
        self._layout, self._o = layout, options
        self._item_schema, self._user_schema, self._row_schema = item_schema, user_schema, row_schema
        self._glove = glove_path

    def _renames(self) -> dict[str, str]:
        """Raw feature columns -> their field names (``categories`` -> ``genre``) for ``items.parquet``."""
        return {f.column: f.name for f in self._layout.fields
                if f.kind is not FieldKind.DENSE_VECTOR and f.column not in (ITEM_FIELD, USER_FIELD)}

    def _catalogue_columns(self) -> pa.Schema:
        fields = [pa.field(ITEM_FIELD, pa.string())]
        if self._item_schema is not None:
            fields += [f for f in self._item_schema if f.name not in (ITEM_FIELD, LINE_COLUMN)]
        fields += [self._row_schema.field(c) for c in self._layout.catalogue_columns]
        return pa.schema(fields)

    def catalogue_schema(self) -> pa.Schema:
        """The schema of ``items.parquet``: raw item id and raw feature values under field names."""
        renames = self._renames()
        return pa.schema([f.with_name(renames.get(f.name, f.name)) for f in self._catalogue_columns()])

    def expand(self, inputs: dict[str, beam.PCollection]) -> dict[str, beam.PCollection]:
        lay, o = self._layout, self._o
        p = inputs[ROWS].pipeline
        item_schema = self._item_schema or pa.schema([pa.field(ITEM_FIELD, pa.string())])
        items = inputs.get("items") or (p | "NoItemFeatures" >> beam.Create([]))
        joined = {"rows": inputs[ROWS], "features": items} | "JoinItems" >> JoinFeatures(
            ITEM_FIELD, item_schema, "item_features", o.num_partitions, lay.catalogue_columns)
        stats = [joined[STATS]]
        rows = joined[ROWS]
        if self._user_schema is not None:
            users = {"rows": rows, "features": inputs["users"]} | "JoinUsers" >> JoinFeatures(
                USER_FIELD, self._user_schema, "user_features", o.num_partitions)
            rows = users[ROWS]
            stats.append(users[STATS])
        vectors = None
        if lay.has_titles:
            if self._glove is None:
                raise PreprocessingError(f"domain {lay.domain} has title vectors: a GloVe file is required (--glove)")
            titles = joined[CATALOGUE] | "TitleVectors" >> TitleVectors(self._glove, o.glove_member)
            vectors = titles[VECTORS]
            stats.append(titles[STATS])
        split = rows | "Split" >> ChronologicalSplit(o.split_fractions)
        vocab = split["train"] | "Vocabularies" >> BuildVocabularies(lay.fields, o.vocab_min_count)
        stats.append(vocab[STATS])
        schema = lay.arrow_schema()
        encoded = {}
        for name in SPLITS:
            encoded[name] = split[name] | f"Encode{name.title()}" >> EncodeFeatures(
                lay.fields, schema, vocab["vocab"], vectors)
            stats.append(split[name] | f"Count{name.title()}" >> beam.FlatMap(_split_stats, name))
        names = self.catalogue_schema().names
        catalogue = joined[CATALOGUE] | "CatalogueColumns" >> beam.Map(
            lambda t, s: conform(t, s).rename_columns(names), self._catalogue_columns())
        return {
            "encoded": encoded,
            "catalogue": catalogue,
            "vocab": vocab["vocab"],
            "cuts": split["cuts"],
            STATS: tuple(stats) | "AllStats" >> beam.Flatten(),
        }


def _split_stats(table: pa.Table, name: str) -> Iterable[Stat]:
    yield ("split", name, "rows"), table.num_rows
    yield ("split", name, "positives"), int(pc.sum(table["label"]).as_py() or 0)
