"""The preprocessing driver: per-dataset composites, the k-core loop, outputs and stats.

One call of :func:`run_preprocessing` runs up to three kinds of Beam pipelines, all domains of the
dataset side by side in each:

1. *ingest*: read + parse (dead letters), labels, data window, dedup, the first k-core rounds;
   then the driver checks the malformed fraction of every file;
2. *k-core continuation* (only while a domain has not reached the fixed point): more rounds on
   the previous output (see :mod:`cdanet.preprocessing.kcore`);
3. *features*: joins, GloVe title vectors, chronological split, vocabularies, encoding, parquet.

Everything is written under ``<output>/_staging-<id>/`` and each domain folder is moved to
``<output>/<domain>`` only when every step succeeded, so a failed run leaves no half-written
domain; the staging folder is removed either way.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from cdanet.contract import (
    DEAD_LETTER_PREFIX,
    ITEM_FIELD,
    ITEMS_FILENAME,
    OOV_MARKER,
    PARQUET_SUFFIX,
    SCHEMA_FILENAME,
    SPLITS,
    STATS_FILENAME,
    USER_FIELD,
    VOCAB_DIR,
    DomainSchema,
    FieldKind,
    FieldSpec,
    vocab_filename,
    vocabulary_bytes,
)
from cdanet.preprocessing.domains import LAYOUTS, DomainLayout, LabelSource
from cdanet.preprocessing.formats import RawFile, discover
from cdanet.preprocessing.glove import VECTORS, TitleVectors
from cdanet.preprocessing.interactions import BinariseLabels, Deduplicate, LabelRule, TimeWindow
from cdanet.preprocessing.io import (
    DEAD_LETTERS,
    LINE_COLUMN,
    ROWS,
    STATS,
    ParseLines,
    ReadLineChunks,
    WriteDeadLetters,
)
from cdanet.preprocessing.join import CATALOGUE, JoinFeatures
from cdanet.preprocessing.kcore import KCoreFilter, converged, pass_column
from cdanet.preprocessing.options import PreprocessingError, PreprocessOptions
from cdanet.preprocessing.split import ChronologicalSplit
from cdanet.preprocessing.vocab import BuildVocabularies, EncodeFeatures

log = logging.getLogger(__name__)

_EXAMPLES = 3


def default_beam_args() -> list[str]:
    """The DirectRunner on every core (never Prism, which downloads a binary and fails offline)."""
    return ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
            f"--direct_num_workers={os.cpu_count() or 1}"]


def pipeline_options(beam_args: Sequence[str] | None) -> PipelineOptions:
    """Runner flags pass through untouched; without ``--runner`` the default DirectRunner is added."""
    args = list(beam_args) if beam_args is not None else []
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args = default_beam_args() + args
    return PipelineOptions(args)


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


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema`` (the parquet writer rejects any other schema)."""
    return table.select(schema.names).cast(schema)


# ---- the ingest composite ------------------------------------------------------------------------
@dataclass(frozen=True)
class DomainInputs:
    """The discovered raw files of a domain, by role."""

    domain: str
    files: tuple[RawFile, ...]

    def get(self, role: str) -> RawFile | None:
        return next((f for f in self.files if f.role == role), None)


