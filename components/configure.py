"""Resolve the run's config once, validate every pipeline parameter, and freeze them into a config artifact."""

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
    alpha: float,
    beta: float,
    num_experts: int,
    latent_dim: int,
    max_epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    extra_overrides: list,
    tuned_config_uri: str,
    min_auc: float,
    tolerance: float,
    baseline_margin: float,
    config: Output[Artifact],
    model_name: str = "",
) -> str:
    """Fail fast on invalid parameters (unknown dataset/domain, a wrong type, negative alpha, min_auc outside
    [0, 1], baseline_margin outside [-1, 1], unreadable input); every later step reads the frozen config.

    Every default lives in ``pipeline.py``; a hyperparameter at ``-1`` is unset (see ``cdanet.params``).
    Returns the registered model's name: ``model_name``, or ``cdanet-<dataset>-<target>`` when empty."""
    from cdanet import steps

    frozen = steps.configure(
        dataset=dataset, target_domain=target_domain, raw_uri=raw_uri, glove_uri=glove_uri, profile=profile,
        alpha=alpha, beta=beta, num_experts=num_experts, latent_dim=latent_dim, max_epochs=max_epochs,
        batch_size=batch_size, learning_rate=learning_rate, seed=seed, extra_overrides=extra_overrides,
        tuned_config_uri=tuned_config_uri, min_auc=min_auc, tolerance=tolerance, baseline_margin=baseline_margin,
        model_name=model_name,
    )
    with open(config.path, "w") as fh:
        fh.write(frozen.to_json())
    config.metadata.update(frozen.summary())
    return frozen.model_name
