"""The whole pipeline through kfp.local (SubprocessRunner): real Beam, GX, training and MLflow.

Two runs on the same simulated raw data: the first model is promoted to ``@champion``; a
deliberately worse second model (one epoch at a negligible learning rate) is gated against it on
the same test split, recorded as rejected, and the champion stays where it was. The third run, in a
fresh store (the in-run baseline at work), is in test_pipeline_local_baseline.py: a module of its own,
so that pytest-xdist (``--dist loadscope``) runs it beside these two on the other worker.
"""

from __future__ import annotations

import glob
import os
import re

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    import pipeline as P
    from cdanet.orchestration import run_local

    workdir = tmp_path_factory.mktemp("local_pipeline")
    common = dict(raw_dir=None, glove=None, dataset="amazon", scale="tiny", workdir=str(workdir), profile="tiny")
    first_out: list[str] = []
    # Five epochs at 0.003: on the tiny data (281 movie test rows) longer or faster training overfits
    # into scores whose logloss loses to the base rate, which the gate rejects.
    good = {"max_epochs": 5, "batch_size": 128, "learning_rate": 0.003, "min_auc": 0.55, "tolerance": 0.0}
    first = run_local(P.create_pipeline(), params=good, out=first_out.append, **common)
    second_out: list[str] = []
    worse = {"max_epochs": 1, "batch_size": 128, "learning_rate": 1e-7, "min_auc": 0.0, "tolerance": 0.0}
    second = run_local(P.create_pipeline(), params=worse, out=second_out.append, **common)
    return workdir, (first, first_out), (second, second_out)


def test_the_frozen_config_is_the_profile_plus_the_parameters_given(two_runs):
    # kfp.local hands the configure task the pipeline's "unset" defaults (-1) for the rest.
    import json

    from cdanet.config import tiny_config

    workdir, (code, out), _ = two_runs
    assert code == 0, "\n".join(out)
    first = min(glob.glob(str(workdir / "pipeline_root" / "cdanet-training-*")), key=os.path.getmtime)
    (path,) = glob.glob(os.path.join(first, "configure", "config"))
    with open(path) as fh:
        frozen = json.load(fh)["experiment"]
    expected = tiny_config("amazon").with_overrides(
        {"train.max_epochs": 5, "train.batch_size": 128, "train.learning_rate": 0.003})
    assert frozen == expected.to_dict()


def test_first_run_promotes_a_champion_that_scores_rows(two_runs):
    import mlflow
    import pyarrow.parquet as pq

    from cdanet.contract import DomainSchema
    from cdanet.serving import raw_frame

    workdir, (code, out), _ = two_runs
    assert code == 0, "\n".join(out)
    text = "\n".join(out)
    assert "test movie    AUC" in text and "(now @champion)" in text
    assert re.search(r"MLflow run [0-9a-f]{32} \(params", text)  # the summary names the run
    assert "test book     AUC" in text and "(stage-1 translation network)" in text
    assert "(base rate 0." in text and "ECE 0." in text  # logloss next to the base-rate logloss
    # blessed by every check: floor, (no champion), the in-run baseline, the base-rate logloss
    assert "beats the in-run baseline (id-only logistic regression)" in text
    assert "is below the base-rate logloss" in text and "(in-run baseline: id-only logistic regression)" in text
    for task in ("configure", "preprocess", "validate", "baseline", "pretrain", "finetune", "evaluate", "gate"):
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
    # the champion takes raw values, encoded with the vocabularies it carries (cdanet.serving)
    vocabularies = champion.unwrap_python_model().vocabularies["movie"]
    scores = champion.predict(raw_frame(test.slice(0, 50), schema, vocabularies))
    assert len(scores) == 50 and all(0.0 <= float(s) <= 1.0 for s in scores)
    # reports and predictions are files; Metrics / ClassificationMetrics live in the task's metadata
    for rel in ("validate/report", "validate/data_docs/data_docs/index.html", "finetune/curves", "baseline/test_metrics", "gate/decision", "register/registered"):
        assert os.path.exists(os.path.join(run_dir, rel)), rel
    assert glob.glob(os.path.join(run_dir, "evaluate", "predictions", "*.parquet"))
    executor_output = open(os.path.join(run_dir, "evaluate", "executor_output.json")).read()
    for key in ('"movie_test_auc"', '"movie_test_logloss"', '"stage1_book_test_auc"', '"confusionMatrix"',
                '"confidenceMetrics"', '"movie_test_base_rate_logloss"', '"movie_test_ece"', '"reliability"'):
        assert key in executor_output, key
    for png in ("evaluate/predictions/reliability.png", "evaluate/predictions/roc.png",
                "finetune/model/training_curves.png"):
        path = os.path.join(run_dir, png)
        assert os.path.exists(path) and path in text, png  # the summary points at it
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
    assert "regresses against the champion" in second.tags[TAG_REASONS]
    assert "(not promoted)" in "\n".join(out)
    # The gate's first stage scored version 1 on this run's rows; its figure is the one the decision used.
    from cdanet.gate import GateDecision

    run_dir = sorted(glob.glob(str(workdir / "pipeline_root" / "cdanet-training-*")))[-1]
    decision = GateDecision.from_json(open(os.path.join(run_dir, "gate", "decision")).read())
    assert "champion `models:/cdanet-amazon-movie/1` scored" in open(os.path.join(run_dir, "gate", "report")).read()
    executor_output = open(os.path.join(run_dir, "gate", "executor_output.json")).read()
    assert f'"auc": {decision.champion_auc!r}' in executor_output


def test_invalid_parameter_fails_at_the_first_step(tmp_path):
    import pipeline as P
    from cdanet.orchestration import ParameterError, run_local

    out: list[str] = []
    # Checked before kfp.local starts (the configure step's own checks), in one line.
    with pytest.raises(ParameterError) as e:
        run_local(P.create_pipeline(), raw_dir=str(tmp_path), glove=str(tmp_path), dataset="amazon",
                  scale="tiny", workdir=str(tmp_path / "w"), profile="tiny", params={"min_auc": 1.5},
                  out=out.append)
    assert "min_auc must be in [0, 1]" in e.value.message and "\n" not in e.value.message
    assert not os.path.exists(tmp_path / "w" / "mlflow.db")
