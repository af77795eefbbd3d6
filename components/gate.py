"""The blessing gate: AUC floor, non-regression against the registry's champion, beating the in-run
baseline, and logloss below the base rate, all on the same test split."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components._image import COMPONENT_KWARGS


@dsl.component(**COMPONENT_KWARGS)
def gate(
    config: Input[Artifact],
    processed: Input[Dataset],
    candidate_auc: float,
    candidate_logloss: float,
    base_rate_logloss: float,
    baseline: Input[Artifact],
    mlflow_tracking_uri: str,
    model_name: str,
    decision: Output[Artifact],
    report: Output[Markdown],
) -> NamedTuple("GateOutputs", [("blessed", bool)]):
    """Decide; the decision (with reasons) travels on as an artifact and as the ``blessed`` output."""
    from collections import namedtuple

    from cdanet import steps

    result = steps.gate(config.path, processed.path, candidate_auc, mlflow_tracking_uri, model_name,
                        candidate_logloss=candidate_logloss, base_rate_logloss=base_rate_logloss,
                        baseline_path=baseline.path)
    with open(decision.path, "w") as fh:
        fh.write(result.to_json())
    with open(report.path, "w") as fh:
        fh.write(result.to_markdown())
    decision.metadata["blessed"] = result.blessed
    return namedtuple("GateOutputs", ["blessed"])(result.blessed)
