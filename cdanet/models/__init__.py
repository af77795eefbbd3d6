"""CDAnet's two networks, the six Table 2 baselines and :func:`build_model`.

Every model is an ``nn.Module`` with ``forward(batches: Mapping[str, Batch]) -> {domain: B logits}``
(pre-sigmoid) for the domains it scores that are present in ``batches``, and the attributes
``train_domains``, ``eval_domains``, ``cfg`` and ``schemas``. Losses live in :mod:`cdanet.losses`.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from cdanet.config import ConfigError, ExperimentConfig
from cdanet.contract import DomainSchema
from cdanet.models.base import DomainModel, check_inputs
from cdanet.models.baselines import DDTCDR, MLP, PLE, STAR, MMoE, ShareMiddle
from cdanet.models.cdanet import AugmentationNetwork, TranslationNetwork, build_extractor

#: ``cfg.model.name`` -> model class (``cdanet`` -> its stage-1 network).
MODELS: dict[str, type[DomainModel]] = {
    "mlp": MLP,
    "share_middle": ShareMiddle,
    "star": STAR,
    "ddtcdr": DDTCDR,
    "mmoe": MMoE,
    "ple": PLE,
    "cdanet": TranslationNetwork,
}


def build_model(cfg: ExperimentConfig, schemas: Mapping[str, DomainSchema]) -> nn.Module:
    """The model named by ``cfg.model.name``; for ``cdanet`` its stage-1 :class:`TranslationNetwork`.

    Stage 2 is built from the trained stage 1 with :meth:`AugmentationNetwork.from_translation`, or
    with :meth:`AugmentationNetwork.fresh` for the "w/o translation network" ablation.

    Raises :class:`ConfigError` for an invalid config and :class:`~cdanet.contract.SchemaError` when
    ``schemas`` lacks the source or target domain.
    """
    check_inputs(cfg, schemas)
    try:
        cls = MODELS[cfg.model.name]
    except KeyError:
        raise ConfigError(f"unknown model {cfg.model.name!r}; expected one of {sorted(MODELS)}") from None
    return cls(cfg, schemas)


__all__ = [
    "DDTCDR",
    "MLP",
    "MODELS",
    "PLE",
    "STAR",
    "AugmentationNetwork",
    "DomainModel",
    "MMoE",
    "ShareMiddle",
    "TranslationNetwork",
    "build_extractor",
    "build_model",
    "check_inputs",
]
