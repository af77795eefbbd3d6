"""The blessing gate: scores the registry's champion on this run's test split, then checks the AUC floor,
non-regression against that champion, beating the in-run baseline, and logloss below the base rate."""

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
    """Score the champion on the same rows, then decide; the decision (with reasons and the champion
    version it compared with, which register re-checks before promoting) travels on as an artifact and
    as the ``blessed`` output, the champion's score as the decision's ``champion`` metadata."""
    from collections import namedtuple

    from cdanet import steps

    result = steps.gate(config.path, processed.path, candidate_auc, mlflow_tracking_uri, model_name,
                        candidate_logloss=candidate_logloss, base_rate_logloss=base_rate_logloss,
                        baseline_path=baseline.path)
    with open(decision.path, "w") as fh:
        fh.write(result.decision.to_json())
    with open(report.path, "w") as fh:
        fh.write(result.to_markdown())
    decision.metadata["blessed"] = result.decision.blessed
    decision.metadata["champion"] = None if result.champion is None else result.champion.to_dict()
    decision.metadata["champion_version"] = result.decision.champion_version
    decision.metadata["anchor"] = None if result.anchor is None else result.anchor.to_dict()
    return namedtuple("GateOutputs", ["blessed"])(result.decision.blessed)
