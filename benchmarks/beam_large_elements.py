"""Reproduces the element loss of Beam's multi-process local runner (docs/preprocessing.md, Performance).

Makes ``--elements`` pyarrow tables of ``--rows`` rows each (about 50 bytes per row), counts their rows
in a fused step and again in a step that waits for a side input, and prints both. On Beam 2.77 with 2
worker processes, 6 tables of 3M rows (~150 MB each) reached the side-input step as 4, silently; 12
tables of 1M rows all arrived. The preprocessing job keeps its elements at <= 100k rows for this reason
(``cdanet.preprocessing.tables.MAX_ELEMENT_ROWS``).

    python -m benchmarks.beam_large_elements --rows 3000000 --elements 6
"""

from __future__ import annotations

import argparse

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions


def make(i: int, rows: int) -> pa.Table:
    r = np.arange(rows)
    return pa.table({"i": np.full(rows, i), "ts": r, "s": pa.array([f"user{x:012d}title words here {x}" for x in r])})


def report(delivered: int, counted: int, rows: int, elements: int) -> None:
    print(f"elements {elements} of {rows} rows: counted {counted} rows in the producing stage, "
          f"{delivered} delivered to the side-input stage ({'LOST ' + str(counted - delivered) if delivered != counted else 'none lost'})",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--elements", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mode", default="multi_processing", choices=["multi_processing", "multi_threading", "in_memory"])
    args = ap.parse_args()
    opts = PipelineOptions(["--runner=FnApiRunner", f"--direct_running_mode={args.mode}",
                            f"--direct_num_workers={args.workers}"])
    with beam.Pipeline(options=opts) as p:
        tables = p | beam.Create(list(range(args.elements))) | beam.Reshuffle() | beam.Map(make, args.rows)
        counted = tables | "Count" >> beam.Map(lambda t: t.num_rows) | "SumCounted" >> beam.CombineGlobally(sum)
        delivered = (tables | "AfterSide" >> beam.Map(lambda t, _: t.num_rows, beam.pvalue.AsSingleton(counted))
                     | "SumDelivered" >> beam.CombineGlobally(sum))
        _ = delivered | beam.Map(report, beam.pvalue.AsSingleton(counted), args.rows, args.elements)


if __name__ == "__main__":
    main()
