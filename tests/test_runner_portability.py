"""Runner portability of the Beam preprocessing: what a distributed runner would do differently from an
in-memory single worker, done here with the runners that can run offline.

* several workers in several processes (``--direct_running_mode=multi_processing --direct_num_workers=2``):
  elements are split into bundles differently and arrive in another order; a transform that counts
  on one worker, on arrival order or on module-level state gives other output;
* bundle repetition (``--direct_runner_bundle_repeat=1``: every bundle is processed once more and its
  output discarded, as a runner does when it retries a failed bundle): a DoFn with side effects
  (writing files itself, appending to a global) does them twice.

Every file the job writes must be the same as the in-memory single-worker run's: schemas, stats and
vocabularies byte for byte, parquet splits and dead letters as the same rows (Beam promises neither
row order nor a shard count). ``test_harness_catches_*`` show the comparison fails for transforms that rely
on DirectRunner-only behaviour.
"""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq
import pytest

from cdanet.preprocessing import PreprocessOptions, run_preprocessing
from cdanet.preprocessing.pipeline import pipeline_options
from cdanet.simulate import simulate

SINGLE = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]
MULTI = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
REPEAT = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1",
          "--direct_runner_bundle_repeat=1"]
K = {"movie": 5, "book": 5, "ad": 3, "rec": 5}


_SHARD = re.compile(r"-\d{5}-of-\d{5}")


def job_outputs(root: Path) -> dict[str, Any]:
    """Every output of the job under ``root``, in a form that is the same for the same content.

    Sharded outputs (``<name>-SSSSS-of-NNNNN.<ext>``) are one output: how many shards a runner
    writes is its own choice. Text files (schema, stats, vocabularies) as they are; parquet as its
    schema and its rows, sorted; JSON lines (dead letters) as sorted lines.
    """
    out: dict[str, Any] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = _SHARD.sub("", str(path.relative_to(root)))
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            schema, rows = out.get(rel, (str(table.schema), []))
            assert schema == str(table.schema), rel
            out[rel] = (schema, sorted(rows + [json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist()]))
        elif path.suffix == ".jsonl":
            out[rel] = sorted(out.get(rel, []) + path.read_text().splitlines())
        else:
            assert rel not in out, f"{rel}: sharded text output"
            out[rel] = path.read_text()
    return out


def _diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(set(a) ^ set(b)) + sorted(k for k in set(a) & set(b) if a[k] != b[k])


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    simulate(str(root), dataset="both", scale="tiny", seed=11, malformed_fraction=0.005, duplicate_fraction=0.01)
    return root


def _run(raw: Path, out: Path, beam_args: list[str], dataset: str) -> dict[str, Any]:
    # Two k-core rounds per run: the driver's continuation runs (a second Beam job) are exercised too.
    opts = PreprocessOptions(k_core=K, kcore_rounds_per_run=2, num_partitions=3)
    glove = glob.glob(str(raw / "glove" / "*"))[0] if dataset == "amazon" else None
    run_preprocessing(dataset, str(raw / dataset), str(out), glove_path=glove, options=opts, beam_args=beam_args)
    return job_outputs(out)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["amazon", "taobao"])
def test_multi_process_and_bundle_repeat_match_one_in_memory_worker(raw: Path, tmp_path: Path, dataset: str) -> None:
    reference = _run(raw, tmp_path / "single", SINGLE, dataset)
    assert any(k.endswith("/train.parquet") for k in reference), sorted(reference)
    for name, args in (("multi", MULTI), ("repeat", REPEAT)):
        got = _run(raw, tmp_path / name, args, dataset)
        assert _diff(reference, got) == [], f"{name} ({' '.join(args)}) differs from one in-memory worker"


# ---- the harness fails for transforms that rely on DirectRunner-only behaviour -------------------


def _number_in_arrival_order() -> beam.DoFn:
    """Wrong on purpose: numbers elements by arrival order in one worker's memory.

    Defined in a function so that cloudpickle ships the class by value to the worker processes
    (which cannot import this test module)."""

    class NumberInArrivalOrder(beam.DoFn):
        def setup(self) -> None:
            self.seen = 0

        def process(self, element: str):  # type: ignore[no-untyped-def]
            self.seen += 1
            yield f"{element}:{self.seen}"

    return NumberInArrivalOrder()


def _write_side_file(path: str) -> beam.DoFn:
    """Wrong on purpose: writes a file itself instead of through a sink (a side effect)."""

    class WriteSideFile(beam.DoFn):
        def process(self, element: str):  # type: ignore[no-untyped-def]
            with open(path, "a") as fh:
                fh.write(element + "\n")
            yield element

    return WriteSideFile()


def _toy(out: Path, beam_args: list[str], fn: beam.DoFn) -> dict[str, Any]:
    out.mkdir()
    with beam.Pipeline(options=pipeline_options(beam_args)) as p:
        _ = (p | beam.Create([f"e{i:03d}" for i in range(200)]) | beam.Reshuffle() | beam.ParDo(fn)
             | beam.io.WriteToText(str(out / "part"), file_name_suffix=".jsonl", num_shards=1))
    return job_outputs(out)


@pytest.mark.slow
def test_harness_catches_arrival_order_and_single_worker_state(tmp_path: Path) -> None:
    single = _toy(tmp_path / "single", SINGLE, _number_in_arrival_order())
    multi = _toy(tmp_path / "multi", MULTI, _number_in_arrival_order())
    assert _diff(single, multi) != []


@pytest.mark.slow
def test_harness_catches_side_effects_under_bundle_repeat(tmp_path: Path) -> None:
    def side_lines(name: str, args: list[str]) -> dict[str, Any]:
        _toy(tmp_path / name, args, _write_side_file(str(tmp_path / f"{name}.side.jsonl")))
        os.replace(tmp_path / f"{name}.side.jsonl", tmp_path / name / "side.jsonl")
        return job_outputs(tmp_path / name)

    assert _diff(side_lines("single", SINGLE), side_lines("repeat", REPEAT)) == ["side.jsonl"]
