"""Validate every pipeline parameter before any work starts, and freeze them into a config artifact."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Output

from components._image import COMPONENT_KWARGS


@dsl.component(**COMPONENT_KWARGS)
def configure(
    dataset: str,
    target_domain: str,
    raw_uri: str,
    glove_uri: str,
    profile: str,
    alpha: Optional[float],
    beta: Optional[float],
    num_experts: int,
    latent_dim: int,
    max_epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    extra_overrides: list,
    min_auc: float,
    tolerance: float,
    config: Output[Artifact],
    baseline_margin: float = 0.005,
    tuned_config_uri: str = "",
):
    """Fail fast on invalid parameters (unknown dataset/domain, negative alpha, min_auc outside [0, 1],
    baseline_margin outside [-1, 1], unreadable input).

    ``tuned_config_uri``: a ``best_config.json`` of ``cdanet tune`` whose hyperparameters replace the named ones."""
    from cdanet import steps

    frozen = steps.configure(
        dataset=dataset, target_domain=target_domain, raw_uri=raw_uri, glove_uri=glove_uri, profile=profile,
        alpha=alpha, beta=beta, num_experts=num_experts, latent_dim=latent_dim, max_epochs=max_epochs,
        batch_size=batch_size, learning_rate=learning_rate, seed=seed, extra_overrides=extra_overrides,
        min_auc=min_auc, tolerance=tolerance, baseline_margin=baseline_margin, tuned_config_uri=tuned_config_uri,
    )
    with open(config.path, "w") as fh:
        fh.write(frozen.to_json())
    config.metadata.update(frozen.summary())
