"""The MLflow store plumbing that the registry and the pipeline's MLflow run share: clients, locks, experiments.

:mod:`cdanet.registry` (model versions, the champion alias) and :mod:`cdanet.tracking` (the MLflow
run of a pipeline run) both talk to one store through these:

* :func:`store_client`: a client of a tracking URI (tracking and registry on the same URI), with
  MLflow's telemetry and progress bars off, that opens a fresh ``sqlite:///`` store one process at
  a time (its first open runs MLflow's schema migrations, which collide when two processes run them);
* :func:`sqlite_path` and :func:`file_lock`: the database file of a ``sqlite:///`` URI, and an OS
  file lock next to it (released by the OS when its holder dies);
* :func:`ensure_experiment` and :func:`default_artifact_location`: an experiment found, restored or
  created (also when another process creates it concurrently), with its artifacts next to a
  SQLite database rather than in the working directory;
* :func:`flatten_params`: nested params as MLflow params (dotted keys, text values, checked);
* :func:`is_safe_id`: whether a name or run id can be quoted in an MLflow search filter.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

from filelock import FileLock
from filelock import Timeout as FileLockTimeout
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

__all__ = [
    "INIT_LOCK_TIMEOUT_S",
    "MAX_PARAM_CHARS",
    "RegistryLockTimeout",
    "default_artifact_location",
    "ensure_experiment",
    "file_lock",
    "flatten_params",
    "is_error",
    "is_safe_id",
    "sqlite_path",
    "store_client",
]

INIT_LOCK_TIMEOUT_S = 300.0  # how long a process waits for another to finish opening a fresh sqlite store
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
_SQLITE = "sqlite:///"
#: Characters that would break out of the quoted values of an MLflow search filter.
_UNSAFE_ID = re.compile(r"['\"`\\]")


class RegistryLockTimeout(TimeoutError):
    """The registry lock stayed held by another process for longer than the caller would wait."""


def sqlite_path(tracking_uri: str) -> str | None:
    """The absolute path of the database file of a ``sqlite:///`` URI (query string dropped), else None."""
    if not tracking_uri.startswith(_SQLITE):
        return None
    return os.path.abspath(tracking_uri[len(_SQLITE):].split("?", 1)[0])


@contextlib.contextmanager
def file_lock(path: str, timeout: float, what: str) -> Iterator[None]:
    """Hold the OS file lock ``path``; after ``timeout`` seconds raise :class:`RegistryLockTimeout` naming it and ``what``."""
    lock = FileLock(path, timeout=timeout)
    try:
        lock.acquire()
    except FileLockTimeout as e:
        raise RegistryLockTimeout(
            f"waited {timeout:.0f} s for the lock file {path} ({what}); another process holds it"
        ) from e
    try:
        yield
    finally:
        lock.release()


def store_client(tracking_uri: str) -> MlflowClient:
    """A client of ``tracking_uri`` for both tracking and registry; a fresh sqlite store is opened under a lock.

    Raises ``ValueError`` for an empty URI.
    """
    # Pipeline workers have no network: keep MLflow's usage telemetry off, and its per-file
    # download progress bars out of the step logs, unless the caller chose otherwise.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not tracking_uri:
        raise ValueError("tracking_uri is empty; pass e.g. sqlite:///<dir>/mlflow.db or http://mlflow:5000")
    db = sqlite_path(tracking_uri)
    if db is None:
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    # The client opens the store at once, and a fresh store runs MLflow's schema migrations there:
    # two processes migrating one new file collide (`_alembic_tmp_experiments already exists`,
    # "expected to match one row ... in 'alembic_version'"). One process at a time opens it.
    with file_lock(f"{db}.init.lock", INIT_LOCK_TIMEOUT_S, f"the initialisation of the MLflow store {db}"):
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def is_error(e: MlflowException, code: int) -> bool:
    """Whether ``e`` carries the MLflow error code ``code`` (e.g. ``RESOURCE_ALREADY_EXISTS``)."""
    return e.error_code == ErrorCode.Name(code)


def default_artifact_location(client: MlflowClient) -> str | None:
    """``file://<db folder>/mlartifacts`` for a ``sqlite:///`` store; None (the server decides) otherwise.

    MLflow's own default for a SQLite store, ``./mlruns``, would scatter artifacts into whatever
    the working directory of each step is.
    """
    db = sqlite_path(client.tracking_uri)
    if db is None:
        return None
    return pathlib.Path(os.path.dirname(db), "mlartifacts").as_uri()


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``: restored if deleted, created (at ``artifact_location``) if absent.

    An experiment another process creates between the lookup and the create is found, not an error.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as e:  # created concurrently by another step
        if is_error(e, RESOURCE_ALREADY_EXISTS):
            return client.get_experiment_by_name(name).experiment_id
        raise


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params -> ``{"model.alpha": "0.01"}``; lists as JSON; anything else is a ``ValueError``.

    Values are numbers, strings, booleans or None (as ``str``), or JSON lists/dicts of them; a value
    longer than :data:`MAX_PARAM_CHARS` is an error too.
    """
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{name}."))
            continue
        if value is None or isinstance(value, (bool, int, float, str)):
            text = str(value)
        else:
            try:
                text = json.dumps(value, sort_keys=True, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise ValueError(
                    f"param {name!r} has a value of type {type(value).__name__} that cannot be logged "
                    f"({e}); params must be numbers, strings, booleans, None, or JSON lists/dicts of them"
                ) from e
        if len(text) > MAX_PARAM_CHARS:
            raise ValueError(f"param {name!r} is {len(text)} characters long; MLflow stores at most {MAX_PARAM_CHARS}")
        out[name] = text
    return out


def is_safe_id(value: str) -> bool:
    """False when ``value`` holds a quote, backtick or backslash: it could not be quoted in a search filter."""
    return _UNSAFE_ID.search(value) is None
