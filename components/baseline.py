"""The in-run baseline: an id-only logistic regression on the same split, for the gate to compare with."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components._image import COMPONENT_KWARGS


@dsl.component(**COMPONENT_KWARGS)
def baseline(config: Input[Artifact], processed: Input[Dataset], test_metrics: Output[Artifact],
             metrics: Output[Metrics]):
    """User bias + item bias (L2, C chosen on validation) on the target domain; its test AUC/logloss as JSON."""
    from cdanet import steps

    report = steps.baseline(config.path, processed.path, test_metrics.path)
    for name, value in report.metrics().items():
        metrics.log_metric(name, value)
    test_metrics.metadata.update({"model": report.model, "domain": report.domain, "auc": report.auc,
                                  "logloss": report.logloss})
