"""Training: the trainer loop (both CDAnet stages and the baselines) and whole experiments."""

from cdanet.training.checkpoint import CheckpointMismatchError
from cdanet.training.experiment import (
    ExperimentResult,
    evaluate_model_dir,
    finetune,
    fit_stages,
    plan_stages,
    pretrain,
    run_experiment,
)
from cdanet.training.trainer import STAGES, NonFiniteLossError, TrainResult, resolve_device, train_model

__all__ = [
    "STAGES",
    "CheckpointMismatchError",
    "ExperimentResult",
    "NonFiniteLossError",
    "TrainResult",
    "evaluate_model_dir",
    "finetune",
    "fit_stages",
    "plan_stages",
    "pretrain",
    "resolve_device",
    "run_experiment",
    "train_model",
]
