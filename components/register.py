"""Register the candidate in the MLflow model registry.

One component serves both branches of the gate: under ``dsl.If(blessed)`` it promotes (a new version
plus the ``champion`` alias), under ``dsl.Else`` it records the rejected candidate (a version tagged
with the gate's reasons, alias untouched). The decision artifact says which.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components._image import COMPONENT_KWARGS


@dsl.component(**COMPONENT_KWARGS)
def register(
    config: Input[Artifact],
    processed: Input[Dataset],
    model: Input[Model],
    metrics: Input[Metrics],
    decision: Input[Artifact],
    mlflow_tracking_uri: str,
    model_name: str,
    pipeline_run_id: str,
    registered: Output[Markdown],
):
    """Idempotent per pipeline run: a retried task returns the version it already created. Promotion
    is a compare-and-set: the alias moves only if the champion is still the one the decision compared
    with; otherwise the candidate is re-gated against the new champion (``cdanet.registry``)."""
    from cdanet import steps

    info = steps.register(config.path, processed.path, model.path, dict(metrics.metadata), decision.path,
                          mlflow_tracking_uri, model_name, pipeline_run_id)
    with open(registered.path, "w") as fh:
        fh.write(info)
