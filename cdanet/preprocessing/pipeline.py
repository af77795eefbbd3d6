"""The preprocessing driver: up to three kinds of Beam runs per job, chained through staged files.

One call of :func:`run_preprocessing` runs, with all domains of the dataset side by side in each:

1. *ingest*: :class:`~.composites.IngestDomain` (parse with dead letters, labels, data window)
   and the first k-core rounds (the first pass also drops duplicates); then the driver checks the
   malformed fraction of every file;
2. *k-core continuation* (only while a domain has not reached the fixed point): more rounds on
   the previous output (see :mod:`cdanet.preprocessing.kcore`);
3. *features*: :class:`~.composites.FeaturizeDomain` (joins, GloVe title vectors, chronological
   split, vocabularies, encoding) and the parquet outputs.

Runs hand data to each other through staged parquet and report their small results through a
JSONL sidecar (:mod:`.staging`); the counts become typed :class:`~.stats.DomainCounts`. Everything
is written under ``<output>/_staging-<id>/`` and each domain folder is moved to
``<output>/<domain>`` only when every step succeeded (contract files by :mod:`.outputs`), so a
failed run leaves no half-written domain; the staging folder is removed either way, and one left
by a killed run is removed by the next run on the same output (:func:`.staging.remove_stale_staging`).

Each run reports a progress line per domain (:mod:`.progress`); an error raised inside a Beam step
reaches the caller as one :class:`PreprocessingError` line that names the file.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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
from cdanet.preprocessing.glove import check_glove_header
from cdanet.preprocessing.io import DEAD_LETTERS, LINE_COLUMN, ROWS, STATS, WriteDeadLetters
from cdanet.preprocessing.kcore import KCoreFilter, converged
from cdanet.preprocessing.options import PreprocessingError, PreprocessOptions
from cdanet.preprocessing.outputs import finish_domain
from cdanet.preprocessing.progress import Progress, one_line_error, quiet_beam
from cdanet.preprocessing.split import cut_positions
from cdanet.preprocessing.staging import (
    DomainRun,
    Sidecar,
    Staging,
    parquet_read,
    parquet_rows,
    parquet_write,
    promote,
    read_sidecar,
    remove_stale_staging,
)

log = logging.getLogger(__name__)

#: Feature files parsed in the ingest run and joined in the features run.
_FEATURE_ROLES = ("items", "users")


#: Beam's local runner that never tries Prism. Beam 2.77's ``DirectRunner`` first tries the Prism
#: runner for every pipeline Prism supports (measured: our ingest and features runs), and Prism
#: downloads its binary from GitHub on first use; offline that fails and it falls back after the attempt.
LOCAL_RUNNER = "FnApiRunner"
_DIRECT_NAMES = frozenset({"directrunner", "direct"})
#: Seconds between "still running" lines during one Beam run.
HEARTBEAT_SECONDS = 60.0


def default_beam_args() -> list[str]:
    """Beam's local runner in this process (the ``FnApiRunner``, never Prism: see :data:`LOCAL_RUNNER`).

    In one process, not ``multi_processing`` on every core: at the paper's Amazon book size (10.5M
    rows) the multi-process mode lost elements on their way to its worker processes (docs/preprocessing.md,
    Runners), and on 2 cores it was slower at every size measured. ``--direct_running_mode=multi_processing
    --direct_num_workers=N`` still runs (tested), under :func:`check_no_rows_lost`."""
    return [f"--runner={LOCAL_RUNNER}", "--direct_running_mode=in_memory", "--direct_num_workers=1"]


def pipeline_options(beam_args: Sequence[str] | None) -> PipelineOptions:
    """Runner flags pass through, except that ``DirectRunner`` becomes :data:`LOCAL_RUNNER` (the same
    Python runner the DirectRunner would run our batch pipelines on, without its Prism attempt);
    without ``--runner`` the default local runner on every core is added."""
    args = list(beam_args) if beam_args is not None else []
    out: list[str] = []
    has_runner = False
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--runner" and i + 1 < len(args):
            a, i = f"--runner={args[i + 1]}", i + 1
        if a.startswith("--runner="):
            has_runner = True
            if a.split("=", 1)[1].strip().lower() in _DIRECT_NAMES:
                a = f"--runner={LOCAL_RUNNER}"
        out.append(a)
        i += 1
    if not has_runner:
        out = default_beam_args() + out
    return PipelineOptions(out)


@contextmanager
def _beam_run(name: str, ra: _RunArgs) -> Iterator[beam.Pipeline]:
    """One Beam pipeline, run on leaving the block; any failure becomes one ``PreprocessingError`` line.

    While it runs, a heartbeat line every ``HEARTBEAT_SECONDS`` says it still does."""
    log_path: str | None = None
    try:
        with (quiet_beam(ra.verbose) as log_path, ra.say.heartbeat(f"{name} run", HEARTBEAT_SECONDS),
              beam.Pipeline(options=pipeline_options(ra.beam_args)) as p):
            yield p
    except Exception as e:  # noqa: BLE001 - the driver boundary: Beam wraps step errors in its own types
        if log_path:  # the whole chain next to Beam's own output, for whoever reads the log
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write("".join(traceback.format_exception(e)))
        raise one_line_error(name, e, log_path) from e
    if log_path:
        os.unlink(log_path)


def run_preprocessing(
    dataset: str,
    input_dir: str,
    output_dir: str,
    glove_path: str | None = None,
    options: PreprocessOptions | None = None,
    beam_args: list[str] | None = None,
    *,
    verbose: bool = False,
    progress: Progress | None = None,
) -> dict[str, dict]:
    """Preprocess the raw files of ``dataset`` under ``input_dir`` into ``output_dir/<domain>``.

    Writes per domain ``schema.json``, ``stats.json``, ``<split>-SSSSS-of-NNNNN.parquet``,
    ``vocab/<field>.txt``, ``items.parquet`` and ``dead_letter-*.jsonl``; returns the stats of each
    domain. ``beam_args`` are pipeline options passed to Beam as they are (runner, workers, ...),
    except that ``DirectRunner`` runs as :data:`LOCAL_RUNNER`. Progress lines go to ``progress``
    (stderr by default); Beam's own output is kept off the console unless ``verbose``
    (:func:`.progress.quiet_beam`).
    Raises :class:`PreprocessingError` (one line naming the file, field or option) on missing or
    empty files, bad headers, a bad GloVe file, too many malformed lines, a domain emptied by
    k-core, or a field without training values.
    """
    options = (options or PreprocessOptions()).validate(dataset)
    say = progress or Progress()
    domains = options.domains_of(dataset)
    glove_path = _glove_for(domains, glove_path, options.glove_member)
    for stale in remove_stale_staging(output_dir):
        say(f"removed {stale} (left by a run that did not finish)")
    inputs = {dom: DomainInputs(dom, tuple(discover(dataset, dom, input_dir, options.rating_range, options.amazon,
                                                       options.timestamp_range))) for dom in domains}
    staging = Staging(output_dir)
    work = FileSystems.join(staging.path, "_work")
    runs: dict[str, DomainRun] = {}
    try:
        for dom in domains:
            raw = inputs[dom].get("interactions")
            assert raw is not None
            runs[dom] = DomainRun(
                inputs=inputs[dom], layout=LAYOUTS[dom], work=FileSystems.join(work, dom),
                out=FileSystems.join(staging.path, dom),
                row_schema=interaction_schema(raw.fmt.arrow_schema, label_rule(LAYOUTS[dom], options)),
                k=options.k_core[dom],
            )
        run_args = _RunArgs(beam_args, verbose, say)
        _run_ingest(runs, options, run_args, work)
        _run_kcore_until_converged(runs, options, run_args, work)
        _run_features(runs, options, glove_path, run_args, work)
        results = {dom: finish_domain(run, dataset, options, glove_path) for dom, run in runs.items()}
        for dom in domains:
            promote(FileSystems.join(staging.path, dom), FileSystems.join(output_dir, dom))
            split_rows = {n: results[dom]["rows"][n] for n in SPLITS}
            say(f"{dom}: wrote {sum(split_rows.values())} rows ({', '.join(f'{n} {v}' for n, v in split_rows.items())})"
                f" to {FileSystems.join(output_dir, dom)}")
        return results
    finally:
        staging.remove()


@dataclass(frozen=True)
class _RunArgs:
    """What every Beam run of one job shares: runner flags, verbosity, the progress reporter."""

    beam_args: list[str] | None
    verbose: bool
    say: Progress


def _glove_for(domains: Sequence[str], glove_path: str | None, member: str | None) -> str | None:
    """The GloVe file when a domain has title vectors (then it is required, and its first line is
    checked here, before any Beam run), else None."""
    titled = [d for d in domains if LAYOUTS[d].has_titles]
    if titled:
        if not glove_path:
            raise PreprocessingError(f"the titles of {titled} need GloVe vectors: pass glove_path "
                                     "(--glove glove.6B.300d.txt[.gz|.zip])")
        if not FileSystems.exists(glove_path):
            raise PreprocessingError(f"GloVe file {glove_path} does not exist (expected glove.6B.*d.txt[.gz] or a .zip)")
        check_glove_header(glove_path, member)
        return glove_path
    if glove_path:
        log.info("%s has no titles; ignoring the GloVe file %s", list(domains), glove_path)
    return None


def _files_summary(run: DomainRun) -> str:
    parts = []
    for f in run.inputs.files:
        c = run.counts.file(f.path)
        parts.append(f"{os.path.basename(f.path)} {c.lines} lines, {c.parsed} parsed, {c.malformed_total} dead letters")
    return "; ".join(parts)


def _kcore_summary(run: DomainRun) -> str:
    passes = sorted(run.counts.kcore)
    if not passes:
        return "no k-core pass"
    last = run.counts.kcore[passes[-1]]
    removed = sum(run.counts.kcore[p].removed for p in passes)
    return (f"{run.k}-core passes {passes[0]}-{passes[-1]} removed {removed} rows, "
            f"{last.rows} left (last pass removed {last.removed})")


def _run_ingest(runs: Mapping[str, DomainRun], o: PreprocessOptions, ra: _RunArgs, work: str) -> None:
    for dom, run in runs.items():
        ra.say(f"{dom}: ingest run: reading {', '.join(os.path.basename(f.path) for f in run.inputs.files)}, "
               f"first {o.kcore_rounds_per_run} k-core rounds")
    sidecar = Sidecar()
    with _beam_run("ingest", ra) as p:
        for dom, run in runs.items():
            # The first k-core pass partitions by user, as deduplication does: it drops the duplicates too.
            ing = p | f"{dom}/Ingest" >> IngestDomain(run.inputs, o)
            kc = ing[ROWS] | f"{dom}/KCore" >> KCoreFilter(run.k, o.kcore_rounds_per_run, o.num_partitions,
                                                           deduplicate=True)
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
        ra.say(f"{dom}: read {_files_summary(run)}")
        ra.say(f"{dom}: {_kcore_summary(run)}")
        _check_empty_files(run)
        _check_malformed(run, o, {f: ex for f, ex in side["examples"][dom]})


def _run_kcore_until_converged(runs: Mapping[str, DomainRun], o: PreprocessOptions, ra: _RunArgs, work: str) -> None:
    while True:
        pending = {d: run for d, run in runs.items() if not converged(run.counts.removed_by_pass(), run.last_pass)}
        if not pending:
            return
        for dom, run in pending.items():
            ra.say(f"{dom}: k-core not at its fixed point after pass {run.last_pass}; "
                   f"running {o.kcore_rounds_per_run} more round(s)")
        sidecar = Sidecar()
        number = min(run.kcore_run for run in pending.values()) + 1
        with _beam_run(f"k-core continuation {number}", ra) as p:
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
            ra.say(f"{dom}: {_kcore_summary(run)}")


def _run_features(runs: Mapping[str, DomainRun], o: PreprocessOptions, glove_path: str | None,
                  ra: _RunArgs, work: str) -> None:
    for dom, run in runs.items():
        _check_kcore_rows(run, o)
        ra.say(f"{dom}: features run: joins, {'title vectors, ' if run.layout.has_titles else ''}"
               "chronological split, vocabularies, encoding")
    sidecar = Sidecar()
    with _beam_run("features", ra) as p:
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
        check_no_rows_lost(run, o)


def check_no_rows_lost(run: DomainRun, o: PreprocessOptions) -> None:
    """Every row that k-core kept is in exactly one split, each split has the size of the 8:1:1 rule, and the
    written shards hold those rows; else one line saying where rows went missing (a runner that drops
    elements must fail the job, never shrink the data)."""
    kept = run.counts.kcore_pass(run.last_pass).rows
    split_rows = {name: run.counts.split(name).rows for name in SPLITS}
    cuts = cut_positions(kept, o.split_fractions)
    expected = dict(zip(SPLITS, (cuts[0], cuts[1] - cuts[0], kept - cuts[1]), strict=True))
    if split_rows != expected:
        raise PreprocessingError(
            f"domain {run.domain}: the splits hold {sum(split_rows.values())} rows ({split_rows}) but k-core kept "
            f"{kept} (expected {expected}): the runner lost or repeated rows; nothing was written")
    for name in SPLITS:
        pattern = FileSystems.join(run.out, f"{name}-*{PARQUET_SUFFIX}")
        written = parquet_rows(pattern)
        if written != split_rows[name]:
            raise PreprocessingError(
                f"domain {run.domain}: {pattern} holds {written} rows, the {name} split {split_rows[name]}: "
                f"the runner lost or repeated rows while writing; nothing was written")


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


def _check_empty_files(run: DomainRun) -> None:
    """A raw file without a data line is named, with its format, before k-core reports an empty domain."""
    for f in run.inputs.files:
        c = run.counts.file(f.path)
        if c.data_lines == 0:
            what = f"only {c.header} header and {c.blank} blank lines" if c.lines else "no lines"
            raise PreprocessingError(f"{f.path} is empty ({what}): expected {f.fmt.name} data lines")


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
