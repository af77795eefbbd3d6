"""The whole pipeline through kfp.local (SubprocessRunner): real Beam, GX, training and MLflow.

Two runs on the same simulated raw data: the first model is promoted to ``@champion``; a
deliberately worse second model (one epoch at a negligible learning rate) is gated against it on
the same test split, recorded as rejected, and the champion stays where it was.
"""

from __future__ import annotations

import glob
import os

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    import pipeline as P
    from cdanet.orchestration import run_local

    workdir = tmp_path_factory.mktemp("local_pipeline")
    common = dict(raw_dir=None, glove=None, dataset="amazon", scale="tiny", workdir=str(workdir), profile="tiny")
    first_out: list[str] = []
    good = {"max_epochs": 10, "batch_size": 128, "learning_rate": 0.005, "min_auc": 0.55, "tolerance": 0.0}
    first = run_local(P.create_pipeline(), params=good, out=first_out.append, **common)
    second_out: list[str] = []
    worse = {"max_epochs": 1, "batch_size": 128, "learning_rate": 1e-7, "min_auc": 0.0, "tolerance": 0.0}
    second = run_local(P.create_pipeline(), params=worse, out=second_out.append, **common)
    return workdir, (first, first_out), (second, second_out)


def test_first_run_promotes_a_champion_that_scores_rows(two_runs):
    import mlflow
    import pyarrow.parquet as pq

    from cdanet.features import DomainSchema
    from cdanet.registry import features_frame

    workdir, (code, out), _ = two_runs
    assert code == 0, "\n".join(out)
    text = "\n".join(out)
    assert "test movie    AUC" in text and "(now @champion)" in text
    assert "test book     AUC" in text and "(stage-1 translation network)" in text
    assert "(base rate 0." in text and "ECE 0." in text  # logloss next to the base-rate logloss
    for task in ("configure", "preprocess", "validate", "pretrain", "finetune", "evaluate", "gate"):
        assert any(f"{task} " in line and "SUCCESS" in line for line in out), task

    uri = "sqlite:///" + str(workdir / "mlflow.db")
    mlflow.set_tracking_uri(uri)
    try:
        champion = mlflow.pyfunc.load_model("models:/cdanet-amazon-movie@champion")
    finally:
        mlflow.set_tracking_uri(None)
    run_dir = sorted(glob.glob(str(workdir / "pipeline_root" / "cdanet-training-*")))[0]
    processed = os.path.join(run_dir, "preprocess", "processed")
    schema = DomainSchema.load(os.path.join(processed, "movie"))
    test = pq.read_table(sorted(glob.glob(os.path.join(processed, "movie", "test*.parquet")))[0])
    scores = champion.predict(features_frame(test.slice(0, 50), schema))
    assert len(scores) == 50 and all(0.0 <= float(s) <= 1.0 for s in scores)
    # reports and predictions are files; Metrics / ClassificationMetrics live in the task's metadata
    for rel in ("validate/report", "finetune/curves", "gate/decision", "register/registered"):
        assert os.path.exists(os.path.join(run_dir, rel)), rel
    assert glob.glob(os.path.join(run_dir, "evaluate", "predictions", "*.parquet"))
    executor_output = open(os.path.join(run_dir, "evaluate", "executor_output.json")).read()
    for key in ('"movie_test_auc"', '"movie_test_logloss"', '"stage1_book_test_auc"', '"confusionMatrix"',
                '"confidenceMetrics"', '"movie_test_base_rate_logloss"', '"movie_test_ece"', '"reliability"'):
        assert key in executor_output, key
    reliability_png = os.path.join(run_dir, "evaluate", "predictions", "reliability.png")
    assert os.path.exists(reliability_png) and reliability_png in text  # the summary points at it
    assert os.path.exists(os.path.join(run_dir, "evaluate", "calibration"))


def test_worse_second_model_is_rejected_and_champion_untouched(two_runs):
    from mlflow import MlflowClient

    from cdanet.registry import TAG_BLESSED, TAG_REASONS, get_champion

    workdir, _, (code, out) = two_runs
    assert code == 0, "\n".join(out)
    uri = "sqlite:///" + str(workdir / "mlflow.db")
    assert get_champion(uri, "cdanet-amazon-movie").version == "1"
    second = MlflowClient(tracking_uri=uri).get_model_version("cdanet-amazon-movie", "2")
    assert second.tags[TAG_BLESSED] == "false"
    assert "champion" in second.tags[TAG_REASONS]
    assert "(not promoted)" in "\n".join(out)


def test_invalid_parameter_fails_at_the_first_step(tmp_path):
    import pipeline as P
    from cdanet.orchestration import run_local

    out: list[str] = []
    code = run_local(P.create_pipeline(), raw_dir=str(tmp_path), glove=str(tmp_path), dataset="amazon",
                     scale="tiny", workdir=str(tmp_path / "w"), profile="tiny", params={"min_auc": 1.5},
                     out=out.append)
    text = "\n".join(out)
    assert code == 1
    assert "configure" in text and "min_auc must be in [0, 1]" in text
    assert not os.path.exists(tmp_path / "w" / "mlflow.db") or "no model was registered" in text
