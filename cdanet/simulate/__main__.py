"""CLI: ``python -m cdanet.simulate --output DIR [--dataset ...] [--scale ...] [--seed N] ...``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from cdanet.simulate.amazon import AMAZON_FORMATS
from cdanet.simulate.core import DATASET_CHOICES, MANIFEST_FILENAME, ground_truth_auc, simulate
from cdanet.simulate.sizes import SCALES


def _size_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"size override {text!r} is not of the form key=value (e.g. movie_rows=5000)")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cdanet.simulate",
        description="Write synthetic Amazon/Taobao raw files in the public formats, with ground truth.",
    )
    p.add_argument("--output", required=True, help="output folder (created if missing)")
    p.add_argument("--dataset", choices=DATASET_CHOICES, default="both")
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amazon-format", choices=AMAZON_FORMATS, default="2014csv")
    p.add_argument("--malformed-fraction", type=float, default=0.0,
                   help="fraction of malformed lines injected per raw file (recorded in manifest.json)")
    p.add_argument("--duplicate-fraction", type=float, default=0.0,
                   help="fraction of exact duplicate interaction rows (recorded in manifest.json)")
    p.add_argument("--glove-dim", type=int, default=50)
    p.add_argument("--gzip", action="store_true", help="write the Amazon ratings/metadata files gzipped")
    p.add_argument("--size", action="append", type=_size_override, default=[], metavar="KEY=VALUE",
                   help="size override, repeatable (e.g. --size movie_rows=5000 --size n_users=300)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = simulate(
            args.output, dataset=args.dataset, scale=args.scale, seed=args.seed, amazon_format=args.amazon_format,
            malformed_fraction=args.malformed_fraction, duplicate_fraction=args.duplicate_fraction,
            glove_dim=args.glove_dim, gzip=args.gzip, **dict(args.size),
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    print(f"simulated {args.dataset} ({args.scale}, seed {args.seed}) into {args.output} in {elapsed:.1f}s")
    for domain, info in manifest.domains.items():
        print(f"  {domain:<6} rows {info['rows']:>10,}  users {info['users']:>8,}  items {info['items']:>8,}  "
              f"positive rate {info['positive_rate']:.3f}  oracle AUC {ground_truth_auc(args.output, domain):.3f}")
    for dataset, n in manifest.shared_users.items():
        print(f"  {dataset}: {n:,} users in both domains")
    n_bad = sum(sum(r.values()) for r in manifest.malformed_injected.values())
    n_dup = sum(manifest.duplicates_injected.values())
    if n_bad or n_dup:
        print(f"  injected {n_bad:,} malformed lines and {n_dup:,} duplicate rows (see {MANIFEST_FILENAME})")
    print(f"  manifest: {args.output}/{MANIFEST_FILENAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
