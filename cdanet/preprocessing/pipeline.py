"""The preprocessing driver: up to three kinds of Beam runs per job, chained through staged files.

One call of :func:`run_preprocessing` runs, with all domains of the dataset side by side in each:

1. *ingest*: :class:`~.composites.IngestDomain` (parse with dead letters, labels, data window,
   dedup) and the first k-core rounds; then the driver checks the malformed fraction of every file;
2. *k-core continuation* (only while a domain has not reached the fixed point): more rounds on
   the previous output (see :mod:`cdanet.preprocessing.kcore`);
3. *features*: :class:`~.composites.FeaturizeDomain` (joins, GloVe title vectors, chronological
   split, vocabularies, encoding) and the parquet outputs.

Runs hand data to each other through staged parquet and report their small results through a
JSONL sidecar (:mod:`.staging`); the counts become typed :class:`~.stats.DomainCounts`. Everything
is written under ``<output>/_staging-<id>/`` and each domain folder is moved to
``<output>/<domain>`` only when every step succeeded (contract files by :mod:`.outputs`), so a
failed run leaves no half-written domain; the staging folder is removed either way.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from cdanet.contract import DEAD_LETTER_PREFIX, ITEMS_FILENAME, PARQUET_SUFFIX, SPLITS
from cdanet.preprocessing.composites import (
    DomainInputs,
    FeaturizeDomain,
    IngestDomain,
    interaction_schema,
    label_rule,
)
from cdanet.preprocessing.domains import LAYOUTS
from cdanet.preprocessing.formats import discover
from cdanet.preprocessing.io import DEAD_LETTERS, LINE_COLUMN, ROWS, STATS, WriteDeadLetters
from cdanet.preprocessing.kcore import KCoreFilter, converged
from cdanet.preprocessing.options import PreprocessingError, PreprocessOptions
from cdanet.preprocessing.outputs import finish_domain
from cdanet.preprocessing.staging import (
    DomainRun,
    Sidecar,
    parquet_read,
    parquet_write,
    promote,
    read_sidecar,
)

log = logging.getLogger(__name__)

#: Feature files parsed in the ingest run and joined in the features run.
_FEATURE_ROLES = ("items", "users")


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
    glove_path = _glove_for(domains, glove_path)
    staging = FileSystems.join(output_dir, f"_staging-{uuid.uuid4().hex[:12]}")
    work = FileSystems.join(staging, "_work")
    runs: dict[str, DomainRun] = {}
    for dom in domains:
        inputs = DomainInputs(dom, tuple(discover(dataset, dom, input_dir, options.rating_range, options.amazon)))
        raw = inputs.get("interactions")
        assert raw is not None
        runs[dom] = DomainRun(
            inputs=inputs, layout=LAYOUTS[dom], work=FileSystems.join(work, dom), out=FileSystems.join(staging, dom),
            row_schema=interaction_schema(raw.fmt.arrow_schema, label_rule(LAYOUTS[dom], options)),
            k=options.k_core[dom],
        )
    try:
        _run_ingest(runs, options, beam_args, work)
        _run_kcore_until_converged(runs, options, beam_args, work)
        _run_features(runs, options, glove_path, beam_args, work)
        results = {dom: finish_domain(run, dataset, options, glove_path) for dom, run in runs.items()}
        for dom in domains:
            promote(FileSystems.join(staging, dom), FileSystems.join(output_dir, dom))
        return results
    finally:
        if FileSystems.exists(staging):
            FileSystems.delete([staging])


def _glove_for(domains: Sequence[str], glove_path: str | None) -> str | None:
    """The GloVe file when a domain has title vectors (then it is required), else None."""
    titled = [d for d in domains if LAYOUTS[d].has_titles]
    if titled:
        if not glove_path:
            raise PreprocessingError(f"the titles of {titled} need GloVe vectors: pass glove_path "
                                     "(--glove glove.6B.300d.txt[.gz|.zip])")
        if not FileSystems.exists(glove_path):
            raise PreprocessingError(f"GloVe file {glove_path} does not exist (expected glove.6B.*d.txt[.gz] or a .zip)")
        return glove_path
    if glove_path:
        log.info("%s has no titles; ignoring the GloVe file %s", list(domains), glove_path)
    return None


def _run_ingest(runs: Mapping[str, DomainRun], o: PreprocessOptions, beam_args: list[str] | None, work: str) -> None:
    sidecar = Sidecar()
    with beam.Pipeline(options=pipeline_options(beam_args)) as p:
        for dom, run in runs.items():
            ing = p | f"{dom}/Ingest" >> IngestDomain(run.inputs, o)
            kc = ing[ROWS] | f"{dom}/KCore" >> KCoreFilter(run.k, o.kcore_rounds_per_run, o.num_partitions)
            _ = kc[ROWS] | f"{dom}/WriteKCore" >> parquet_write(run.kcore_prefix(1), run.row_schema)
            for role in _FEATURE_ROLES:
                raw = run.inputs.get(role)
                if raw is not None:
                    schema = raw.fmt.arrow_schema.append(pa.field(LINE_COLUMN, pa.int64()))
                    _ = ing[role] | f"{dom}/Write{role.title()}" >> parquet_write(run.staged_prefix(role), schema)
            _ = ing[DEAD_LETTERS] | f"{dom}/WriteDeadLetters" >> WriteDeadLetters(
                FileSystems.join(run.out, DEAD_LETTER_PREFIX))
            sidecar.add_examples(dom, ing[DEAD_LETTERS])
            sidecar.add_stats(dom, (ing[STATS], kc[STATS]) | f"{dom}/IngestStats" >> beam.Flatten())
        sidecar.write(p, FileSystems.join(work, "sidecar-ingest"))
    side = read_sidecar(FileSystems.join(work, "sidecar-ingest"))
    for dom, run in runs.items():
        run.kcore_run, run.last_pass = 1, 2 * o.kcore_rounds_per_run
        run.record_counts(side["stats"][dom])
        _check_malformed(run, o, {f: ex for f, ex in side["examples"][dom]})


def _run_kcore_until_converged(runs: Mapping[str, DomainRun], o: PreprocessOptions,
                               beam_args: list[str] | None, work: str) -> None:
    while True:
        pending = {d: run for d, run in runs.items() if not converged(run.counts.removed_by_pass(), run.last_pass)}
        if not pending:
            return
        log.info("k-core not converged after pass %s for %s; running %d more rounds",
                 {d: run.last_pass for d, run in pending.items()}, sorted(pending), o.kcore_rounds_per_run)
        sidecar = Sidecar()
        number = min(run.kcore_run for run in pending.values()) + 1
        with beam.Pipeline(options=pipeline_options(beam_args)) as p:
            for dom, run in pending.items():
                kc = (
                    p
                    | f"{dom}/ReadKCore" >> parquet_read(run.kcore_pattern())
                    | f"{dom}/KCore" >> KCoreFilter(run.k, o.kcore_rounds_per_run, o.num_partitions, run.last_pass + 1)
                )
                _ = kc[ROWS] | f"{dom}/WriteKCore" >> parquet_write(run.kcore_prefix(run.kcore_run + 1), run.row_schema)
                sidecar.add_stats(dom, kc[STATS])
            sidecar.write(p, FileSystems.join(work, f"sidecar-kcore-{number:03d}"))
        side = read_sidecar(FileSystems.join(work, f"sidecar-kcore-{number:03d}"))
        for dom, run in pending.items():
            run.kcore_run += 1
            run.last_pass += 2 * o.kcore_rounds_per_run
            run.record_counts(side["stats"][dom])


def _run_features(runs: Mapping[str, DomainRun], o: PreprocessOptions, glove_path: str | None,
                  beam_args: list[str] | None, work: str) -> None:
    for run in runs.values():
        _check_kcore_rows(run, o)
    sidecar = Sidecar()
    with beam.Pipeline(options=pipeline_options(beam_args)) as p:
        for dom, run in runs.items():
            inputs: dict[str, beam.PCollection] = {ROWS: p | f"{dom}/ReadRows" >> parquet_read(run.kcore_pattern())}
            schemas: dict[str, pa.Schema | None] = dict.fromkeys(_FEATURE_ROLES)
            for role in _FEATURE_ROLES:
                raw = run.inputs.get(role)
                if raw is not None:
                    inputs[role] = p | f"{dom}/Read{role.title()}" >> parquet_read(
                        f"{run.staged_prefix(role)}-*{PARQUET_SUFFIX}")
                    schemas[role] = raw.fmt.arrow_schema
            featurize = FeaturizeDomain(run.layout, o, schemas["items"], schemas["users"], run.row_schema, glove_path)
            feat = inputs | f"{dom}/Featurize" >> featurize
            schema = run.layout.arrow_schema()
            for name in SPLITS:
                _ = feat["encoded"][name] | f"{dom}/Write{name.title()}" >> parquet_write(
                    FileSystems.join(run.out, name), schema)
            _ = feat["catalogue"] | f"{dom}/WriteItems" >> parquet_write(
                FileSystems.join(run.out, ITEMS_FILENAME), featurize.catalogue_schema(), num_shards=1,
                shard_name_template="", file_name_suffix="")
            sidecar.add(dom, "vocab", feat["vocab"])
            sidecar.add(dom, "cuts", feat["cuts"])
            sidecar.add_stats(dom, feat[STATS])
        sidecar.write(p, FileSystems.join(work, "sidecar-features"))
    side = read_sidecar(FileSystems.join(work, "sidecar-features"))
    for dom, run in runs.items():
        run.record_counts(side["stats"][dom])
        run.vocabs = dict(side["vocab"][dom])
        run.cuts = side["cuts"][dom][0] if side["cuts"][dom] else None


def _check_kcore_rows(run: DomainRun, o: PreprocessOptions) -> None:
    rows = run.counts.kcore_pass(run.last_pass).rows
    if rows == 0:
        before = run.counts.kcore_pass(1).removed
        raise PreprocessingError(
            f"domain {run.domain} is empty after {run.k}-core filtering ({before} rows removed by the first pass, "
            f"none left): lower k_core[{run.domain!r}] (--k-core {run.domain}=N) or check the input files"
        )
    if rows < 10:
        raise PreprocessingError(
            f"domain {run.domain} has {rows} rows after {run.k}-core filtering: the chronological "
            f"{':'.join(f'{f:g}' for f in o.split_fractions)} split needs at least 10"
        )


def _check_malformed(run: DomainRun, o: PreprocessOptions, examples: Mapping[str, list[Any]]) -> None:
    for f in run.inputs.files:
        c = run.counts.file(f.path)
        malformed, data_lines = c.malformed_total, c.data_lines
        if data_lines and malformed / data_lines > o.malformed_threshold:
            shown = "; ".join(f"line {ln} ({reason}): {raw!r}" for ln, reason, raw in examples.get(f.path, []))
            raise PreprocessingError(
                f"{f.path}: {malformed} of {data_lines} lines ({malformed / data_lines:.2%}) are malformed, above "
                f"malformed_threshold {o.malformed_threshold:.2%} ({f.fmt.name}); by reason {c.malformed}; "
                f"first: {shown}"
            )
