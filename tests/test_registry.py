"""MLflow registry on a real SQLite store: pyfunc scoring, champion alias, idempotency, rollback.

The model is a real CDAnet (stage 1 + stage 2) trained for one epoch on the tiny synthetic data,
with ``book`` as the target so the pyfunc sees every field kind (categorical, multi-hot, dense).
Failures are real where MLflow or the data can produce them; two tests inject a fault into one
MLflow client call (pytest's monkeypatch) because a healthy store never fails on demand there.
"""

from __future__ import annotations

import json
import os
import shutil

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cdanet import steps
from cdanet.artifacts import load_model_dir
from cdanet.champion import ENCODING_AS_IS, ChampionIncompatibleError, score_champion
from cdanet.config import tiny_config
from cdanet.contract import split_files
from cdanet.data import table_to_batch
from cdanet.gate import GateConfig, GateDecision, decide, decide_again
from cdanet.registry import (
    CHAMPION_ALIAS,
    TAG_ANCHOR,
    TAG_REASONS,
    TAG_STATE,
    get_champion,
    register_candidate,
)
from cdanet.serving import features_frame
from cdanet.training import run_experiment

NAME = "cdanet-book"
TARGET = "book"
GATE = GateConfig(min_auc=0.5, tolerance=0.0, domain=TARGET)


@pytest.fixture(scope="module")
def trained(processed_dir: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, float]:
    """(model directory, its test AUC on the target domain)."""
    cfg = tiny_config("amazon", target_domain=TARGET).with_overrides(
        ["train.max_epochs=1", "train.num_threads=1", "train.batch_size=256"]
    ).validate()
    result = run_experiment(cfg, processed_dir, str(tmp_path_factory.mktemp("experiment")))
    return result.model_dir, float(result.target_auc)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An initialised, empty SQLite store: MLflow's schema migrations take seconds, so run them once."""
    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return str(path)


@pytest.fixture
def uri(empty_store: str, tmp_path) -> str:
    """A fresh store per test (a copy of the empty one); artifacts go to ``tmp_path/mlartifacts``."""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


def _register(model_dir: str, uri: str, decision: GateDecision, run_id: str, **kwargs) -> object:
    args = {
        "tracking_uri": uri,
        "model_name": NAME,
        "metrics": {"test_auc": decision.candidate_auc, "test_logloss": 0.5},
        "params": {"model": {"name": "cdanet", "alpha": 0.01}, "seeds": [1, 2]},
        "decision": decision,
        "lineage": {"data_fingerprint": "0123abcd", "pipeline_run_id": run_id, "code_version": "0.1.0"},
        "pipeline_run_id": run_id,
    }
    return register_candidate(model_dir, **{**args, **kwargs})


def _versions(uri: str) -> list[str]:
    try:
        return sorted(str(v.version) for v in MlflowClient(uri, registry_uri=uri).search_model_versions(f"name = '{NAME}'"))
    except MlflowException:
        return []


def _active_runs(uri: str) -> int:
    client = MlflowClient(uri)
    return sum(len(client.search_runs([e.experiment_id])) for e in client.search_experiments())


def _test_table(processed_dir: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in split_files(os.path.join(processed_dir, TARGET), "test")])


