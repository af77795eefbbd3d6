"""End-of-epoch training checkpoints: atomic writes, a run fingerprint, exact resume.

A checkpoint holds everything that influences the remaining epochs: model and optimizer state, the
torch RNG state (dropout), the epoch count, history, early-stopping state and the best weights so
far. The batch order needs no state because :class:`~cdanet.data.TwoDomainSampler` derives each
epoch from (seed, epoch). Together this makes a resumed CPU run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import torch

from cdanet.atomic import replacing
from cdanet.config import ExperimentConfig
from cdanet.contract import DomainSchema

CHECKPOINT_FORMAT = 1

#: TrainConfig keys that may change between an interrupted run and its resumption without changing
#: the weights of the epochs they share: how long to run, where, how fast, how verbosely.
RESUMABLE_KEYS: frozenset[str] = frozenset(
    {"max_epochs", "finetune_max_epochs", "patience", "min_delta", "device", "num_threads", "eval_batch_size", "progress",
     "retain_heap", "flush_denormal"}
)


class CheckpointMismatchError(ValueError):
    """A checkpoint belongs to a different config, schema, stage or model than the current run."""


def checkpoint_path(checkpoint_dir: str, stage: str) -> str:
    """One file per stage, so both CDAnet stages can share a checkpoint directory."""
    return os.path.join(checkpoint_dir, f"{stage}.ckpt.pt")


def run_identity(
    cfg: ExperimentConfig, stage: str, model: torch.nn.Module, schemas: Mapping[str, DomainSchema],
    train_rows: Mapping[str, int],
) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed (JSON-ready)."""
    config = cfg.to_dict()
    config["train"] = {k: v for k, v in config["train"].items() if k not in RESUMABLE_KEYS}
    return {
        "stage": stage,
        "model_class": type(model).__name__,
        "config": config,
        "schemas": {d: s.fingerprint() for d, s in sorted(schemas.items())},
        "train_rows": dict(sorted(train_rows.items())),
    }


def fingerprint(identity: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [f"{prefix}: checkpoint {a!r} vs now {b!r}"]


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same directory + ``os.replace``)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replacing(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)


def load_checkpoint(path: str, identity: Mapping[str, Any], map_location: torch.device | str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if there is one; raise if it belongs to a different run."""
    if not os.path.exists(path):
        return None
    state = torch.load(path, map_location=map_location, weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(f"{path} has checkpoint format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    if state.get("fingerprint") != fingerprint(identity):
        differences = _diff(state.get("identity", {}), dict(identity))
        raise CheckpointMismatchError(
            f"{path} was written by a different run and cannot be resumed; differences: "
            + ("; ".join(differences) or "unknown")
            + ". Use a fresh checkpoint directory (or delete the file) to start over."
        )
    return state
