"""The whole pipeline through kfp.local (SubprocessRunner), a run in a fresh store: the in-run baseline at work.

An untrained candidate (one epoch at a negligible learning rate), with the AUC floor switched off and
no champion yet, is rejected because it does not beat the id-only logistic regression trained in the
same run, and nothing becomes champion. (Its own module, apart from the two runs of
test_pipeline_local.py, so that pytest-xdist's ``--dist loadscope`` can run it on the other worker.)
"""

from __future__ import annotations

import glob
import os

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def untrained_first_run(tmp_path_factory):
    import pipeline as P
    from cdanet.orchestration import run_local

    workdir = tmp_path_factory.mktemp("local_pipeline_baseline")
    out: list[str] = []
    untrained = {"max_epochs": 1, "batch_size": 128, "learning_rate": 1e-7, "min_auc": 0.0, "tolerance": 0.0}
    code = run_local(P.create_pipeline(), raw_dir=None, glove=None, dataset="amazon", scale="tiny",
                     workdir=str(workdir), profile="tiny", params=untrained, out=out.append)
    return workdir, code, out


def test_candidate_that_does_not_beat_the_in_run_baseline_is_not_promoted(untrained_first_run):
    from mlflow import MlflowClient

    from cdanet.gate import GateDecision
    from cdanet.registry import TAG_BLESSED, TAG_REASONS, get_champion
    from cdanet.steps import BaselineReport

    workdir, code, out = untrained_first_run
    text = "\n".join(out)
    assert code == 0, text
    run_dir = sorted(glob.glob(str(workdir / "pipeline_root" / "cdanet-training-*")))[0]
    baseline = BaselineReport.load(os.path.join(run_dir, "baseline", "test_metrics"))
    decision = GateDecision.from_json(open(os.path.join(run_dir, "gate", "decision")).read())
    assert not decision.blessed
    # the floor is off and there is no champion: the baseline is what stops it
    assert decision.floor_passed and decision.non_regression_passed is None and decision.baseline_passed is False
    assert decision.baseline_auc == baseline.auc and decision.candidate_auc < baseline.auc + 0.005
    assert any("does not beat the in-run baseline (id-only logistic regression)" in r for r in decision.reasons)

    uri = "sqlite:///" + str(workdir / "mlflow.db")
    assert get_champion(uri, "cdanet-amazon-movie") is None
    version = MlflowClient(tracking_uri=uri).get_model_version("cdanet-amazon-movie", "1")
    assert version.tags[TAG_BLESSED] == "false" and "does not beat the in-run baseline" in version.tags[TAG_REASONS]
    assert "(not promoted)" in text and "@champion -> none" in text
    assert "(in-run baseline: id-only logistic regression)" in text
    assert any(" record-rejection" in line and "SUCCESS" in line for line in out)  # the rejection branch ran