class IngestDomain(beam.PTransform):
    """Raw files of one domain -> ``{"rows", "items", "users", "dead_letters", "stats"}``.

    ``rows``: deduplicated, labelled interaction chunks inside the data window; ``items`` /
    ``users``: parsed feature chunks (absent when the domain has no such file).
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
        dedup = window[ROWS] | "Dedup" >> Deduplicate(o.num_partitions)
        stats += [window[STATS], dedup[STATS]]
        return {
            ROWS: dedup[ROWS],
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


def _split_stats(table: pa.Table, name: str) -> Iterable[tuple[tuple[str, ...], int]]:
    yield ("split", name, "rows"), table.num_rows
    yield ("split", name, "positives"), int(pc.sum(table["label"]).as_py() or 0)


# ---- writing and reading small outputs -----------------------------------------------------------
def _example(record: dict[str, Any]) -> tuple[str, tuple[int, str, str]]:
    return record["file"], (record["line"], record["reason"], record["raw"][:200])


class Sidecar:
    """The small outputs of one pipeline run (stats, examples, vocabularies, cut keys) for the driver.

    All of them go through one text sink per run: every sink adds several Beam stages, and the
    stage count, not the data, dominates the run time at small scale.
    """

    def __init__(self) -> None:
        self._stats: list[beam.PCollection] = []
        self._records: list[beam.PCollection] = []

    def add_stats(self, domain: str, stats: beam.PCollection) -> None:
        self._stats.append(stats | f"{domain}/TagStats" >> beam.Map(lambda kv, d: ((d, *kv[0]), kv[1]), domain))

    def add(self, domain: str, kind: str, records: beam.PCollection) -> None:
        self._records.append(records | f"{domain}/Tag{kind.title()}" >> beam.Map(lambda r, d, k: [k, d, r], domain, kind))

    def add_examples(self, domain: str, dead: beam.PCollection) -> None:
        first = (
            dead
            | f"{domain}/ExampleKey" >> beam.Map(_example)
            | f"{domain}/FirstExamples" >> beam.combiners.Top.SmallestPerKey(_EXAMPLES)
        )
        self.add(domain, "examples", first)

    def write(self, p: beam.Pipeline, prefix: str) -> None:
        stats = (
            tuple(self._stats) | "Sidecar/AllStats" >> beam.Flatten()
            | "Sidecar/SumStats" >> beam.CombinePerKey(sum)
            | "Sidecar/StatRecords" >> beam.MapTuple(lambda k, v: ["stats", k[0], [list(k[1:]), v]])
        )
        _ = (
            (stats, *self._records)
            | "Sidecar/All" >> beam.Flatten()
            | "Sidecar/Json" >> beam.Map(lambda r: json.dumps(r, ensure_ascii=False))
            | "Sidecar/Write" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl")
        )


def _read_sidecar(prefix: str) -> dict[str, dict[str, list[Any]]]:
    """``{kind: {domain: [payload, ...]}}`` from the sidecar files of one run."""
    out: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for kind, domain, payload in _read_json_lines(prefix + "-*.jsonl"):
        out[kind][domain].append(payload)
    return out


def _read_json_lines(pattern: str) -> list[Any]:
    out = []
    for match in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(match.path) as fh:
            out += [json.loads(line) for line in fh.read().decode("utf-8").splitlines() if line.strip()]
    return out


def _write_text(path: str, text: str) -> None:
    _write_bytes(path, text.encode("utf-8"))


def _write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path) as fh:
        fh.write(data)


def _parquet_read(pattern: str) -> beam.PTransform:
    return beam.io.ReadFromParquetBatched(pattern)


def _parquet_write(prefix: str, schema: pa.Schema, **kwargs: Any) -> beam.PTransform:
    """Shards ``<prefix>-SSSSS-of-NNNNN.parquet`` (the split file names of :mod:`cdanet.contract.layout`)."""
    kwargs = {"file_name_suffix": PARQUET_SUFFIX, **kwargs}
    return beam.Map(conform, schema) | beam.io.WriteToParquetBatched(prefix, schema, **kwargs)


# ---- the driver ----------------------------------------------------------------------------------
@dataclass
class _DomainState:
    inputs: DomainInputs
    layout: DomainLayout
    work: str
    out: str
    row_schema: pa.Schema
    k: int
    kcore_run: int = 0
    last_pass: int = 0
    stats: dict[tuple[str, ...], int] | None = None
    vocabs: dict[str, list[str]] | None = None
    cuts: list[Any] | None = None

    def kcore_pattern(self) -> str:
        return FileSystems.join(self.work, f"kcore-{self.kcore_run:03d}-*.parquet")


def run_preprocessing(
    dataset: str,
    input_dir: str,
    output_dir: str,
    glove_path: str | None = None,
    options: PreprocessOptions | None = None,
    beam_args: list[str] | None = None,
) -> dict[str, dict]:
    """Preprocess the raw files of ``dataset`` under ``input_dir`` into ``output_dir/<domain>``.

    Writes per domain ``schema.json``, ``stats.json``, ``<split>-SSSSS-of-NNNNN.parquet``,
    ``vocab/<field>.txt``, ``items.parquet`` and ``dead_letter-*.jsonl``; returns the stats of each
    domain. ``beam_args`` are pipeline options passed to Beam as they are (runner, workers, ...).
    Raises :class:`PreprocessingError` on missing files, bad headers, too many malformed lines,
    a domain emptied by k-core, or a field without training values.
    """
    options = (options or PreprocessOptions()).validate(dataset)
    domains = options.domains_of(dataset)
    titled = [d for d in domains if LAYOUTS[d].has_titles]
    if titled:
        if not glove_path:
            raise PreprocessingError(f"the titles of {titled} need GloVe vectors: pass glove_path "
                                     "(--glove glove.6B.300d.txt[.gz|.zip])")
        if not FileSystems.exists(glove_path):
            raise PreprocessingError(f"GloVe file {glove_path} does not exist (expected glove.6B.*d.txt[.gz] or a .zip)")
    elif glove_path:
        log.info("%s has no titles; ignoring the GloVe file %s", list(domains), glove_path)
        glove_path = None
    staging = FileSystems.join(output_dir, f"_staging-{uuid.uuid4().hex[:12]}")
    states: dict[str, _DomainState] = {}
    for dom in domains:
        inputs = DomainInputs(dom, tuple(discover(dataset, dom, input_dir, options.rating_range, options.amazon)))
        rule = label_rule(LAYOUTS[dom], options)
        raw = inputs.get("interactions")
        assert raw is not None
        states[dom] = _DomainState(
            inputs=inputs, layout=LAYOUTS[dom], work=FileSystems.join(staging, "_work", dom),
            out=FileSystems.join(staging, dom), row_schema=interaction_schema(raw.fmt.arrow_schema, rule),
            k=options.k_core[dom],
        )
    try:
        work = FileSystems.join(staging, "_work")
        _run_ingest(states, options, beam_args, work)
        _run_kcore_until_converged(states, options, beam_args, work)
        _run_features(states, options, glove_path, beam_args, work)
        results = {dom: _finish_domain(st, dataset, options, glove_path) for dom, st in states.items()}
        for dom in domains:
            _promote(FileSystems.join(staging, dom), FileSystems.join(output_dir, dom))
        return results
    finally:
        if FileSystems.exists(staging):
            FileSystems.delete([staging])


def _run_ingest(states: Mapping[str, _DomainState], o: PreprocessOptions, beam_args: list[str] | None,
                work: str) -> None:
    sidecar = Sidecar()
    with beam.Pipeline(options=pipeline_options(beam_args)) as p:
        for dom, st in states.items():
            ing = p | f"{dom}/Ingest" >> IngestDomain(st.inputs, o)
            kc = ing[ROWS] | f"{dom}/KCore" >> KCoreFilter(st.k, o.kcore_rounds_per_run, o.num_partitions)
            _ = kc[ROWS] | f"{dom}/WriteKCore" >> _parquet_write(FileSystems.join(st.work, "kcore-001"), st.row_schema)
            for role in ("items", "users"):
                raw = st.inputs.get(role)
                if raw is not None:
                    schema = raw.fmt.arrow_schema.append(pa.field(LINE_COLUMN, pa.int64()))
                    _ = ing[role] | f"{dom}/Write{role.title()}" >> _parquet_write(
                        FileSystems.join(st.work, role), schema)
            _ = ing[DEAD_LETTERS] | f"{dom}/WriteDeadLetters" >> WriteDeadLetters(FileSystems.join(st.out, DEAD_LETTER_PREFIX))
            sidecar.add_examples(dom, ing[DEAD_LETTERS])
            sidecar.add_stats(dom, (ing[STATS], kc[STATS]) | f"{dom}/IngestStats" >> beam.Flatten())
        sidecar.write(p, FileSystems.join(work, "sidecar-ingest"))
    side = _read_sidecar(FileSystems.join(work, "sidecar-ingest"))
    for dom, st in states.items():
        st.kcore_run, st.last_pass = 1, 2 * o.kcore_rounds_per_run
        st.stats = {tuple(k): v for k, v in side["stats"][dom]}
        _check_malformed(st, o, {f: ex for f, ex in side["examples"][dom]})


def _run_kcore_until_converged(states: Mapping[str, _DomainState], o: PreprocessOptions,
                               beam_args: list[str] | None, work: str) -> None:
    while True:
        pending = {d: st for d, st in states.items() if not converged(_pass_removed(st), st.last_pass)}
        if not pending:
            return
        log.info("k-core not converged after pass %s for %s; running %d more rounds",
                 {d: st.last_pass for d, st in pending.items()}, sorted(pending), o.kcore_rounds_per_run)
        sidecar = Sidecar()
        run = min(st.kcore_run for st in pending.values()) + 1
        with beam.Pipeline(options=pipeline_options(beam_args)) as p:
            for dom, st in pending.items():
                kc = (
                    p
                    | f"{dom}/ReadKCore" >> _parquet_read(st.kcore_pattern())
                    | f"{dom}/KCore" >> KCoreFilter(st.k, o.kcore_rounds_per_run, o.num_partitions, st.last_pass + 1)
                )
                prefix = FileSystems.join(st.work, f"kcore-{st.kcore_run + 1:03d}")
                _ = kc[ROWS] | f"{dom}/WriteKCore" >> _parquet_write(prefix, st.row_schema)
                sidecar.add_stats(dom, kc[STATS])
            sidecar.write(p, FileSystems.join(work, f"sidecar-kcore-{run:03d}"))
        side = _read_sidecar(FileSystems.join(work, f"sidecar-kcore-{run:03d}"))
        for dom, st in pending.items():
            st.kcore_run += 1
            st.last_pass += 2 * o.kcore_rounds_per_run
            assert st.stats is not None
            st.stats.update({tuple(k): v for k, v in side["stats"][dom]})


def _run_features(states: Mapping[str, _DomainState], o: PreprocessOptions, glove_path: str | None,
                  beam_args: list[str] | None, work: str) -> None:
    for dom, st in states.items():
        rows = _final_rows(st)
        if rows == 0:
            before = (st.stats or {}).get(("kcore", "001", "removed"), 0)
            raise PreprocessingError(
                f"domain {dom} is empty after {st.k}-core filtering ({before} rows removed by the first pass, "
                f"none left): lower k_core[{dom!r}] (--k-core {dom}=N) or check the input files"
            )
        if rows < 10:
            raise PreprocessingError(
                f"domain {dom} has {rows} rows after {st.k}-core filtering: the chronological "
                f"{':'.join(f'{f:g}' for f in o.split_fractions)} split needs at least 10"
            )
    sidecar = Sidecar()
    with beam.Pipeline(options=pipeline_options(beam_args)) as p:
        for dom, st in states.items():
            inputs: dict[str, beam.PCollection] = {ROWS: p | f"{dom}/ReadRows" >> _parquet_read(st.kcore_pattern())}
            schemas: dict[str, pa.Schema | None] = {"items": None, "users": None}
            for role in ("items", "users"):
                raw = st.inputs.get(role)
                if raw is not None:
                    inputs[role] = p | f"{dom}/Read{role.title()}" >> _parquet_read(
                        FileSystems.join(st.work, f"{role}-*.parquet"))
                    schemas[role] = raw.fmt.arrow_schema
            featurize = FeaturizeDomain(st.layout, o, schemas["items"], schemas["users"], st.row_schema, glove_path)
            feat = inputs | f"{dom}/Featurize" >> featurize
            schema = st.layout.arrow_schema()
            for name in SPLITS:
                _ = feat["encoded"][name] | f"{dom}/Write{name.title()}" >> _parquet_write(
                    FileSystems.join(st.out, name), schema)
            cat_schema = featurize.catalogue_schema()
            _ = feat["catalogue"] | f"{dom}/WriteItems" >> _parquet_write(
                FileSystems.join(st.out, ITEMS_FILENAME), cat_schema, num_shards=1, shard_name_template="",
                file_name_suffix="")
            sidecar.add(dom, "vocab", feat["vocab"])
            sidecar.add(dom, "cuts", feat["cuts"])
            sidecar.add_stats(dom, feat[STATS])
        sidecar.write(p, FileSystems.join(work, "sidecar-features"))
    side = _read_sidecar(FileSystems.join(work, "sidecar-features"))
    for dom, st in states.items():
        assert st.stats is not None
        st.stats.update({tuple(k): v for k, v in side["stats"][dom]})
        st.vocabs = dict(side["vocab"][dom])
        st.cuts = side["cuts"][dom][0] if side["cuts"][dom] else None


def _pass_removed(st: _DomainState) -> dict[int, int]:
    return {int(k[1]): v for k, v in (st.stats or {}).items() if k[0] == "kcore" and k[2] == "removed"}


def _final_rows(st: _DomainState) -> int:
    return (st.stats or {}).get(("kcore", f"{st.last_pass:03d}", "rows"), 0)


def _check_malformed(st: _DomainState, o: PreprocessOptions, examples: Mapping[str, list[Any]]) -> None:
    for f in st.inputs.files:
        s = _file_stats(st.stats or {}, f.path)
        malformed = sum(s["malformed"].values())
        data_lines = s["lines"] - s["header"] - s["blank"]
        if data_lines and malformed / data_lines > o.malformed_threshold:
            shown = "; ".join(f"line {ln} ({reason}): {raw!r}" for ln, reason, raw in examples.get(f.path, []))
            raise PreprocessingError(
                f"{f.path}: {malformed} of {data_lines} lines ({malformed / data_lines:.2%}) are malformed, above "
                f"malformed_threshold {o.malformed_threshold:.2%} ({f.fmt.name}); by reason {s['malformed']}; "
                f"first: {shown}"
            )


def _file_stats(stats: Mapping[tuple[str, ...], int], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {"lines": 0, "header": 0, "blank": 0, "parsed": 0, "malformed": {}}
    for key, v in stats.items():
        if key[0] == "file" and key[1] == path:
            name = key[2]
            if name.startswith("malformed:"):
                out["malformed"][name.split(":", 1)[1]] = v
            else:
                out[name] = v
    return out


def _finish_domain(st: _DomainState, dataset: str, o: PreprocessOptions, glove_path: str | None) -> dict[str, Any]:
    """Write vocab files, schema.json and stats.json into the staged domain folder."""
    s = st.stats or {}
    dom, lay = st.inputs.domain, st.layout
    vocabs, cuts = st.vocabs or {}, st.cuts
    fields: list[FieldSpec] = []
    for f in lay.fields:
        if f.kind is FieldKind.DENSE_VECTOR:
            fields.append(FieldSpec(f.name, f.kind, dim=s.get(("glove", "dim"), 0), description=f.description))
            continue
        values = vocabs.get(f.name, [])
        if not values:
            raise PreprocessingError(
                f"field {f.name!r} of domain {dom} has no value in the training split (raw column "
                f"{f.column!r}); check the raw files and the field mapping (AmazonFieldMapping for Amazon metadata)"
            )
        max_len = 0
        if f.kind is FieldKind.MULTI_HOT:
            max_len = max(1, min(o.multi_hot_max_len, s.get(("max_len", f.name), 1)))
        fields.append(FieldSpec(f.name, f.kind, vocab_size=len(values) + 1, max_len=max_len, description=f.description))
        _write_bytes(FileSystems.join(st.out, VOCAB_DIR, vocab_filename(f.name)), vocabulary_bytes(f.name, [OOV_MARKER, *values]))
    stats = _domain_stats(st, dataset, fields)
    metadata = {
        "created_by": "cdanet.preprocessing",
        "k_core": st.k,
        "label_rule": label_rule(lay, o).describe(),
        "raw_files": {f.role: f.path for f in st.inputs.files},
        "raw_formats": {f.role: f.fmt.name for f in st.inputs.files},
        "split": {"fractions": list(o.split_fractions), "order": "timestamp, user_id, item_id",
                  "cut_keys": cuts},
        "vocab": {"dir": VOCAB_DIR, "oov_marker": OOV_MARKER, "min_count": o.vocab_min_count, "built_on": "train"},
        "options": o.to_dict(),
    }
    if lay.has_titles:
        metadata["glove"] = {"file": glove_path, "member": o.glove_member, "dim": s.get(("glove", "dim"), 0),
                             "tokenizer": "lower-case runs of letters", "pooling": "mean; zeros when no known word"}
    schema = DomainSchema(dataset=dataset, domain=dom, fields=tuple(fields), metadata=metadata)
    _write_text(FileSystems.join(st.out, SCHEMA_FILENAME), schema.to_json())
    _write_text(FileSystems.join(st.out, STATS_FILENAME), json.dumps(stats, indent=2, sort_keys=True))
    return stats


def _domain_stats(st: _DomainState, dataset: str, fields: Sequence[FieldSpec]) -> dict[str, Any]:
    s = st.stats or {}
    interactions = st.inputs.get("interactions")
    assert interactions is not None
    files = {f.path: _file_stats(s, f.path) for f in st.inputs.files}
    main = files[interactions.path]
    passes = sorted(_pass_removed(st))
    kcore_passes = [
        {"pass": p, "filter": pass_column(p), "removed": s.get(("kcore", f"{p:03d}", "removed"), 0),
         "rows": s.get(("kcore", f"{p:03d}", "rows"), 0)}
        for p in passes
    ]
    effective = [x for x in kcore_passes if x["removed"]]
    dropped_late = s.get(("rows", "dropped_after_max_timestamp"), 0)
    dropped_window = s.get(("rows", "dropped_outside_window"), 0)
    duplicates = s.get(("rows", "duplicates"), 0)
    splits = {n: s.get(("split", n, "rows"), 0) for n in SPLITS}
    positives = {n: s.get(("split", n, "positives"), 0) for n in SPLITS}
    vocab_sizes = {f.name: f.vocab_size for f in fields if f.vocab_size}
    out: dict[str, Any] = {
        "dataset": dataset,
        "domain": st.inputs.domain,
        "files": files,
        "rows": {
            "read": main["lines"] - main["header"],
            "blank": main["blank"],
            "malformed": main["malformed"],
            "malformed_total": sum(main["malformed"].values()),
            "parsed": main["parsed"],
            "dropped_after_max_timestamp": dropped_late,
            "dropped_outside_window": dropped_window,
            "duplicates": duplicates,
            "after_dedup": main["parsed"] - dropped_late - dropped_window - duplicates,
            "after_kcore": _final_rows(st),
            **splits,
        },
        "positives": {"total": sum(positives.values()), **positives},
        "users": s.get(("kcore", f"{st.last_pass - 1:03d}", "users"), 0),
        "items": s.get(("kcore", f"{st.last_pass:03d}", "items"), 0),
        "vocab_sizes": vocab_sizes,
        "input_feature_dim": sum(vocab_sizes.values()) + sum(f.dim for f in fields),
        "kcore": {"k": st.k, "passes": kcore_passes, "passes_run": len(passes),
                  "rounds_with_removals": (max((x["pass"] for x in effective), default=0) + 1) // 2,
                  "converged": True},
        "item_features": {k[1]: v for k, v in s.items() if k[0] == "item_features"},
    }
    if st.inputs.get("users") is not None:
        out["user_features"] = {k[1]: v for k, v in s.items() if k[0] == "user_features"}
    if any(k[0] == "title" for k in s):
        title = {k[1]: v for k, v in s.items() if k[0] == "title"}
        title["zero_vectors"] = title.get("without_title", 0) + title.get("without_known_word", 0)
        out["title_vectors"] = title
        out["glove"] = {k[1]: v for k, v in s.items() if k[0] == "glove"}
    return out


def _promote(src: str, dst: str) -> None:
    """Move a finished domain folder into place, replacing an older one."""
    if "://" not in src:
        old = f"{dst}.old-{uuid.uuid4().hex[:8]}"
        if os.path.exists(dst):
            os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
        return
    # Object stores have no folders: replace file by file (each rename is a server-side copy).
    if FileSystems.exists(dst):
        FileSystems.delete([dst])
    sources = [m.path for m in FileSystems.match([FileSystems.join(src, "**")])[0].metadata_list]
    FileSystems.rename(sources, [dst + s[len(src):] for s in sources])

