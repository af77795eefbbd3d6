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
import os
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


def one_line(error: BaseException) -> str:
    """An error's message on one line (a config's list of problems joined with "; ")."""
    lines = [ln.strip().removeprefix("- ") for ln in str(error).splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} " + "; ".join(lines[1:])
    return " ".join(lines)


# ---- train --------------------------------------------------------------------------------------


def _add_config_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments :func:`build_config` reads, shared by train, tune and tune-trial."""
    p.add_argument("--processed", required=True, metavar="DIR", help="processed root (<DIR>/<domain>/schema.json + parquet)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="paper", help="config profile (default: paper)")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="amazon")
    p.add_argument("--target", metavar="DOMAIN", default=None, help="target domain (default: the sparse one)")
    p.add_argument("--model", choices=MODEL_NAMES, default="cdanet")
    p.add_argument("--ablation", choices=ABLATIONS, default=None, help="CDAnet ablation (Table 5)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable, e.g. --set model.alpha=0.05 --set train.max_epochs=5")


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    _add_config_arguments(p)
    p.add_argument("--output", required=True, metavar="DIR", help="output directory (model/, predictions, metrics)")
    p.add_argument("--checkpoint-dir", metavar="DIR", default=None, help="resume from / write epoch checkpoints here")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training; launch with torchrun (automatic when WORLD_SIZE > 1); rank 0 writes --output")


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
        print(f"cdanet train: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    from cdanet.training import distributed, run_experiment

    if args.distributed or distributed.launched_by_torchrun():
        if not distributed.launched_by_torchrun():
            print("cdanet train: --distributed needs torchrun (WORLD_SIZE > 1), e.g. "
                  "torchrun --nproc_per_node=2 -m cdanet.cli train ... --distributed", file=sys.stderr)
            return EXIT_USAGE
        distributed.init_from_env(cfg.train.device)
        try:
            with distributed.rank_output(args.output) as output:  # rank 0 writes --output
                result = run_experiment(cfg, args.processed, output, checkpoint_dir=args.checkpoint_dir)
        finally:
            distributed.shutdown()
        if int(os.environ["RANK"]) != 0:
            return EXIT_OK
    else:
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


# ---- tune / tune-trial --------------------------------------------------------------------------


def _add_tune_arguments(p: argparse.ArgumentParser) -> None:
    _add_config_arguments(p)
    p.add_argument("--output", metavar="DIR", default=None,
                   help="study folder: study.db (resumable), best_config.json, trials.csv (required unless --katib-manifest)")
    p.add_argument("--trials", type=int, default=20, metavar="N",
                   help="finished trials the study should hold; a resumed study runs only the missing ones (default 20)")
    p.add_argument("--space", metavar="YAML", default=None,
                   help="search space {dotted.key: {type: float|int|categorical, ...}} (default: a CTR space for --model)")
    p.add_argument("--seed", type=int, default=None, help="TPE sampler seed (default: the config's train.seed)")
    p.add_argument("--pruner", choices=("median", "none"), default="median", help="trial pruning (default: median)")
    p.add_argument("--study-name", default=None, help="default cdanet-<dataset>-<target>-<model>")
    k = p.add_argument_group("Katib (write the same search as a Katib Experiment instead of running it)")
    k.add_argument("--katib-manifest", metavar="FILE", default=None,
                   help="write the Experiment YAML here and exit; --processed is then the path inside the trial container")
    k.add_argument("--katib-name", default=None, help="Experiment name (default: the study name)")
    k.add_argument("--namespace", default="cdanet")
    k.add_argument("--image", default=None, help="the project's image (default ghcr.io/cdanet/cdanet:<version>)")
    k.add_argument("--katib-pvc", default="cdanet-processed-data", help="PVC mounted read-only at /data/processed ('' for none)")
    k.add_argument("--katib-parallel", type=int, default=1, metavar="N", help="trials at a time (default 1)")
    k.add_argument("--katib-gpu", action="store_true", help="one GPU per trial")


def _run_tune(args: argparse.Namespace) -> int:
    from cdanet import tuning

    cfg = build_config(args)
    fixed = ([f"model.ablation={args.ablation}"] if args.ablation else []) + list(args.overrides)
    space = tuning.SearchSpace.load(args.space) if args.space else tuning.default_space(cfg.model.name, args.profile)
    space.validate(cfg, [f.split("=", 1)[0].strip() for f in fixed])
    if args.katib_manifest:
        return _write_katib(args, cfg, space)
    if not args.output:
        print("cdanet tune: --output is required (or --katib-manifest)", file=sys.stderr)
        return EXIT_USAGE
    import optuna

    optuna.logging.set_verbosity(getattr(optuna.logging, args.log_level))  # one line per trial at INFO
    try:
        result = tuning.run_study(cfg, args.processed, args.output, space, n_trials=args.trials, fixed=fixed,
                                  seed=args.seed, pruner=args.pruner, study_name=args.study_name)
    except RuntimeError as e:
        print(f"cdanet tune: {e}", file=sys.stderr)
        return EXIT_FAILURE
    print(result.summary())
    return EXIT_OK


def _write_katib(args: argparse.Namespace, cfg: ExperimentConfig, space: object) -> int:
    from cdanet import katib
    from cdanet.atomic import write_text
    from cdanet.tuning import study_name_for

    settings = katib.KatibSettings(
        name=args.katib_name or study_name_for(cfg).replace("_", "-"), namespace=args.namespace,
        image=args.image or katib.DEFAULT_IMAGE, max_trials=args.trials, parallel_trials=args.katib_parallel,
        max_failed_trials=min(3, args.trials), seed=cfg.train.seed if args.seed is None else args.seed,
        pvc=args.katib_pvc or None, gpu=args.katib_gpu,
    )
    obj = katib.experiment(cfg, space, settings, processed=args.processed, profile=args.profile,
                           fixed=list(args.overrides))
    write_text(args.katib_manifest, katib.to_yaml(obj))
    print(f"Katib Experiment {settings.namespace}/{settings.name} ({len(space.keys)} parameters, "
          f"{settings.max_trials} trials): {args.katib_manifest}\napply with: kubectl apply -f {args.katib_manifest}")
    return EXIT_OK


def _add_tune_trial_arguments(p: argparse.ArgumentParser) -> None:
    _add_config_arguments(p)


def _run_tune_trial(args: argparse.Namespace) -> int:
    from cdanet.katib import METRIC_NAME
    from cdanet.tuning import validation_auc

    cfg = build_config(args)
    value, stages = validation_auc(cfg, args.processed)
    for name, s in stages.items():
        print(f"{name}: best validation AUC {s['best_val_auc']:.6f} at epoch {s['best_epoch']} of {s['epochs']}")
    # Katib's StdOut collector reads `name=value` lines (its default filter has no exponent form).
    print(f"{METRIC_NAME}={value:.6f}", flush=True)
    return EXIT_OK


register_command("tune", "search hyperparameters on the validation AUC (Optuna TPE; or write a Katib Experiment)",
                 _add_tune_arguments, _run_tune)
register_command("tune-trial", "train one config, print its validation AUC as val_auc=<value> (a Katib trial)",
                 _add_tune_trial_arguments, _run_tune_trial)


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
        print(f"cdanet {args.command}: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, ValueError) as e:
        # Expected, user-facing failures (bad paths, schema/data mismatches): one clear line, no traceback.
        print(f"cdanet {args.command}: {type(e).__name__}: {one_line(e)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