def test_blessed_candidate_becomes_champion_and_scores_like_torch(
    trained: tuple[str, float], processed_dir: str, uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, auc = trained
    decision = decide(auc, None, GateConfig(min_auc=0.0, domain=TARGET))
    assert decision.blessed

    v = _register(model_dir, uri, decision, "run-1", processed_root=processed_dir)

    assert (v.version, v.aliases, v.blessed, v.reused) == ("1", [CHAMPION_ALIAS], True, False)
    champion = get_champion(uri, NAME)
    assert champion is not None and champion.version == "1" and champion.run_id == v.run_id
    assert champion.metrics["test_auc"] == pytest.approx(auc)
    assert champion.tags["cdanet.lineage.data_fingerprint"] == "0123abcd"
    run = MlflowClient(uri).get_run(v.run_id)
    assert run.data.params["model.alpha"] == "0.01" and run.data.params["seeds"] == "[1, 2]"

    # Load through the alias with MLflow's own API, as a serving process would.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION_ALIAS}")
    table = _test_table(processed_dir)
    loaded = load_model_dir(model_dir)
    schema = loaded.schemas[TARGET]
    inputs = {str(c.name): repr(c.type) for c in pyfunc.metadata.signature.inputs.inputs}
    assert inputs["category"] == "Array(long)" and inputs["title"] == "Array(double)"
    assert inputs["writer"] == "long"

    scores = pyfunc.predict(features_frame(table, schema))
    with torch.inference_mode():
        logits = loaded.model({TARGET: table_to_batch(schema, table)})[TARGET]
    expected = torch.sigmoid(logits).numpy()
    assert scores.shape == (table.num_rows,) and scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    # Whole processed rows (numpy list cells, label/timestamp/raw ids) score the same.
    np.testing.assert_allclose(pyfunc.predict(table.to_pandas()), expected, rtol=0, atol=1e-6)

    # The gate's champion score on the same split reproduces the candidate's own evaluation.
    scored = score_champion(processed_dir, uri, NAME, TARGET)
    assert scored.auc == pytest.approx(auc, abs=1e-9)
    assert (scored.version, scored.model_uri, scored.split, scored.rows) == ("1", f"models:/{NAME}/1", "test", table.num_rows)
    assert scored.encoding == ENCODING_AS_IS  # the same preprocessing run: nothing to re-encode


def test_rejected_candidate_keeps_the_alias_and_its_reasons(trained: tuple[str, float], uri: str) -> None:
    model_dir, auc = trained
    _register(model_dir, uri, decide(0.75, None, GATE), "run-1")
    rejected = decide(0.70, 0.75, GATE, champion_version="1")
    assert not rejected.blessed

    v = _register(model_dir, uri, rejected, "run-2")

    assert (v.version, v.aliases, v.blessed) == ("2", [], False)
    assert get_champion(uri, NAME).version == "1"
    tags = MlflowClient(uri, registry_uri=uri).get_model_version(NAME, "2").tags
    assert tags[TAG_REASONS] == "\n".join(rejected.reasons) and "regresses" in tags[TAG_REASONS]
    assert tags["cdanet.gate.blessed"] == "false" and tags[TAG_STATE] == "complete"
    assert tags["cdanet.gate.summary"].startswith("REJECTED")


def test_baseline_and_calibration_figures_travel_to_tags_and_metrics(trained: tuple[str, float], uri: str) -> None:
    model_dir, _ = trained
    rejected = decide(0.70, None, GATE, baseline_auc=0.72, baseline_model="id-only logistic regression",
                      baseline_logloss=0.55, candidate_logloss=0.5, base_rate_logloss=0.6)
    assert not rejected.blessed and rejected.baseline_passed is False

    v = _register(model_dir, uri, rejected, "run-3")

    tags = MlflowClient(uri, registry_uri=uri).get_model_version(NAME, v.version).tags
    assert tags["cdanet.gate.baseline_auc"] == "0.72" and "does not beat the in-run baseline" in tags[TAG_REASONS]
    assert "baseline AUC 0.7200" in tags["cdanet.gate.summary"]
    metrics = MlflowClient(uri).get_run(v.run_id).data.metrics
    assert (metrics["gate_baseline_auc"], metrics["gate_baseline_logloss"]) == (0.72, 0.55)
    assert (metrics["gate_candidate_logloss"], metrics["gate_base_rate_logloss"]) == (0.5, 0.6)
    assert get_champion(uri, NAME) is None


def test_same_pipeline_run_registers_once(trained: tuple[str, float], uri: str) -> None:
    model_dir, _ = trained
    first = _register(model_dir, uri, decide(0.7, None, GATE), "run-7")
    again = _register(model_dir, uri, decide(0.7, None, GATE), "run-7")

    assert _versions(uri) == ["1"]
    assert again.reused and (again.version, again.run_id, again.aliases) == (first.version, first.run_id, first.aliases)
    assert _active_runs(uri) == 1


def test_version_left_pending_by_a_killed_attempt_is_redone(trained: tuple[str, float], uri: str) -> None:
    model_dir, _ = trained
    first = _register(model_dir, uri, decide(0.7, None, GATE), "run-9")
    # What a pod killed between creating the version and completing it leaves behind.
    MlflowClient(uri, registry_uri=uri).set_model_version_tag(NAME, first.version, TAG_STATE, "pending")

    redo = _register(model_dir, uri, decide(0.7, None, GATE), "run-9")

    assert not redo.reused and _versions(uri) == ["2"]
    assert redo.aliases == [CHAMPION_ALIAS] and _active_runs(uri) == 1


def test_failure_after_the_run_exists_leaves_nothing(trained: tuple[str, float], uri: str, tmp_path) -> None:
    model_dir, _ = trained
    no_test_split = tmp_path / "processed"
    (no_test_split / TARGET).mkdir(parents=True)  # the input example cannot be read from here

    with pytest.raises(FileNotFoundError, match="no test split"):
        _register(model_dir, uri, decide(0.7, None, GATE), "run-3", processed_root=str(no_test_split))

    assert _versions(uri) == [] and _active_runs(uri) == 0
    assert MlflowClient(uri, registry_uri=uri).search_registered_models() == []


def test_missing_weights_fail_before_anything_is_created(trained: tuple[str, float], uri: str, tmp_path) -> None:
    model_dir, _ = trained
    _register(model_dir, uri, decide(0.7, None, GATE), "run-1")
    broken = tmp_path / "broken_model"
    shutil.copytree(model_dir, broken)
    os.remove(broken / "weights.pt")

    with pytest.raises(ValueError, match="weights.pt"):
        _register(str(broken), uri, decide(0.8, 0.7, GATE, champion_version="1"), "run-2")

    assert _versions(uri) == ["1"] and get_champion(uri, NAME).version == "1" and _active_runs(uri) == 1


@pytest.mark.parametrize("failing_call", ["set_registered_model_alias", "set_model_version_tag"])
def test_fault_while_promoting_restores_the_previous_champion(
    trained: tuple[str, float], uri: str, monkeypatch: pytest.MonkeyPatch, failing_call: str
) -> None:
    """The alias is the last thing to move; completing the version comes after it (fault injection)."""
    model_dir, _ = trained
    _register(model_dir, uri, decide(0.7, None, GATE), "run-1")

    def fail(self: MlflowClient, *args: object, **kwargs: object) -> None:
        raise MlflowException(f"injected failure in {failing_call}")

    monkeypatch.setattr(MlflowClient, failing_call, fail)
    with pytest.raises(MlflowException, match="injected"):
        _register(model_dir, uri, decide(0.8, 0.7, GATE, champion_version="1"), "run-2")
    monkeypatch.undo()

    assert _versions(uri) == ["1"]
    assert get_champion(uri, NAME).version == "1"
    assert _active_runs(uri) == 1
    # The failed pipeline run can be retried and then registers normally.
    assert _register(model_dir, uri, decide(0.8, 0.7, GATE, champion_version="1"), "run-2").aliases == [CHAMPION_ALIAS]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"params": {"callback": object()}}, "param 'callback'"),
        ({"params": {"x": "y" * 7000}}, "6000"),
        ({"metrics": {"auc": "high"}}, "metric 'auc'"),
        ({"lineage": {"data": {"nested": 1}}}, "lineage 'data'"),
        ({"pipeline_run_id": "it's"}, "quotes"),
    ],
)
def test_unloggable_inputs_are_rejected_before_anything_is_created(
    trained: tuple[str, float], uri: str, kwargs: dict, match: str
) -> None:
    model_dir, _ = trained
    with pytest.raises(ValueError, match=match):
        _register(model_dir, uri, decide(0.7, None, GATE), "run-1", **kwargs)
    assert _versions(uri) == [] and _active_runs(uri) == 0


