"""Test-split evaluation: scalar metrics, ROC curve and confusion matrix, calibration, per-row predictions."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components._image import COMPONENT_KWARGS


@dsl.component(**COMPONENT_KWARGS)
def evaluate(
    processed: Input[Dataset],
    model: Input[Model],
    pretrained: Input[Model],
    metrics: Output[Metrics],
    roc: Output[ClassificationMetrics],
    calibration: Output[HTML],
    predictions: Output[Dataset],
    config: Input[Artifact] = None,
    mlflow_tracking_uri: str = "",
    run_id: str = "",
) -> NamedTuple("EvalOutputs", [("target_auc", float), ("target_logloss", float),
                                ("target_base_rate_logloss", float)]):
    """Test AUC, logloss and calibration: the candidate's on the target, the stage-1 model's on both
    domains; target ROC; reliability diagrams as HTML (and reliability.png in the predictions folder).
    With ``config``, a tracking URI (or ``MLFLOW_TRACKING_URI``) and ``run_id``, the metrics and figures
    also go to the run's MLflow run (``cdanet.tracking``)."""
    from collections import namedtuple

    from cdanet import steps

    result = steps.evaluate(model.path, processed.path, predictions.path, pretrained_dir=pretrained.path,
                            calibration_html=calibration.path, config_path=config.path if config else "",
                            tracking_uri=mlflow_tracking_uri, pipeline_run_id=run_id)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    roc.log_roc_curve(result.fpr, result.tpr, result.thresholds)
    roc.log_confusion_matrix(["no click", "click"], result.confusion_matrix)
    calibration.metadata["reliability"] = result.calibration
    outputs = namedtuple("EvalOutputs", ["target_auc", "target_logloss", "target_base_rate_logloss"])
    return outputs(result.target_auc, result.target_logloss, result.target_base_rate_logloss)
