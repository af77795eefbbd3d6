"""Resolve the training pipeline's hyperparameters into one ExperimentConfig, once, in a fixed order.

Each named pipeline parameter (``batch_size``, ``alpha``, ...) sets one config setting
(:data:`HYPERPARAMETERS`). Its pipeline default is *unset*, so the profile decides unless a run gives
a value. KFP carries no ``None`` for a typed pipeline parameter (``kfp.local`` rejects it, and a cluster
run that leaves an ``Optional`` parameter out fails in the driver: kubeflow/pipelines#11667), so unset
is ``-1`` of the parameter's own type: a value none of these settings can take (each must be >= 0).

Later sources win (:func:`resolve`): the profile, then the tuned config's hyperparameters, then the
named parameters that are set, then ``extra_overrides`` (``--set``-style ``section.key=value``). What a
run states explicitly beats a tuned file, and a tuned file beats the profile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cdanet.config import ConfigError, ExperimentConfig, parse_overrides, typed_value

#: The "unset" default of an int / float hyperparameter of the pipeline: the profile's value.
UNSET_INT: int = -1
UNSET_FLOAT: float = -1.0

#: Pipeline parameter -> the config setting it sets.
HYPERPARAMETERS: dict[str, str] = {
    "alpha": "model.alpha",
    "beta": "model.beta",
    "num_experts": "model.num_experts",
    "latent_dim": "model.d",
    "max_epochs": "train.max_epochs",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "seed": "train.seed",
}


def is_unset(value: Any) -> bool:
    """True for the pipeline's unset default (-1 / -1.0) and for ``None`` (a library caller's "not given")."""
    return value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and value == UNSET_INT)


def explicit(hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """The set ones among named pipeline parameters, as typed config overrides; a one-line ConfigError
    names the parameter, its setting, the expected type and the value."""
    out: dict[str, Any] = {}
    for name, value in hyperparameters.items():
        if name not in HYPERPARAMETERS:
            raise ConfigError(f"unknown hyperparameter {name!r}; expected one of {sorted(HYPERPARAMETERS)}")
        if not is_unset(value):
            key = HYPERPARAMETERS[name]
            out[key] = typed_value(key, value, label=f"{name} ({key})")
    return out


def resolve(
    base: ExperimentConfig,
    hyperparameters: Mapping[str, Any],
    extra_overrides: Sequence[str] = (),
    tuned: Mapping[str, Any] | None = None,
) -> ExperimentConfig:
    """``base`` (the profile's config) with, in this order, ``tuned`` (dotted overrides, see
    :func:`cdanet.tuning.tuned_overrides`), the set ``hyperparameters`` and ``extra_overrides``.

    Type-checks every value and raises a one-line :class:`ConfigError` on the first wrong one; the
    result is not yet validated (:meth:`ExperimentConfig.validate` lists every range problem at once).
    """
    named = explicit(hyperparameters)
    if isinstance(extra_overrides, str) or not all(isinstance(o, str) for o in extra_overrides):
        raise ConfigError(f"extra_overrides: expected a list of 'section.key=value' strings, got {extra_overrides!r}")
    return base.with_overrides({**(tuned or {}), **named, **parse_overrides(extra_overrides)})
