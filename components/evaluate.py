"""Test-split evaluation: scalar metrics, ROC curve and confusion matrix, per-row predictions."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components._image import COMPONENT_KWARGS


@dsl.component(**COMPONENT_KWARGS)
def evaluate(
    processed: Input[Dataset],
    model: Input[Model],
    pretrained: Input[Model],
    metrics: Output[Metrics],
    roc: Output[ClassificationMetrics],
    predictions: Output[Dataset],
) -> NamedTuple("EvalOutputs", [("target_auc", float)]):
    """Test AUC and logloss: the candidate's on the target, the stage-1 model's on both domains; target ROC."""
    from collections import namedtuple

    from cdanet import steps

    result = steps.evaluate(model.path, processed.path, predictions.path, pretrained_dir=pretrained.path)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    roc.log_roc_curve(result.fpr, result.tpr, result.thresholds)
    roc.log_confusion_matrix(["no click", "click"], result.confusion_matrix)
    return namedtuple("EvalOutputs", ["target_auc"])(result.target_auc)
