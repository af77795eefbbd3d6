"""The MLflow store plumbing shared by the registry and the pipeline's MLflow run, on a real SQLite store."""

from __future__ import annotations

import os
import pathlib

import mlflow
import pytest
from filelock import FileLock

from cdanet.mlflow_store import (
    MAX_PARAM_CHARS,
    RegistryLockTimeout,
    default_artifact_location,
    ensure_experiment,
    file_lock,
    flatten_params,
    is_safe_id,
    sqlite_path,
    store_client,
)


def test_sqlite_path_is_the_absolute_database_file(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_path("sqlite:///store/m.db?timeout=30") == str(tmp_path / "store" / "m.db")
    assert sqlite_path(f"sqlite:///{tmp_path}/m.db") == str(tmp_path / "m.db")
    assert sqlite_path("http://mlflow:5000") is None
    assert sqlite_path("postgresql://u@db/mlflow") is None


def test_client_of_a_sqlite_store_tracks_and_registers_there(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path}/elsewhere.db")  # not followed
    uri = f"sqlite:///{tmp_path}/m.db"
    client = store_client(uri)
    assert client.tracking_uri == uri
    assert os.path.exists(tmp_path / "m.db")  # opened (migrated) at once, under the init lock
    client.create_registered_model("cdanet-x")
    assert mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model("cdanet-x").name == "cdanet-x"
    with pytest.raises(ValueError, match="tracking_uri is empty"):
        store_client("")


def test_sqlite_experiments_keep_their_artifacts_next_to_the_database(tmp_path) -> None:
    client = store_client(f"sqlite:///{tmp_path}/m.db")
    location = default_artifact_location(client)
    assert location == pathlib.Path(tmp_path, "mlartifacts").as_uri()
    assert default_artifact_location(mlflow.MlflowClient(tracking_uri="http://mlflow:5000")) is None
    first = ensure_experiment(client, "cdanet-x", location)
    assert client.get_experiment(first).artifact_location == location
    assert ensure_experiment(client, "cdanet-x", None) == first  # found, not created twice
    client.delete_experiment(first)
    assert ensure_experiment(client, "cdanet-x", None) == first  # a deleted experiment is restored
    assert client.get_experiment(first).lifecycle_stage == "active"


def test_flatten_params_dots_nested_keys_and_rejects_what_mlflow_cannot_store() -> None:
    nested = {"model": {"alpha": 0.01, "dims": [8, 4]}, "name": "x", "seed": None, "fast": True}
    assert flatten_params(nested) == {"model.alpha": "0.01", "model.dims": "[8, 4]", "name": "x",
                                      "seed": "None", "fast": "True"}
    with pytest.raises(ValueError, match=r"param 'model.fn' has a value of type object that cannot be logged"):
        flatten_params({"model": {"fn": object()}})
    with pytest.raises(ValueError, match=f"param 'note' is {MAX_PARAM_CHARS + 1} characters long"):
        flatten_params({"note": "x" * (MAX_PARAM_CHARS + 1)})


@pytest.mark.parametrize("value, safe", [("run-1", True), ("it's", False), ('a"b', False), ("a`b", False),
                                          ("a\\b", False)])
def test_ids_that_would_break_a_search_filter_are_unsafe(value: str, safe: bool) -> None:
    assert is_safe_id(value) is safe


def test_a_held_file_lock_times_out_naming_the_file_and_what_waited(tmp_path) -> None:
    path = str(tmp_path / "m.db.runs.lock")
    with FileLock(path):
        with pytest.raises(RegistryLockTimeout, match=rf"waited 0 s for the lock file {path} \(opening a run\); "
                                                      r"another process holds it"):
            with file_lock(path, 0.05, "opening a run"):
                pass
    with file_lock(path, 0.05, "opening a run"):  # free again
        pass
