"""Great Expectations data validation; a failing suite stops the run before training."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from components._image import COMPONENT_KWARGS


@dsl.component(**COMPONENT_KWARGS)
def validate(config: Input[Artifact], processed: Input[Dataset], report: Output[HTML]):
    """Write the report first (visible in the Kubeflow UI even when the run stops), then raise on failures."""
    from cdanet import steps

    steps.validate(config.path, processed.path, report.path)
