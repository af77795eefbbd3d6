"""The MLflow run of a pipeline run (cdanet.tracking): real MLflow on SQLite, components called through
``python_func`` in pipeline order with one store, tiny synthetic data."""

from __future__ import annotations

import json
import os

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from component_workspace import artifact, configured_workspace
from kfp import dsl

import components as C
from cdanet import tracking
from cdanet.mlflow_store import flatten_params


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root, processed, config = configured_workspace(tmp_path_factory.mktemp("tracking"), baseline_margin=-1.0)
    return root, dsl.Dataset(name="processed", uri=str(processed)), config


def _runs(uri: str, run_id: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`cdanet.pipeline_run_id` = '{run_id}'")


def test_no_tracking_uri_or_run_id_logs_nothing(workspace, tmp_path, monkeypatch):
    root, processed, config = workspace
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    C.validate.python_func(config=config, processed=processed, report=artifact(dsl.HTML, tmp_path, "r.html"),
                           data_docs=artifact(dsl.Artifact, tmp_path, "d"), run_id="run-x")  # no URI: validation still runs, nothing is logged
    uri = f"sqlite:///{tmp_path}/m.db"
    # a URI but an unresolved run-id placeholder (a local compile, an old caller): no store is created
    C.validate.python_func(config=config, processed=processed, report=artifact(dsl.HTML, tmp_path, "r2.html"),
                           data_docs=artifact(dsl.Artifact, tmp_path, "d2"), mlflow_tracking_uri=uri, run_id="{{$.pipeline_job_uuid}}")
    assert not os.path.exists(tmp_path / "m.db")


def test_one_run_per_pipeline_run_reopened_by_retries(tmp_path, monkeypatch):
    monkeypatch.setenv(tracking.KFP_UI_URL_ENV, "https://kubeflow.example.com/pipeline/")
    uri = f"sqlite:///{tmp_path}/m.db"
    first = tracking.open_run(uri, "cdanet-amazon-movie", "run-1")
    with pytest.raises(RuntimeError), tracking.pipeline_run(uri, "cdanet-amazon-movie", "run-1") as run:
        assert run.run_id == first.run_id
        raise RuntimeError("the task dies")
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert client.get_run(first.run_id).info.status == "FAILED"  # a failed step marks the run
    again = tracking.open_run(uri, "cdanet-amazon-movie", "run-1")  # the retry finds it, RUNNING again
    assert again.run_id == first.run_id and client.get_run(first.run_id).info.status == "RUNNING"
    assert tracking.open_run(uri, "cdanet-amazon-movie", "run-2").run_id != first.run_id
    tags = client.get_run(first.run_id).data.tags
    assert tags["kfp.run_id"] == "run-1"
    assert tags["kfp.run_url"] == "https://kubeflow.example.com/pipeline/#/runs/details/run-1"
    assert first.url().endswith(f"#/experiments/{first.experiment_id}/runs/{first.run_id}")
    with pytest.raises(ValueError, match="pipeline_run_id"):
        tracking.open_run(uri, "cdanet-amazon-movie", "it's")


def test_failed_validation_leaves_a_failed_run_with_its_data_docs(workspace, tmp_path):
    root, processed, config = workspace
    bad = tmp_path / "bad"
    os.system(f"cp -r {processed.path} {bad}")
    path = sorted((bad / "movie").glob("train*.parquet"))[0]
    table = pq.read_table(path)
    labels = table.column("label").to_pylist()
    labels[0] = 2
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels)), path)
    uri = f"sqlite:///{tmp_path}/m.db"
    with pytest.raises(Exception, match=r"movie.*train.*label"):
        C.validate.python_func(config=config, processed=dsl.Dataset(name="p", uri=str(bad)),
                               report=artifact(dsl.HTML, tmp_path, "r.html"), data_docs=artifact(dsl.Artifact, tmp_path, "d"),
                               mlflow_tracking_uri=uri, run_id="bad-1")
    (run,) = _runs(uri, "bad-1")
    assert run.info.status == "FAILED"
    files = {a.path for a in mlflow.MlflowClient(tracking_uri=uri).list_artifacts(run.info.run_id, "validation/data_docs")}
    assert "validation/data_docs/index.html" in files  # the Data Docs that say why