def test_no_champion_scores_none(processed_dir: str, uri: str) -> None:
    assert get_champion(uri, NAME) is None
    assert score_champion(processed_dir, uri, NAME, TARGET) is None


def test_champion_of_another_domain_or_schema_is_refused(
    trained: tuple[str, float], processed_dir: str, uri: str, tmp_path
) -> None:
    model_dir, _ = trained
    _register(model_dir, uri, decide(0.7, None, GATE), "run-1")

    with pytest.raises(ChampionIncompatibleError, match="scores domain 'book', not 'movie'"):
        score_champion(processed_dir, uri, NAME, "movie")

    # Re-preprocessed data whose vocabulary grew: the champion's indices would mean other values.
    grown = tmp_path / "processed"
    shutil.copytree(processed_dir, grown)
    schema_path = grown / TARGET / "schema.json"
    schema = json.loads(schema_path.read_text())
    next(f for f in schema["fields"] if f["name"] == "writer")["vocab_size"] += 10
    schema_path.write_text(json.dumps(schema))
    # The champion's directory carries no vocabularies (the synthetic data has none): nothing to map by.
    with pytest.raises(ChampionIncompatibleError, match=r"fields differ: \['writer'\].*saved without vocabularies"):
        score_champion(str(grown), uri, NAME, TARGET)


