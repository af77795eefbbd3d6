"""Command line of the studies.

    python -m cdanet.studies {table2,table5,fig5,fig6,table4,all} --processed DIR --output DIR
        [--dataset amazon] [--spec spec.yaml] [--tiny] [--seeds 0 1 2] [--models mlp cdanet]
        [--targets movie] [--set model.x=y ...] [--oracle-from SIM_DIR] [--model-dir DIR] [--k 5]

Every table gets reference rows on the same test rows: item popularity and id-only logistic
regression (and the base rate's logloss); with --oracle-from also the learnable ceilings and the
oracle. Flags override the spec file, which overrides the defaults (the paper's protocol). Exit status: 0
when every run succeeded, 1 when some run failed (its row is kept, marked failed), 2 on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence

from cdanet.config import MODEL_NAMES, ConfigError
from cdanet.contract import SchemaError
from cdanet.studies.spec import STUDIES, StudySpec, StudySpecError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cdanet.studies", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", choices=[*STUDIES, "all"], help="which study to run ('all': every one)")
    p.add_argument("--processed", required=True, help="processed data root (<root>/<domain>/schema.json + splits)")
    p.add_argument("--output", required=True, help="folder for the CSV/Markdown/PNG files and the cached runs")
    p.add_argument("--dataset", choices=["amazon", "taobao"], default=None,
                   help="dataset of --processed (default: the spec's, else inferred from the folder)")
    p.add_argument("--spec", default=None, help="YAML/JSON study spec (see docs/studies.md)")
    p.add_argument("--tiny", action="store_true", help="the tiny test variant: one seed, one epoch, few models")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=None, help="models of table2 and fig5")
    p.add_argument("--targets", nargs="+", default=None, help="target domains (default: both)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override for every run, e.g. --set train.max_epochs=5 (repeatable)")
    p.add_argument("--oracle-from", default=None, metavar="SIM_DIR",
                   help="simulator output folder: add the learnable ceilings (tastes inferred from pre-test rows) "
                        "and the oracle (true click probabilities) to the reference rows")
    p.add_argument("--model-dir", default=None, help="table4: use this translation-network model directory")
    p.add_argument("--k", type=int, default=None, help="table4: neighbours per item (default 5)")
    p.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    return p


def resolve_spec(args: argparse.Namespace) -> StudySpec:
    """Defaults <- spec file (or --tiny) <- flags; the dataset falls back to the processed folder's."""
    from cdanet.studies.study import infer_dataset

    explicit_dataset = args.dataset
    if args.spec and args.tiny:
        raise StudySpecError("--tiny and --spec exclude each other; put `profile: tiny` (and fewer runs) in the spec")
    if args.spec:
        spec = StudySpec.load(args.spec)
        explicit_dataset = explicit_dataset or spec.dataset
    else:
        dataset = explicit_dataset or infer_dataset(args.processed)
        spec = StudySpec.tiny(dataset) if args.tiny else StudySpec(dataset=dataset)
    changes: dict = {"dataset": explicit_dataset, "seeds": args.seeds, "targets": args.targets}
    if args.overrides:
        changes["overrides"] = [*spec.overrides, *args.overrides]
    spec = spec.with_changes(**changes)
    if args.models:
        spec.table2 = dataclasses.replace(spec.table2, models=list(args.models))
        spec.fig5 = dataclasses.replace(spec.fig5, models=list(args.models))
    if args.k is not None:
        spec.table4 = dataclasses.replace(spec.table4, k=args.k)
    return spec.validate("command line")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.no_progress else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cdanet.studies.study import run_studies

    studies = list(STUDIES) if args.study == "all" else [args.study]
    try:
        spec = resolve_spec(args)
        results = run_studies(studies, args.processed, args.output, spec, progress=not args.no_progress,
                              oracle_from=args.oracle_from, model_dir=args.model_dir)
    except (StudySpecError, ConfigError, SchemaError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = sum(int((df["status"] != "ok").sum()) for df in results.values() if "status" in df)
    for study in results:
        print(f"{study}: {args.output}/{study}.md")
    if failed:
        print(f"{failed} run(s) failed; see the 'error' column of the CSV files", file=sys.stderr)
        return 1
    return 0