@pytest.mark.slow
def test_the_mlflow_run_records_the_whole_pipeline_run(workspace):
    root, processed, config = workspace
    out = root / "chain"
    out.mkdir()
    uri = "sqlite:///" + str(out / "mlflow.db")
    run_id = "kfp-run-7"
    track = dict(mlflow_tracking_uri=uri, run_id=run_id)

    C.validate.python_func(config=config, processed=processed, report=artifact(dsl.HTML, out, "report.html"),
                           data_docs=artifact(dsl.Artifact, out, "data_docs"), **track)
    pretrained = artifact(dsl.Model, out, "pretrained")
    C.pretrain.python_func(config=config, processed=processed, pretrained=pretrained,
                           metrics=artifact(dsl.Metrics, out, "m1"), **track)
    model = artifact(dsl.Model, out, "model")
    C.finetune.python_func(config=config, processed=processed, pretrained=pretrained, model=model,
                           metrics=artifact(dsl.Metrics, out, "m2"), curves=artifact(dsl.HTML, out, "curves.html"),
                           **track)
    metrics = artifact(dsl.Metrics, out, "metrics")
    ev = C.evaluate.python_func(processed=processed, model=model, pretrained=pretrained, metrics=metrics,
                                roc=artifact(dsl.ClassificationMetrics, out, "roc"),
                                calibration=artifact(dsl.HTML, out, "calibration.html"),
                                predictions=artifact(dsl.Dataset, out, "predictions", directory=True),
                                config=config, **track)
    baseline = artifact(dsl.Artifact, out, "baseline")
    C.baseline.python_func(config=config, processed=processed, test_metrics=baseline,
                           metrics=artifact(dsl.Metrics, out, "bm"))
    decision = artifact(dsl.Artifact, out, "decision")
    C.gate.python_func(config=config, processed=processed, candidate_auc=ev.target_auc,
                       candidate_logloss=ev.target_logloss, base_rate_logloss=ev.target_base_rate_logloss,
                       baseline=baseline, mlflow_tracking_uri=uri, model_name="cdanet-test", decision=decision,
                       report=artifact(dsl.Markdown, out, "gate.md"))
    registered = artifact(dsl.Markdown, out, "registered.md")
    C.register.python_func(config=config, processed=processed, model=model, metrics=metrics, decision=decision,
                           mlflow_tracking_uri=uri, model_name="cdanet-test", pipeline_run_id=run_id,
                           registered=registered)

    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = _runs(uri, run_id)  # one run from validation to registration
    rid = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags["kfp.run_id"] == run_id
    # every resolved config key as a param
    frozen = flatten_params(json.load(open(config.path)))
    assert len(frozen) > 40 and {k: run.data.params.get(k) for k in frozen} == frozen
    for key in ("experiment.train.seed", "experiment.train.patience", "experiment.train.embedding_update"):
        assert key in run.data.params, key
    # per-validation history of both stages, at increasing global steps
    for key in ("pretrain/val_auc_movie", "pretrain/val_auc_book", "finetune/val_auc_movie", "finetune/train_loss"):
        history = client.get_metric_history(rid, key)
        steps = [m.step for m in history]
        assert len(history) > 1 and steps == sorted(steps) and len(set(steps)) == len(steps), (key, steps)
    assert run.data.metrics["movie_test_auc"] == pytest.approx(ev.target_auc)
    assert "stage1_best_val_auc" in run.data.metrics and "gate_blessed" in run.data.metrics

    def files(path: str = "") -> set[str]:
        found = set()
        for a in client.list_artifacts(rid, path or None):
            found |= files(a.path) if a.is_dir else {a.path}
        return found

    logged = files()
    for path in ("figures/training_curves.png", "evaluation/roc.png", "evaluation/reliability.png",
                 "evaluation/calibration.json", "validation/data_docs/index.html", "history/history.json",
                 "gate/decision.json"):
        assert path in logged, path
    # the model: a LoggedModel of this run, READY, its metrics linked to it
    (lm,) = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert lm.source_run_id == rid and str(lm.status).endswith("READY")
    assert {m.key for m in lm.metrics} >= {"movie_test_auc", "gate_candidate_auc"}
    # the processed splits as dataset inputs, with their contexts
    inputs = {(d.dataset.name, {t.key: t.value for t in d.tags}["mlflow.data.context"]) for d in run.inputs.dataset_inputs}
    assert inputs == {(f"{dom}-{split}", split) for dom in ("movie", "book") for split in ("train", "validation", "test")}
    # the registered version points at this run and at the LoggedModel's files; the gate reads it back
    (version,) = client.search_model_versions("name='cdanet-test'")
    assert version.run_id == rid and version.source == lm.artifact_location
    from cdanet.registry import load_version

    assert load_version(uri, "cdanet-test", version.version).input_encoding
    # the KFP side links back
    assert rid in open(registered.path).read()


@pytest.fixture(scope="module")
def book_model(processed_dir: str, tmp_path_factory) -> str:
    from cdanet.config import tiny_config
    from cdanet.training import run_experiment

    cfg = tiny_config("amazon", target_domain="book").with_overrides(
        ["train.max_epochs=1", "train.num_threads=1", "train.batch_size=256"]).validate()
    return run_experiment(cfg, processed_dir, str(tmp_path_factory.mktemp("experiment"))).model_dir


def test_registration_into_the_pipeline_run_rolls_back_its_model_never_the_run(book_model, tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException

    from cdanet.gate import GateConfig, decide
    from cdanet.registry import TAG_STATE, register_candidate

    uri = f"sqlite:///{tmp_path}/m.db"
    run = tracking.open_run(uri, "cdanet-book", "run-5")
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    gate = GateConfig(min_auc=0.5, tolerance=0.0, domain="book")

    def register():
        return register_candidate(book_model, tracking_uri=uri, model_name="cdanet-book", metrics={"book_test_auc": 0.7},
                                  params={"d": 8}, decision=decide(0.7, None, gate), lineage={},
                                  pipeline_run_id="run-5", run_id=run.run_id)

    def fail(self, *args, **kwargs):
        raise MlflowException("injected failure in set_registered_model_alias")

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", fail)
    with pytest.raises(MlflowException, match="injected"):
        register()
    monkeypatch.undo()
    # nothing half-registered: no version, no LoggedModel; the pipeline run (its training record) stays
    assert client.search_model_versions("name='cdanet-book'") == []
    assert client.search_logged_models(experiment_ids=[run.experiment_id]) == []
    assert client.get_run(run.run_id).info.lifecycle_stage == "active"

    first = register()
    assert first.run_id == run.run_id and first.aliases == ["champion"]
    # a version a killed attempt left pending is redone, in the same run, with one LoggedModel left
    client.set_model_version_tag("cdanet-book", first.version, TAG_STATE, "pending")
    redo = register()
    assert not redo.reused and redo.run_id == run.run_id
    assert client.get_run(run.run_id).info.lifecycle_stage == "active"
    (lm,) = client.search_logged_models(experiment_ids=[run.experiment_id])
    assert client.get_model_version("cdanet-book", redo.version).source == lm.artifact_location