def test_versions_logged_before_the_serving_module_still_unpickle() -> None:
    """A version registered before the split pickled its python_model as ``cdanet.registry.CDAnetPyfunc``
    (cloudpickle stores importable classes by reference); the gate must still load such a champion."""
    import pickle

    from cdanet.serving import CDAnetPyfunc

    assert pickle.loads(b"ccdanet.registry\nCDAnetPyfunc\n.") is CDAnetPyfunc


def test_blessing_against_a_champion_that_moved_is_not_promoted_without_a_regate(
    trained: tuple[str, float], uri: str
) -> None:
    """The compare-and-set in one process: the gate saw no champion, another run promoted first."""
    model_dir, auc = trained
    first = decide(auc, None, GATE)
    _register(model_dir, uri, first, "run-1")
    late = _register(model_dir, uri, decide(auc, None, GATE), "run-2")  # blessed against "no champion"
    assert (late.blessed, late.aliases) == (False, [])
    assert get_champion(uri, NAME).version == "1"
    assert "champion is now 1" in MlflowClient(uri).get_model_version(NAME, late.version).tags[TAG_REASONS]


def test_regate_judges_the_current_champion_and_its_decision_is_registered(
    trained: tuple[str, float], uri: str
) -> None:
    model_dir, auc = trained
    _register(model_dir, uri, decide(auc, None, GATE), "run-1")
    seen = []

    def regate(current: str | None) -> GateDecision:
        seen.append(current)
        return decide_again(stale, auc, champion_version=current)

    stale = decide(auc, None, GATE)
    v = _register(model_dir, uri, stale, "run-2", regate=regate)
    assert seen == ["1"] and v.blessed and v.aliases == [CHAMPION_ALIAS] and v.decision.champion_version == "1"
    assert "re-gated at promotion" in v.decision.reasons[-1]
    # A regate that judges another champion than the current one is a bug, not a promotion.
    with pytest.raises(RuntimeError, match="not the current 2"):
        _register(model_dir, uri, decide(auc, None, GATE), "run-3",
                  regate=lambda current: decide_again(stale, auc, champion_version="1"))
    assert get_champion(uri, NAME).version == "2" and _versions(uri) == ["1", "2"]


def test_drift_anchor_travels_through_the_registry(trained: tuple[str, float], processed_dir: str, uri: str) -> None:
    model_dir, auc = trained
    cfg = GateConfig(min_auc=0.5, tolerance=0.01, domain=TARGET)
    client = MlflowClient(uri)
    _register(model_dir, uri, decide(auc, None, cfg), "run-1")
    assert client.get_model_version(NAME, "1").tags[TAG_ANCHOR] == "1"  # the first model anchors itself
    used_tolerance = decide(auc - 0.005, auc, cfg, champion_version="1")
    assert used_tolerance.blessed and not used_tolerance.sets_anchor
    _register(model_dir, uri, used_tolerance, "run-2")
    assert client.get_model_version(NAME, "2").tags[TAG_ANCHOR] == "1"

    # The next gate re-scores the champion and its anchor on the same rows.
    def judge(champion_auc: float | None, **refs: object) -> GateDecision:
        return decide(auc - 0.009, champion_auc, cfg, **refs)

    out = steps._against_registry(processed_dir, uri, NAME, TARGET, "test", judge)
    assert (out.champion.version, out.anchor.version) == ("2", "1")
    assert out.anchor.auc == pytest.approx(auc, abs=1e-6) and out.decision.anchor_auc == out.anchor.auc
    assert out.decision.blessed and out.decision.anchor_passed and "drift anchor" in out.to_markdown()
    # An anchor that is gone grants no tolerance against the champion.
    client.delete_model_version(NAME, "1")
    gone = steps._against_registry(processed_dir, uri, NAME, TARGET, "test", judge)
    assert gone.anchor is None and "no longer exists" in gone.decision.anchor_note
    assert not gone.decision.blessed and gone.decision.non_regression_passed is False
