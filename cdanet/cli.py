"""The ``cdanet`` command line.

Sub-commands live in a registry: a module adds one with :func:`register_command` (a name, a help
line, a function that adds its arguments, and a function that runs it and returns the exit code),
so new verbs do not touch the parser plumbing. Heavy imports happen inside the run functions, which
keeps ``cdanet --help`` instant.

Exit codes: 0 success, 2 invalid arguments or config (reported before any data is loaded),
1 a failure while running.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cdanet.config import ABLATIONS, DATASETS, MODEL_NAMES, PROFILES, ConfigError, ExperimentConfig

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register_command(
    name: str,
    help: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Add a sub-command ``cdanet <name>``; names must be unique."""
    if name in COMMANDS:
        raise ValueError(f"cdanet sub-command {name!r} is already registered")
    COMMANDS[name] = Command(name, help, add_arguments, run)


# ---- train --------------------------------------------------------------------------------------


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--processed", required=True, metavar="DIR", help="processed root (<DIR>/<domain>/schema.json + parquet)")
    p.add_argument("--output", required=True, metavar="DIR", help="output directory (model/, predictions, metrics)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="paper", help="config profile (default: paper)")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="amazon")
    p.add_argument("--target", metavar="DOMAIN", default=None, help="target domain (default: the sparse one)")
    p.add_argument("--model", choices=MODEL_NAMES, default="cdanet")
    p.add_argument("--ablation", choices=ABLATIONS, default=None, help="CDAnet ablation (Table 5)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable, e.g. --set model.alpha=0.05 --set train.max_epochs=5")
    p.add_argument("--checkpoint-dir", metavar="DIR", default=None, help="resume from / write epoch checkpoints here")


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    """The validated config of ``cdanet train`` arguments; raises ConfigError."""
    if args.target is not None and args.target not in DATASETS[args.dataset]:
        raise ConfigError(f"--target {args.target!r} is not a domain of {args.dataset!r}; expected one of {DATASETS[args.dataset]}")
    cfg = PROFILES[args.profile](args.dataset, args.target, args.model)
    overrides = ([f"model.ablation={args.ablation}"] if args.ablation else []) + list(args.overrides)
    return cfg.with_overrides(overrides).validate()


def _run_train(args: argparse.Namespace) -> int:
    try:
        cfg = build_config(args)
    except ConfigError as e:
        print(f"cdanet train: {e}", file=sys.stderr)
        return EXIT_USAGE
    from cdanet.training import run_experiment

    result = run_experiment(cfg, args.processed, args.output, checkpoint_dir=args.checkpoint_dir)
    print(f"model {cfg.model.name} (ablation {cfg.model.ablation}), target {cfg.target_domain}; test metrics:")
    _print_metrics(result.test)
    print(f"model directory: {result.model_dir}\npredictions: {result.predictions_path}\nmetrics: {result.metrics_path}")
    return EXIT_OK


# ---- evaluate -----------------------------------------------------------------------------------


def _add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", required=True, metavar="DIR", help="a model directory written by `cdanet train`")
    p.add_argument("--processed", required=True, metavar="DIR", help="processed root with the split to score")
    p.add_argument("--split", choices=("train", "validation", "test"), default="test")
    p.add_argument("--output", metavar="DIR", default=None, help="write predictions.parquet and metrics.json here")


def _run_evaluate(args: argparse.Namespace) -> int:
    from cdanet.training import evaluate_model_dir

    result = evaluate_model_dir(args.model_dir, args.processed, split=args.split, predictions_dir=args.output)
    print(f"{args.split} metrics of {args.model_dir}:")
    _print_metrics(result)
    return EXIT_OK


def _print_metrics(result: object) -> None:
    from cdanet.evaluation import EvaluationResult

    assert isinstance(result, EvaluationResult)
    print(f"  {'domain':<10} {'AUC':>8} {'logloss':>8} {'rows':>10} {'pos.rate':>8}")
    for d, m in result.domains.items():
        print(f"  {d:<10} {m.auc:>8.4f} {m.logloss:>8.4f} {m.n:>10d} {m.positive_rate:>8.3f}")


register_command("train", "train and evaluate one model (both CDAnet stages)", _add_train_arguments, _run_train)
register_command("evaluate", "score a processed split with a model directory", _add_evaluate_arguments, _run_evaluate)


# ---- entry point --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdanet", description="CDAnet cross-domain CTR prediction")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS.values():
        cmd.add_arguments(sub.add_parser(cmd.name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``cdanet = cdanet.cli:main``); returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command].run(args)
    except ConfigError as e:
        print(f"cdanet {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, ValueError) as e:
        # Expected, user-facing failures (bad paths, schema/data mismatches): one clear line, no traceback.
        print(f"cdanet {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
