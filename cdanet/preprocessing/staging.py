"""The driver's scratch space: staged parquet between runs, the JSONL sidecar, and promotion of finished domains.

A preprocessing run writes everything under ``<output>/_staging-<id>/``: the parquet that one Beam
run hands to the next (k-cored rows, parsed feature files), one JSONL sidecar per run with the
small results the driver needs (counts, malformed-line examples, vocabularies, split cut keys),
and each domain's finished folder, which :func:`promote` moves into place. All paths go through
Beam's ``FileSystems``, so the same code writes to local disk and to object stores.

A run that is killed (SIGKILL, OOM, a preempted node) cannot remove its staging folder, so the next
run on the same output removes it (:func:`remove_stale_staging`). A live run is never touched: on a
local disk each run holds an exclusive ``flock`` on ``<staging>/_owner.lock`` for its whole life (the
kernel drops it when the process dies, however it dies), and a folder is stale exactly when that
lock can be taken. On an object store there are no locks; a folder counts as stale once its newest
file is older than ``STALE_REMOTE_SECONDS``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from cdanet.contract import PARQUET_SUFFIX
from cdanet.preprocessing.composites import DomainInputs
from cdanet.preprocessing.domains import DomainLayout
from cdanet.preprocessing.stats import DomainCounts
from cdanet.preprocessing.tables import conform

log = logging.getLogger(__name__)

STAGING_PREFIX = "_staging-"
OWNER_LOCK = "_owner.lock"
#: Object stores: a staging folder whose newest file is older than this is stale (no live run
#: writes nothing for a day: every Beam run writes its outputs and sidecar well within that).
STALE_REMOTE_SECONDS = 24 * 3600
#: Local disks: a staging folder without an owner lock (a run killed between creating it and
#: locking it) is stale after this long.
STALE_UNLOCKED_SECONDS = 600

#: Malformed-line examples kept per raw file for the error message of the malformed check.
EXAMPLES_PER_FILE = 3
SIDECAR_SUFFIX = ".jsonl"


@dataclass
class DomainRun:
    """One domain across the runs of a preprocessing job: its inputs, staged folders, k-core progress, results.

    ``work``: staged parquet between runs (``kcore-NNN-*.parquet``, parsed feature files);
    ``out``: the domain's finished folder before :func:`promote`; ``kcore_run`` / ``last_pass``: the
    latest k-core output and the last pass it ran; ``counts``, ``vocabs`` and ``cuts`` are filled
    from the sidecars.
    """

    inputs: DomainInputs
    layout: DomainLayout
    work: str
    out: str
    row_schema: pa.Schema
    k: int
    kcore_run: int = 0
    last_pass: int = 0
    counts: DomainCounts = field(default_factory=DomainCounts)
    vocabs: dict[str, list[str]] = field(default_factory=dict)
    cuts: list[Any] | None = None

    @property
    def domain(self) -> str:
        return self.inputs.domain

    def kcore_prefix(self, run: int) -> str:
        return FileSystems.join(self.work, f"kcore-{run:03d}")

    def kcore_pattern(self) -> str:
        return f"{self.kcore_prefix(self.kcore_run)}-*{PARQUET_SUFFIX}"

    def staged_prefix(self, role: str) -> str:
        """Where the parsed rows of the ``items`` / ``users`` feature file wait for the features run."""
        return FileSystems.join(self.work, role)

    def record_counts(self, records: list[Any]) -> None:
        for key, value in records:
            self.counts.record(key, value)


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
            | f"{domain}/FirstExamples" >> beam.combiners.Top.SmallestPerKey(EXAMPLES_PER_FILE)
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
            | "Sidecar/Write" >> beam.io.WriteToText(prefix, file_name_suffix=SIDECAR_SUFFIX)
        )


def read_sidecar(prefix: str) -> dict[str, dict[str, list[Any]]]:
    """``{kind: {domain: [payload, ...]}}`` from the sidecar files of one run."""
    out: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for kind, domain, payload in _read_json_lines(f"{prefix}-*{SIDECAR_SUFFIX}"):
        out[kind][domain].append(payload)
    return out


def _read_json_lines(pattern: str) -> list[Any]:
    out = []
    for match in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(match.path) as fh:
            out += [json.loads(line) for line in fh.read().decode("utf-8").splitlines() if line.strip()]
    return out


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path) as fh:
        fh.write(data)


def parquet_read(pattern: str) -> beam.PTransform:
    return beam.io.ReadFromParquetBatched(pattern)


def parquet_rows(pattern: str) -> int:
    """The rows of the parquet files matching ``pattern``, from their footers (through Beam's filesystems)."""
    total = 0
    for m in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(m.path) as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total


def parquet_write(prefix: str, schema: pa.Schema, **kwargs: Any) -> beam.PTransform:
    """Shards ``<prefix>-SSSSS-of-NNNNN.parquet`` (the split file names of :mod:`cdanet.contract.layout`)."""
    kwargs = {"file_name_suffix": PARQUET_SUFFIX, **kwargs}
    return beam.Map(conform, schema) | beam.io.WriteToParquetBatched(prefix, schema, **kwargs)


def promote(src: str, dst: str) -> None:
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


class Staging:
    """This run's ``<output>/_staging-<id>/``, locked by this process while it lives (local disks)."""

    def __init__(self, output_dir: str) -> None:
        self.path = FileSystems.join(output_dir, f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
        self._lock_fd: int | None = None
        if _is_local(self.path):
            os.makedirs(self.path)
            # Not inherited by Beam's worker processes (Python's descriptors are non-inheritable), so
            # the lock dies with this process and only with it.
            self._lock_fd = os.open(os.path.join(self.path, OWNER_LOCK), os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(self._lock_fd, f"{os.getpid()} {time.time():.0f}\n".encode())

    def remove(self) -> None:
        """Delete the folder and release the lock (both idempotent)."""
        try:
            if _is_local(self.path):
                shutil.rmtree(self.path, ignore_errors=True)
            elif FileSystems.exists(self.path):
                FileSystems.delete([self.path])
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


def remove_stale_staging(output_dir: str, now: float | None = None) -> list[str]:
    """Remove the staging folders of dead runs under ``output_dir``; returns the removed paths.

    Local: a folder whose owner lock can be taken (its run is gone), or that has no owner lock and
    is older than ``STALE_UNLOCKED_SECONDS``. Object stores: a folder whose newest file is older than
    ``STALE_REMOTE_SECONDS``. Only ``_staging-*`` folders directly under ``output_dir`` are looked at.
    """
    now = time.time() if now is None else now
    removed: list[str] = []
    if _is_local(output_dir):
        if not os.path.isdir(output_dir):
            return removed
        for name in sorted(os.listdir(output_dir)):
            path = os.path.join(output_dir, name)
            if name.startswith(STAGING_PREFIX) and os.path.isdir(path) and not os.path.islink(path) \
                    and _local_stale(path, now):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    else:
        try:
            removed = _remove_stale_remote(output_dir, now)
        except Exception as e:  # noqa: BLE001 - cleaning up after others must never fail this run
            log.warning("could not look for stale staging folders under %s: %s", output_dir, e)
    for path in removed:
        log.info("removed %s, left by a run that did not finish", path)
    return removed


def _remove_stale_remote(output_dir: str, now: float) -> list[str]:
    newest: dict[str, float] = {}
    pattern = FileSystems.join(output_dir, f"{STAGING_PREFIX}*")
    for m in FileSystems.match([FileSystems.join(pattern, "**")])[0].metadata_list:
        folder = m.path[len(output_dir.rstrip("/")) + 1:].split("/", 1)[0]
        top = FileSystems.join(output_dir, folder)
        newest[top] = max(newest.get(top, 0.0), m.last_updated_in_seconds or 0.0)
    removed = []
    for top, t in sorted(newest.items()):
        if now - t > STALE_REMOTE_SECONDS:
            FileSystems.delete([top])
            removed.append(top)
    return removed


def _local_stale(path: str, now: float) -> bool:
    lock = os.path.join(path, OWNER_LOCK)
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return now - os.path.getmtime(path) > STALE_UNLOCKED_SECONDS
    except OSError:
        return False  # not ours to judge (permissions): leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live run holds it
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the lock taken just above, if any
    return True


def _is_local(path: str) -> bool:
    return "://" not in path
