"""Component wrappers called through ``python_func`` with real tiny artifacts (no kfp runtime)."""

from __future__ import annotations

import glob
import json
import os

import pyarrow.parquet as pq
import pytest
from component_workspace import artifact, configured_workspace
from kfp import dsl

import components as C
from cdanet.validation import DataValidationError


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return configured_workspace(tmp_path_factory.mktemp("components"), baseline_margin=0.005)


def test_configure_writes_a_validated_config(workspace):
    _, _, config = workspace
    frozen = json.loads(open(config.path).read())
    assert frozen["experiment"]["target_domain"] == "movie" and frozen["min_auc"] == 0.5
    assert config.metadata["alpha"] == 0.01  # the paper's Amazon value when alpha is not given


def test_configure_rejects_invalid_parameters(tmp_path):
    with pytest.raises(ValueError, match=r"min_auc must be in \[0, 1\]"):
        C.configure.python_func(
            dataset="amazon", target_domain="", raw_uri=str(tmp_path), glove_uri=str(tmp_path), profile="tiny",
            alpha=None, beta=None, num_experts=2, latent_dim=8, max_epochs=1, batch_size=64, learning_rate=0.001,
            seed=0, extra_overrides=[], tuned_config_uri="", min_auc=2.0, tolerance=0.0, baseline_margin=0.0,
            config=artifact(dsl.Artifact, tmp_path, "c"),
        )


def test_validate_passes_clean_data_and_stops_on_corruption(workspace, tmp_path):
    root, processed, config = workspace
    processed_in = dsl.Dataset(name="processed", uri=str(processed))
    report = artifact(dsl.HTML, tmp_path, "report.html")
    docs = artifact(dsl.Artifact, tmp_path, "data_docs")
    C.validate.python_func(config=config, processed=processed_in, report=report, data_docs=docs)
    assert "<html" in open(report.path).read().lower()
    # the Data Docs site is an artifact of its own (a folder), not files lying beside the report
    assert os.path.exists(os.path.join(docs.path, "data_docs", "index.html"))
    assert glob.glob(os.path.join(docs.path, "data_docs", "validations", "**", "*.html"), recursive=True)

    # Corrupt one label of the movie training split: the run must stop, naming the expectation.
    bad = tmp_path / "bad"
    os.system(f"cp -r {processed} {bad}")
    path = sorted((bad / "movie").glob("train*.parquet"))[0]
    table = pq.read_table(path)
    labels = table.column("label").to_pylist()
    labels[0] = 2
    import pyarrow as pa

    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels)), path)
    report2 = artifact(dsl.HTML, tmp_path, "report2.html")
    docs2 = artifact(dsl.Artifact, tmp_path, "data_docs2")
    with pytest.raises(DataValidationError, match=r"movie.*train.*label"):
        C.validate.python_func(config=config, processed=dsl.Dataset(name="p", uri=str(bad)), report=report2,
                               data_docs=docs2)
    assert os.path.exists(report2.path), "the report is written before the run stops"
    assert os.path.exists(os.path.join(docs2.path, "data_docs", "index.html")), "and the Data Docs that say why"


@pytest.fixture(scope="module")
def baseline_run(workspace, tmp_path_factory):
    root, processed, config = workspace
    out = tmp_path_factory.mktemp("baseline")
    test_metrics, metrics = artifact(dsl.Artifact, out, "test_metrics"), artifact(dsl.Metrics, out, "metrics")
    C.baseline.python_func(config=config, processed=dsl.Dataset(name="processed", uri=str(processed)),
                           test_metrics=test_metrics, metrics=metrics)
    return test_metrics, metrics


def test_baseline_writes_its_target_test_metrics(baseline_run):
    from cdanet.steps import BaselineReport

    test_metrics, metrics = baseline_run
    report = BaselineReport.load(test_metrics.path)
    assert (report.model, report.domain, report.split, report.n) == ("id-only logistic regression", "movie", "test", 300)
    assert 0.5 < report.auc <= 1.0 and report.logloss > 0.0 and report.chosen["C"] > 0
    assert metrics.metadata["baseline_movie_test_auc"] == report.auc
    assert metrics.metadata["baseline_movie_test_logloss"] == report.logloss
    assert 0.0 <= metrics.metadata["baseline_movie_val_auc"] <= 1.0
    assert test_metrics.metadata["auc"] == report.auc


def test_gate_refuses_a_baseline_of_another_domain_or_a_malformed_report(workspace, baseline_run, tmp_path):
    root, processed, config = workspace
    good = json.loads(open(baseline_run[0].path).read())
    kwargs = dict(config=config, processed=dsl.Dataset(name="processed", uri=str(processed)), candidate_auc=0.7,
                  candidate_logloss=0.5, base_rate_logloss=0.6, mlflow_tracking_uri=f"sqlite:///{tmp_path}/m.db",
                  model_name="cdanet-test", decision=artifact(dsl.Artifact, tmp_path, "decision"),
                  report=artifact(dsl.Markdown, tmp_path, "gate.md"))
    other = artifact(dsl.Artifact, tmp_path, "other")
    with open(other.path, "w") as fh:
        json.dump({**good, "domain": "book"}, fh)
    with pytest.raises(ValueError, match="scores book/test, not the candidate's movie/test"):
        C.gate.python_func(baseline=other, **kwargs)
    broken = artifact(dsl.Artifact, tmp_path, "broken")
    with open(broken.path, "w") as fh:
        json.dump({"auc": 0.7}, fh)
    with pytest.raises(ValueError, match="is not a baseline report"):
        C.gate.python_func(baseline=broken, **kwargs)
    assert not os.path.exists(tmp_path / "m.db")  # refused before the registry was touched


