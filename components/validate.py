"""Great Expectations data validation; a failing suite stops the run before training."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from components._image import COMPONENT_KWARGS


@dsl.component(**COMPONENT_KWARGS)
def validate(config: Input[Artifact], processed: Input[Dataset], report: Output[HTML], data_docs: Output[Artifact],
             mlflow_tracking_uri: str = "", run_id: str = ""):
    """Write the report first (visible in the Kubeflow UI even when the run stops), then raise on failures.
    ``report``: one self-contained HTML page (the UI renders it); ``data_docs``: a folder, the Great
    Expectations Data Docs site (``data_docs/index.html``) with the summary's JSON and HTML.
    With a tracking URI (or ``MLFLOW_TRACKING_URI``) and ``run_id``, opens the run's MLflow run: config as
    params, datasets as inputs, the Data Docs as artifacts (``cdanet.tracking``)."""
    from cdanet import steps

    steps.validate(config.path, processed.path, report.path, data_docs_dir=data_docs.path,
                   tracking_uri=mlflow_tracking_uri, pipeline_run_id=run_id)
