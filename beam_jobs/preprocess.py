"""Beam job: raw Amazon / Taobao files -> processed domains (schema.json + parquet splits).

    python -m beam_jobs.preprocess --dataset amazon --input RAW/amazon --glove glove.6B.300d.txt \\
        --output processed/amazon [--k-core movie=5,book=10] [beam pipeline options]

Flags this job does not know (``--runner``, ``--direct_num_workers``, ``--flink_master``, ...) are
Beam pipeline options and pass through untouched; without ``--runner`` Beam's local runner runs on
every core. The job prints one progress line per stage and domain; ``--verbose`` adds Beam's own
logging and, on failure, the traceback. All logic lives in :func:`cdanet.preprocessing.run_preprocessing`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Sequence

from cdanet.preprocessing import PreprocessingError, PreprocessOptions, run_preprocessing
from cdanet.preprocessing.options import DEFAULT_K_CORE


def parse_k_core(text: str) -> dict[str, int]:
    """``"movie=5,book=10"`` -> ``{"movie": 5, "book": 10}``."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in DEFAULT_K_CORE or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"--k-core {text!r}: expected DOMAIN=K[,DOMAIN=K] with DOMAIN in {sorted(DEFAULT_K_CORE)} and K >= 1"
            )
        out[name.strip()] = int(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m beam_jobs.preprocess", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=("amazon", "taobao"))
    p.add_argument("--input", required=True, help="folder of the raw files (local, gs://, s3://)")
    p.add_argument("--output", required=True, help="processed root; one folder per domain is written")
    p.add_argument("--glove", default=None, help="GloVe text file (.txt, .gz or .zip); required for amazon")
    p.add_argument("--glove-member", default=None, help="member of a GloVe .zip, e.g. glove.6B.300d.txt")
    p.add_argument("--k-core", type=parse_k_core, default={}, help="per-domain k, e.g. movie=5,book=10")
    p.add_argument("--domains", default=None, help="comma-separated subset of the dataset's domains")
    p.add_argument("--rating-threshold", type=float, default=3.0, help="Amazon: rating > threshold is positive")
    p.add_argument("--positive-behaviors", default="buy", help="Taobao rec: comma-separated positive behavior types")
    p.add_argument("--malformed-threshold", type=float, default=0.01, help="fail when a file has more malformed lines")
    p.add_argument("--max-timestamp", type=int, default=None, help="drop rows after this unix time")
    p.add_argument("--window-days", type=int, default=None, help="keep only the last N days")
    p.add_argument("--vocab-min-count", type=int, default=1)
    p.add_argument("--num-partitions", type=int, default=16)
    p.add_argument("--kcore-rounds-per-run", type=int, default=3)
    p.add_argument("--verbose", action="store_true",
                   help="show Beam's own logging, and the full traceback of an error")
    return p


def options_from_args(args: argparse.Namespace) -> PreprocessOptions:
    opts = PreprocessOptions(
        rating_threshold=args.rating_threshold,
        positive_behaviors=tuple(b.strip() for b in args.positive_behaviors.split(",") if b.strip()),
        malformed_threshold=args.malformed_threshold,
        max_timestamp=args.max_timestamp,
        window_days=args.window_days,
        vocab_min_count=args.vocab_min_count,
        num_partitions=args.num_partitions,
        kcore_rounds_per_run=args.kcore_rounds_per_run,
        glove_member=args.glove_member,
        domains=tuple(d.strip() for d in args.domains.split(",")) if args.domains else None,
    )
    return opts.with_k_core(args.k_core).validate(args.dataset)


def run(argv: Sequence[str] | None = None) -> dict[str, dict]:
    """Parse the job's flags, pass the rest to Beam, run, print a per-domain summary."""
    args, beam_args = build_parser().parse_known_args(argv)
    stats = run_preprocessing(args.dataset, args.input, args.output, glove_path=args.glove,
                              options=options_from_args(args), beam_args=beam_args, verbose=args.verbose)
    for domain, s in stats.items():
        summary = {k: s["rows"][k] for k in ("read", "malformed_total", "duplicates", "after_kcore", "train",
                                             "validation", "test")}
        print(f"{domain}: {json.dumps(summary)} users={s['users']} items={s['items']}")
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    verbose = "--verbose" in (sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        run(argv)
    except PreprocessingError as e:
        if verbose:
            traceback.print_exception(e, file=sys.stderr)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