@pytest.mark.slow
def test_train_evaluate_gate_register_chain(workspace, baseline_run, tmp_path):
    import mlflow

    from cdanet.registry import get_champion

    root, processed, config = workspace
    processed_in = dsl.Dataset(name="processed", uri=str(processed))
    pretrained = artifact(dsl.Model, tmp_path, "pretrained")
    m1 = artifact(dsl.Metrics, tmp_path, "m1")
    C.pretrain.python_func(config=config, processed=processed_in, pretrained=pretrained, metrics=m1)
    assert m1.metadata["stage1_best_val_auc"] > 0.5
    model = artifact(dsl.Model, tmp_path, "model")
    m2, curves = artifact(dsl.Metrics, tmp_path, "m2"), artifact(dsl.HTML, tmp_path, "curves.html")
    C.finetune.python_func(config=config, processed=processed_in, pretrained=pretrained, model=model,
                           metrics=m2, curves=curves)
    assert "data:image/png;base64," in open(curves.path).read()
    with open(os.path.join(model.path, "training_curves.png"), "rb") as fh:  # the same plot as a file
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"

    metrics, roc = artifact(dsl.Metrics, tmp_path, "metrics"), artifact(dsl.ClassificationMetrics, tmp_path, "roc")
    predictions = artifact(dsl.Dataset, tmp_path, "predictions", directory=True)
    calibration = artifact(dsl.HTML, tmp_path, "calibration.html")
    out = C.evaluate.python_func(processed=processed_in, model=model, pretrained=pretrained, metrics=metrics,
                                 roc=roc, calibration=calibration, predictions=predictions)
    assert out.target_auc == pytest.approx(metrics.metadata["movie_test_auc"])
    assert out.target_logloss == pytest.approx(metrics.metadata["movie_test_logloss"])
    assert out.target_base_rate_logloss == pytest.approx(metrics.metadata["movie_test_base_rate_logloss"])
    assert 0.0 < metrics.metadata["movie_train_positive_rate"] < 1.0
    for key in ("movie_test_ece", "stage1_movie_test_ece", "stage1_book_test_ece", "book_test_base_rate_logloss"):
        assert key in metrics.metadata, key
    # reliability data as plain lists (artifact metadata and calibration.json), plotted as PNG and HTML
    bins = calibration.metadata["reliability"]["movie"]["reliability"]
    assert len(bins["count"]) == 10 and sum(bins["count"]) == 300  # 10 % of the 3000 movie rows
    saved = json.load(open(os.path.join(predictions.path, "calibration.json")))
    assert set(saved) == {"movie", "stage1_movie", "stage1_book"}
    assert saved["movie"]["ece"] == pytest.approx(metrics.metadata["movie_test_ece"])
    for png in ("reliability.png", "roc.png"):
        with open(os.path.join(predictions.path, png), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n", png
    html = open(calibration.path).read()
    assert "data:image/png;base64," in html and "base-rate logloss" in html and "stage-1 translation network" in html
    assert "book_test_auc" not in metrics.metadata  # the augmentation network scores the target only
    for domain in ("movie", "book"):  # the stage-1 translation network scores both
        assert 0.0 <= metrics.metadata[f"stage1_{domain}_test_auc"] <= 1.0
    assert os.path.exists(os.path.join(predictions.path, "stage1", "predictions.parquet"))
    assert roc.metadata["confusionMatrix"]["rows"] and roc.metadata["confidenceMetrics"]
    assert any(f.endswith(".parquet") for f in os.listdir(predictions.path))

    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    decision = artifact(dsl.Artifact, tmp_path, "decision")
    gate_report = artifact(dsl.Markdown, tmp_path, "gate.md")
    baseline_metrics, _ = baseline_run
    gated = C.gate.python_func(config=config, processed=processed_in, candidate_auc=out.target_auc,
                               candidate_logloss=out.target_logloss,
                               base_rate_logloss=out.target_base_rate_logloss, baseline=baseline_metrics,
                               mlflow_tracking_uri=uri, model_name="cdanet-test", decision=decision,
                               report=gate_report)
    assert gated.blessed is True  # first model: above the floor, beats the baseline, logloss below the base rate
    from cdanet.gate import GateDecision
    from cdanet.steps import BaselineReport

    judged = GateDecision.from_json(open(decision.path).read())
    assert judged.baseline_auc == BaselineReport.load(baseline_metrics.path).auc and judged.baseline_passed
    assert judged.candidate_logloss == out.target_logloss and judged.calibration_passed
    assert "beats the in-run baseline (id-only logistic regression)" in open(gate_report.path).read()
    # the champion-scoring stage ran first and found no champion (the first model)
    assert decision.metadata["champion"] is None and "no champion in the registry" in open(gate_report.path).read()

    for _ in range(2):  # a retried promote task must not create a second version
        registered = artifact(dsl.Markdown, tmp_path, "registered.md")
        C.register.python_func(config=config, processed=processed_in, model=model, metrics=metrics,
                               decision=decision, mlflow_tracking_uri=uri, model_name="cdanet-test",
                               pipeline_run_id="run-1", registered=registered)
    assert "version 1: promoted to @champion" in open(registered.path).read()
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert len(client.search_model_versions("name='cdanet-test'")) == 1
    assert get_champion(uri, "cdanet-test").version == "1"
