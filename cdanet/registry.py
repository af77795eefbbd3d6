"""Registration and aliases: every candidate becomes an MLflow model version; a blessed one gets ``@champion``.

The logged model is the pyfunc of :mod:`cdanet.serving`; the gate's scoring of the champion is
:mod:`cdanet.champion`. This module writes the registry and reads versions back from it.

Registration (:func:`register_candidate`) is idempotent per pipeline run and all-or-nothing:

* a model version carries the tag ``cdanet.pipeline_run_id``; a retry of the same pipeline run
  finds it and returns it instead of creating a second version;
* versions are created with ``cdanet.registration_state=pending`` and marked ``complete`` as
  the last step, so a version left behind by a killed attempt is recognised, removed and redone;
* on any error, what this call created (the run with its artifacts, the version, the moved
  ``champion`` alias, a new registered model) is removed or restored before the error propagates.

Promotion is a compare-and-set (:func:`promotion_lock`, the locks section below): the alias moves
only if the champion is still the version the gate compared with; otherwise the candidate is
re-gated against the new champion. Registration runs under the same lock, so concurrent attempts of
one pipeline run create one version, and a fresh sqlite store is opened (migrated) by one process
at a time.

Both blessed and rejected candidates become versions (the registry is the record of every
candidate); only a blessed one gets the ``champion`` alias. A rejected version carries the gate's
reasons in the tag ``cdanet.gate.reasons``.

The logged model is self-contained and pickle-free (:mod:`cdanet.serving`): MLflow
models-from-code with the ``cdanet`` modules it needs shipped as ``code_paths`` and requirements an
index can satisfy (mlflow, torch, numpy, pandas, pyarrow; no ``cdanet``), so ``mlflow models serve``
runs it where the project is not installed. This library never runs that shipped code: the gate
reads a version back with :func:`load_version`, which loads the logged model directory's data
(JSON, vocabulary text, tensor-only weights) with the installed code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
)
from mlflow.tracking import MlflowClient

import cdanet
from cdanet.artifacts import load_model_dir
from cdanet.gate import GateDecision, superseded
from cdanet.mlflow_store import (
    RegistryLockTimeout,
    default_artifact_location,
    ensure_experiment,
    file_lock,
    flatten_params,
    is_error,
    is_safe_id,
    sqlite_path,
    store_client,
)

# CDAnetPyfunc: versions registered before cdanet.serving existed pickled their python_model as
# ``cdanet.registry.CDAnetPyfunc``; this name keeps such pickles resolvable for MLflow's own loader
# (the gate reads every version as data, load_version).
from cdanet.serving import (
    CDAnetPyfunc,
    example_frame,
    load_logged_model,
    read_rows,
    requirement_pins,
    save_served_model,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CHAMPION_ALIAS",
    "LOCK_KINDS",
    "ChampionInfo",
    "RegisteredVersion",
    "RegistryLockTimeout",
    "get_champion",
    "get_version",
    "load_version",
    "promotion_lock",
    "RegistryLockLost",
    "register_candidate",
]

CHAMPION_ALIAS = "champion"
MODEL_ARTIFACT_PATH = "model"  # name of the logged model inside its run

TAG_PIPELINE_RUN = "cdanet.pipeline_run_id"
TAG_STATE = "cdanet.registration_state"
TAG_BLESSED = "cdanet.gate.blessed"
TAG_SUMMARY = "cdanet.gate.summary"
TAG_REASONS = "cdanet.gate.reasons"
TAG_TARGET = "cdanet.target_domain"
#: The version of the last champion that was no worse than every model the gate compared it with
#: (the drift anchor, :mod:`cdanet.gate`); a version that is its own anchor carries its own number.
TAG_ANCHOR = "cdanet.gate.anchor_version"
TAG_CHAMPION_SEEN = "cdanet.gate.champion_version"
LINEAGE_PREFIX = "cdanet.lineage."
STATE_PENDING, STATE_COMPLETE = "pending", "complete"

_EXAMPLE_ROWS = 5
_MAX_TAG_CHARS = 8000  # MLflow's limit on a run tag value


# ---- result types -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version created (or, on retry, found) by :func:`register_candidate`."""

    name: str
    version: str
    aliases: list[str]
    run_id: str
    model_uri: str  # models:/<name>/<version>
    blessed: bool
    reused: bool = False  # True when a previous attempt of the same pipeline run had created it
    #: The decision this call registered: the gate's, or the re-gated one if the champion had moved
    #: meanwhile (:func:`register_candidate`); None when the version was reused.
    decision: GateDecision | None = None


@dataclass(frozen=True)
class ChampionInfo:
    """The version behind the ``champion`` alias, with the metrics its run logged."""

    name: str
    version: str
    model_uri: str  # models:/<name>/<version>: pinned, unlike the alias URI
    run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def alias_uri(self) -> str:
        """``models:/<name>@champion``: follows the alias wherever it moves."""
        return f"models:/{self.name}@{CHAMPION_ALIAS}"


# ---- locks ---------------------------------------------------------------------------------------
#
# The champion alias moves by compare-and-set: under a lock, register_candidate reads the alias,
# checks it is the version the gate compared with (else re-gates), and only then moves it. MLflow
# has no conditional alias update, so the lock is ours:
#
# * a ``sqlite:///`` store (the default): an OS file lock (:func:`cdanet.mlflow_store.file_lock`:
#   fcntl/LockFileEx) on ``<db>.registry.lock`` next to the database. Processes that share the
#   store share its folder; the OS drops the lock when its holder dies, so a killed run never
#   blocks the next one.
# * any other store (the MLflow server, PostgreSQL behind it): a registry-side mutex. Creating a
#   registered model is the one create-if-absent MLflow offers (the name is the table's primary
#   key, so exactly one of several concurrent creates succeeds), so holding the lock = having
#   created the registered model ``<model>.cdanet-lock``, tagged with its holder and an expiry.
#   Releasing deletes it. While a run holds it, a heartbeat thread pushes the expiry forward every
#   ``ttl / 4`` seconds, so a live holder never expires however long its registration takes; a
#   holder killed before releasing leaves it behind, and ``ttl`` after its last heartbeat the next
#   run deletes it and takes the lock. Before it moves the alias, the holder checks that the lock
#   is still its own (fencing, :class:`RegistryLockLost`); a waiter deletes an expired lock only if
#   it still names the holder it saw expire.

LOCK_KINDS = ("auto", "file", "registry")
LOCK_TIMEOUT_S = 1800.0
LOCK_TTL_S = 600.0  # since the holder's last heartbeat
LOCK_MODEL_SUFFIX = ".cdanet-lock"
TAG_LOCK_HOLDER, TAG_LOCK_EXPIRES = "cdanet.lock.holder", "cdanet.lock.expires_unix"
_LOCK_POLL_S = 0.2


class RegistryLockLost(RuntimeError):
    """The registry lock expired while this run held it (no heartbeat for ``ttl`` seconds) and
    another run may hold it now: the champion alias is not moved."""


class _Heartbeat:
    """Pushes the registry mutex's expiry forward while its holder is alive."""

    def __init__(self, client: MlflowClient, lock_name: str, holder: str, ttl: float) -> None:
        self.client, self.lock_name, self.holder, self.ttl = client, lock_name, holder, ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cdanet-lock-heartbeat-{lock_name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                if not self.holds():
                    return  # lost: never push another holder's expiry
                self.client.set_registered_model_tag(self.lock_name, TAG_LOCK_EXPIRES, f"{time.time() + self.ttl:.0f}")
            except MlflowException:
                logger.warning("registry: heartbeat of the lock %r failed; retrying", self.lock_name, exc_info=True)

    def holds(self) -> bool:
        """Whether the lock in the registry is still this holder's."""
        try:
            tags = self.client.get_registered_model(self.lock_name).tags or {}
        except MlflowException:
            return False
        return tags.get(TAG_LOCK_HOLDER) == self.holder

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def _registry_mutex(
    client: MlflowClient, model_name: str, timeout: float, ttl: float,
) -> Iterator[Callable[[], None]]:
    lock_name = f"{model_name}{LOCK_MODEL_SUFFIX}"
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_registered_model(
                lock_name, tags={TAG_LOCK_HOLDER: holder, TAG_LOCK_EXPIRES: f"{time.time() + ttl:.0f}"},
                description=f"cdanet promotion lock of {model_name!r}: held while a run registers a version",
            )
            break
        except MlflowException as e:
            # The SQL store answers a name clash by reading the existing model; if its holder deleted
            # it in between, the clash comes back as RESOURCE_DOES_NOT_EXIST (MLflow 3.x): the lock
            # was just free, so try again.
            if not (is_error(e, RESOURCE_ALREADY_EXISTS) or is_error(e, RESOURCE_DOES_NOT_EXIST)):
                raise
        _expire_mutex(client, lock_name)
        if time.monotonic() >= deadline:
            raise RegistryLockTimeout(
                f"waited {timeout:.0f} s for the registry lock {lock_name!r} (registered model) of {model_name!r}; "
                f"another run holds it. If no run is registering, delete that registered model"
            )
        time.sleep(_LOCK_POLL_S)
    heartbeat = _Heartbeat(client, lock_name, holder, ttl)

    def still_held() -> None:
        if not heartbeat.holds():
            raise RegistryLockLost(
                f"the registry lock {lock_name!r} of {model_name!r} expired while this run held it "
                f"(no heartbeat for {ttl:.0f} s); the champion alias was not moved"
            )

    try:
        yield still_held
    finally:
        heartbeat.stop()
        try:
            if heartbeat.holds():
                client.delete_registered_model(lock_name)
            else:  # it expired and another run took it: that run's lock now
                logger.warning("registry: the lock %r expired while this run held it (ttl %.0f s)", lock_name, ttl)
        except MlflowException:
            logger.exception("registry: could not release the lock %r; it expires on its own", lock_name)


def _expire_mutex(client: MlflowClient, lock_name: str) -> None:
    """Delete the mutex if its holder let it expire (killed while holding it: no heartbeat)."""
    try:
        tags = client.get_registered_model(lock_name).tags or {}
        expires = float(tags.get(TAG_LOCK_EXPIRES, "inf"))
    except (MlflowException, ValueError):
        return  # released meanwhile, or not ours to judge
    if time.time() <= expires:
        return
    # Read again just before deleting: another waiter may have cleared it and taken a fresh lock
    # since; delete only the lock whose holder was seen to expire.
    try:
        again = client.get_registered_model(lock_name).tags or {}
    except MlflowException:
        return
    if again.get(TAG_LOCK_HOLDER) != tags.get(TAG_LOCK_HOLDER) or again.get(TAG_LOCK_EXPIRES) != tags.get(TAG_LOCK_EXPIRES):
        return
    logger.warning("registry: removing the lock %r left by %s (expired)", lock_name, tags.get(TAG_LOCK_HOLDER))
    with contextlib.suppress(MlflowException):
        client.delete_registered_model(lock_name)


@contextlib.contextmanager
def promotion_lock(
    tracking_uri: str, model_name: str, *, kind: str = "auto", timeout: float = LOCK_TIMEOUT_S, ttl: float = LOCK_TTL_S,
) -> Iterator[MlflowClient]:
    """Hold the lock under which versions of ``model_name`` are registered and the champion alias moves.

    ``kind``: ``auto`` (a file lock for ``sqlite:///`` stores, else the registry-side mutex),
    ``file`` or ``registry``. Yields a client of the store. Raises :class:`RegistryLockTimeout`
    after ``timeout`` seconds.
    """
    with _held_lock(tracking_uri, model_name, kind, timeout, ttl) as (client, _):
        yield client


@contextlib.contextmanager
def _held_lock(
    tracking_uri: str, model_name: str, kind: str, timeout: float, ttl: float,
) -> Iterator[tuple[MlflowClient, Callable[[], None]]]:
    """:func:`promotion_lock`, also yielding the fencing check to call before the alias moves."""
    if kind not in LOCK_KINDS:
        raise ValueError(f"lock kind {kind!r} is not one of {LOCK_KINDS}")
    client = store_client(tracking_uri)
    db = sqlite_path(tracking_uri)
    if kind == "file" and db is None:
        raise ValueError(f"a file lock needs a sqlite:/// store, not {tracking_uri!r}; use kind='registry'")
    if kind == "file" or (kind == "auto" and db is not None):
        # The OS holds a file lock for as long as its process lives: it cannot be lost.
        with file_lock(f"{db}.registry.lock", timeout, f"registrations of {model_name!r}"):
            yield client, lambda: None
    else:
        with _registry_mutex(client, model_name, timeout, ttl) as still_held:
            yield client, still_held


def _check_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise ValueError(f"metric {key!r} must be a number, got {type(value).__name__} {value!r}")
        out[str(key)] = float(value)
    return out


def _version_tags(
    decision: GateDecision, lineage: Mapping[str, Any], pipeline_run_id: str, target: str
) -> dict[str, str]:
    tags = {
        TAG_PIPELINE_RUN: pipeline_run_id,
        TAG_BLESSED: str(decision.blessed).lower(),
        TAG_SUMMARY: decision.summary,
        TAG_REASONS: "\n".join(decision.reasons),
        TAG_TARGET: target,
        "cdanet.gate.candidate_auc": repr(decision.candidate_auc),
        "cdanet.gate.champion_auc": "none" if decision.champion_auc is None else repr(decision.champion_auc),
        "cdanet.gate.baseline_auc": "none" if decision.baseline_auc is None else repr(decision.baseline_auc),
        "cdanet.code_version": cdanet.__version__,
        TAG_CHAMPION_SEEN: decision.champion_version or "none",
    }
    for key, value in lineage.items():
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise ValueError(f"lineage {key!r} must be a string or number, got {type(value).__name__}")
        tags[f"{LINEAGE_PREFIX}{key}"] = str(value)
    too_long = [k for k, v in tags.items() if len(v) > _MAX_TAG_CHARS]
    if too_long:
        raise ValueError(f"tag(s) {too_long} exceed MLflow's {_MAX_TAG_CHARS}-character limit")
    return tags


def _pins() -> list[str]:
    """Requirements of the logged model: the runtime it was logged with (its cdanet code ships inside it)."""
    return requirement_pins()


def _find_version(client: MlflowClient, name: str, pipeline_run_id: str) -> ModelVersion | None:
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.`{TAG_PIPELINE_RUN}` = '{pipeline_run_id}'")
    except MlflowException as e:
        if is_error(e, RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    if len(found) > 1:
        versions = sorted(v.version for v in found)
        raise RuntimeError(
            f"registered model {name!r} has {len(found)} versions {versions} for pipeline run {pipeline_run_id!r}; "
            "expected at most one (were they registered concurrently?)"
        )
    # search_model_versions returns empty aliases (MLflow 3.17): re-read the version.
    return client.get_model_version(name, found[0].version) if found else None


def _champion_version(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as e:
        # No such model: RESOURCE_DOES_NOT_EXIST; a model without the alias: INVALID_PARAMETER_VALUE
        # ("Registered model alias champion not found.", MLflow 3.17).
        if is_error(e, RESOURCE_DOES_NOT_EXIST) or (is_error(e, INVALID_PARAMETER_VALUE) and "alias" in str(e) and "not found" in str(e)):
            return None
        raise


def _registered(version: ModelVersion, reused: bool) -> RegisteredVersion:
    return RegisteredVersion(
        name=version.name,
        version=str(version.version),
        aliases=sorted(version.aliases or []),
        run_id=version.run_id or "",
        model_uri=f"models:/{version.name}/{version.version}",
        blessed=(version.tags or {}).get(TAG_BLESSED) == "true",
        reused=reused,
    )


@dataclass
class _Created:
    """What one registration attempt has created so far (for the rollback)."""

    registered_model: bool = False
    run_id: str | None = None  # a run this call created (not the pipeline run it was given)
    logged_model: str | None = None  # the LoggedModel's id
    version: str | None = None
    alias_moved: bool = False


def _rollback(client: MlflowClient, name: str, created: _Created, previous_champion: str | None) -> None:
    """Undo ``created`` in reverse order; a failing undo step is logged, never raised over the cause."""
    steps: list[tuple[str, Any]] = []
    if created.alias_moved:
        if previous_champion is not None:
            steps.append((f"restore alias {CHAMPION_ALIAS!r} to version {previous_champion}",
                          lambda: client.set_registered_model_alias(name, CHAMPION_ALIAS, previous_champion)))
        else:
            steps.append((f"delete alias {CHAMPION_ALIAS!r}",
                          lambda: client.delete_registered_model_alias(name, CHAMPION_ALIAS)))
    if created.version is not None:
        steps.append((f"delete version {created.version}", lambda: client.delete_model_version(name, created.version)))
    if created.logged_model is not None:
        steps.append((f"delete logged model {created.logged_model}",
                      lambda: client.delete_logged_model(created.logged_model)))
    if created.run_id is not None:
        steps.append((f"delete run {created.run_id}", lambda: _fail_and_delete_run(client, created.run_id)))
    if created.registered_model:
        steps.append((f"delete registered model {name!r}", lambda: client.delete_registered_model(name)))
    for what, undo in steps:
        try:
            undo()
        except Exception:  # keep undoing: the caller re-raises the original error
            logger.exception("registry rollback: could not %s", what)


def _fail_and_delete_run(client: MlflowClient, run_id: str) -> None:
    client.set_terminated(run_id, status="FAILED")
    client.delete_run(run_id)


def _discard_stale(client: MlflowClient, version: ModelVersion) -> None:
    """Remove a version a killed attempt left half-registered (state still pending), and its run."""
    logger.warning(
        "registry: version %s of %r was left pending by an interrupted attempt of pipeline run %s; redoing it",
        version.version, version.name, (version.tags or {}).get(TAG_PIPELINE_RUN),
    )
    client.delete_model_version(version.name, version.version)
    if version.run_id:
        with contextlib.suppress(MlflowException):
            run = client.get_run(version.run_id)
            # Its LoggedModel: the one whose files the version pointed at (a SQLite registry does not
            # return the version's model_id, MLflow 3.17).
            for logged in client.search_logged_models(experiment_ids=[run.info.experiment_id]):
                if logged.source_run_id == version.run_id and logged.artifact_location == version.source:
                    client.delete_logged_model(logged.model_id)
            # The pipeline run's MLflow run (cdanet.tracking) holds the training record: it stays.
            if run.data.tags.get("cdanet.run_kind") != "pipeline":
                _fail_and_delete_run(client, version.run_id)


# ---- registration -------------------------------------------------------------------------------


def register_candidate(
    model_dir: str,
    *,
    tracking_uri: str,
    model_name: str,
    metrics: Mapping[str, float],
    params: Mapping[str, Any],
    decision: GateDecision,
    lineage: Mapping[str, Any],
    pipeline_run_id: str,
    processed_root: str | None = None,
    experiment_name: str | None = None,
    artifact_location: str | None = None,
    regate: Callable[[str | None], GateDecision] | None = None,
    lock: str = "auto",
    lock_timeout: float = LOCK_TIMEOUT_S,
    run_id: str | None = None,
) -> RegisteredVersion:
    """Log ``model_dir`` as a pyfunc LoggedModel of an MLflow run and register it as a version of ``model_name``.

    The run is ``run_id`` (the pipeline run's, :mod:`cdanet.tracking`: it already holds the
    training record) or, without it, a new run. The model is a LoggedModel (MLflow 3) whose source
    run is that run, the run's metrics linked to it; the version points at both.

    The run holds ``params`` (nested dicts flattened to dotted keys), ``metrics``, the gate decision
    (tags plus ``gate/decision.json``) and ``lineage`` (tags ``cdanet.lineage.<key>``). The version
    gets the same tags; the ``champion`` alias moves to it only when the decision blesses it.

    Promotion is a compare-and-set: everything below runs under :func:`promotion_lock`, and a
    blessed ``decision`` moves the alias only if the champion is still ``decision.champion_version``
    (the version the gate compared with). If another run moved it meanwhile, ``regate(current)``
    (the current champion's version, or None) must return a new decision against that champion,
    which is then registered instead; without ``regate`` the candidate is recorded as rejected.
    A blessed version is tagged with its drift anchor (``cdanet.gate.anchor_version``, see
    :mod:`cdanet.gate`).

    Args:
        model_dir: a model directory written by :func:`cdanet.artifacts.save_model_dir`.
        tracking_uri: MLflow tracking (and registry) URI, e.g. ``sqlite:///mlflow.db``.
        processed_root: when given, the input example is a few real rows of the target domain's
            test split; otherwise schema-conformant placeholder rows.
        experiment_name: MLflow experiment of the run; defaults to ``model_name``.
        artifact_location: artifact root of that experiment if this call creates it; by default
            the server decides, except for a ``sqlite:///`` store, whose artifacts then go to
            ``mlartifacts/`` next to the database file (MLflow's default, ``./mlruns``, would
            scatter them into whatever the working directory is).
        regate: re-decides against the champion that replaced the one the gate saw.
        run_id: an existing run to log into; a rollback then removes the LoggedModel and the version,
            never that run.
        lock, lock_timeout: :func:`promotion_lock`'s ``kind`` and ``timeout``.

    Returns the new version, or the one an earlier attempt with the same ``pipeline_run_id``
    completed (``reused=True``). Raises ``ValueError`` for unloggable params/metrics/lineage before
    anything is created; any later error rolls back what this call created and is re-raised.
    """
    if not model_name or not pipeline_run_id:
        raise ValueError("model_name and pipeline_run_id must be non-empty")
    for what, value in (("model_name", model_name), ("pipeline_run_id", pipeline_run_id)):
        if not is_safe_id(value):
            raise ValueError(f"{what} {value!r} must not contain quotes, backticks or backslashes")
    flat_params = flatten_params(params)
    metric_values = _check_metrics(metrics)

    # Under the lock, "find this run's version, else create it" is atomic too: concurrent attempts
    # of one pipeline run (a retry racing a slow first attempt) register one version.
    with _held_lock(tracking_uri, model_name, lock, lock_timeout, LOCK_TTL_S) as (client, still_held):
        existing = _find_version(client, model_name, pipeline_run_id)
        if existing is not None:
            if (existing.tags or {}).get(TAG_STATE) == STATE_COMPLETE:
                logger.info("registry: pipeline run %s already registered %s version %s", pipeline_run_id,
                            model_name, existing.version)
                return _registered(existing, reused=True)
            _discard_stale(client, existing)

        champion = _champion_version(client, model_name)
        previous_champion = None if champion is None else str(champion.version)
        decision = _decision_for(decision, previous_champion, regate, model_name)
        created = _Created()
        try:
            version = _register(
                client, created, model_dir, model_name, flat_params, metric_values, decision, lineage,
                pipeline_run_id, processed_root, experiment_name or model_name, artifact_location, run_id,
                still_held,
            )
        except BaseException:
            _rollback(client, model_name, created, previous_champion)
            raise
    logger.info("registry: %s version %s (%s)", model_name, version.version, decision.summary)
    return version


def _decision_for(
    decision: GateDecision, current: str | None, regate: Callable[[str | None], GateDecision] | None, model_name: str
) -> GateDecision:
    """The decision to register now that ``current`` is the champion: the gate's own if it still holds."""
    if decision.compared_with(current):
        return decision
    logger.warning(
        "registry: the gate compared with champion %s of %r, but the champion is now %s; re-gating",
        decision.champion_version, model_name, current,
    )
    if regate is None:
        return superseded(decision, current)
    again = regate(current)
    if again.champion_version != current:
        raise RuntimeError(
            f"re-gating compared with champion {again.champion_version} of {model_name!r}, not the current {current}"
        )
    return again


def _register(
    client: MlflowClient,
    created: _Created,
    model_dir: str,
    model_name: str,
    params: Mapping[str, str],
    metrics: Mapping[str, float],
    decision: GateDecision,
    lineage: Mapping[str, Any],
    pipeline_run_id: str,
    processed_root: str | None,
    experiment_name: str,
    artifact_location: str | None,
    run_id: str | None = None,
    still_held: Callable[[], None] = lambda: None,
) -> RegisteredVersion:
    """The steps of :func:`register_candidate`; each records what it created in ``created``.
    ``still_held`` (the lock's fencing check) runs right before the champion alias moves."""
    loaded = load_model_dir(model_dir, map_location="cpu")  # a broken directory fails before anything exists
    target = loaded.cfg.target_domain
    schema = loaded.schemas[target]
    tags = _version_tags(decision, lineage, pipeline_run_id, target)
    try:
        client.create_registered_model(
            model_name,
            description="CDAnet CTR model (cross-domain augmentation network); alias 'champion' marks the serving version",
        )
        created.registered_model = True
    except MlflowException as e:
        if not is_error(e, RESOURCE_ALREADY_EXISTS):
            raise
    if run_id is None:
        experiment_id = ensure_experiment(client, experiment_name, artifact_location or default_artifact_location(client))
        run = client.create_run(experiment_id, run_name=f"{model_name}-{pipeline_run_id}"[:250], tags=tags)
        created.run_id = run_id = run.info.run_id
    else:
        run = client.get_run(run_id)
        experiment_id = run.info.experiment_id
        client.log_batch(run_id, tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()])

    rows = None if processed_root is None else read_rows(processed_root, schema, "test", limit=_EXAMPLE_ROWS)
    vocabularies = loaded.vocabularies.get(target)  # None: the model takes indices (cdanet.serving)
    example = example_frame(schema, rows, vocabularies)
    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values: by contract ours never do
        # (validated upstream; table_to_batch rejects nulls).
        warnings.filterwarnings("ignore", message=".*Integer columns in Python cannot represent missing values")
        signature = infer_signature(example, np.zeros(len(example), dtype=np.float32))
    # What the fluent ``mlflow.pyfunc.log_model(name=...)`` does (a LoggedModel whose source run is
    # this run, its files, READY, a model output of the run), through the client: the fluent API
    # works on MLflow's process-global tracking URI and active run, which a library must not change
    # under its caller. The files are save_served_model's (models-from-code, no pickle).
    logged = client.create_logged_model(experiment_id, name=MODEL_ARTIFACT_PATH, source_run_id=run_id,
                                        tags={TAG_PIPELINE_RUN: pipeline_run_id}, model_type="cdanet-pyfunc")
    created.logged_model = logged.model_id
    with tempfile.TemporaryDirectory(prefix="cdanet-pyfunc-") as tmp:
        local = os.path.join(tmp, MODEL_ARTIFACT_PATH)
        save_served_model(local, model_dir, signature=signature, input_example=example, pip_requirements=_pins(),
                          metadata={"target_domain": target, "cdanet_version": cdanet.__version__,
                                    "model_kind": str(loaded.meta.get("kind", ""))})
        client.log_model_artifacts(logged.model_id, local)
    client.finalize_logged_model(logged.model_id, "READY")
    client.log_outputs(run_id, [mlflow.entities.LoggedModelOutput(logged.model_id, 0)])
    _log_run_data(client, run_id, params, metrics, decision, model_id=logged.model_id)
    # The source is the LoggedModel's artifact folder (a concrete URI, e.g. s3://... or
    # mlflow-artifacts:/...), which KServe's storage initializer can read (cdanet.serving).
    version = client.create_model_version(
        model_name, source=logged.artifact_location, run_id=run_id, tags={**tags, TAG_STATE: STATE_PENDING},
        description=decision.summary, model_id=logged.model_id,
    )
    created.version = str(version.version)
    if decision.blessed:
        anchor = created.version if decision.sets_anchor else decision.anchor_for_successor
        client.set_model_version_tag(model_name, created.version, TAG_ANCHOR, anchor)
        still_held()
        client.set_registered_model_alias(model_name, CHAMPION_ALIAS, created.version)
        created.alias_moved = True
    client.set_model_version_tag(model_name, created.version, TAG_STATE, STATE_COMPLETE)
    return replace(_registered(client.get_model_version(model_name, created.version), reused=False), decision=decision)


def _log_run_data(
    client: MlflowClient, run_id: str, params: Mapping[str, str], metrics: Mapping[str, float], decision: GateDecision,
    model_id: str | None = None,
) -> None:
    items = list(params.items())
    for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in items[start : start + 100]])
    gate_metrics = {"gate_candidate_auc": decision.candidate_auc, "gate_blessed": float(decision.blessed)}
    # The comparisons the gate made (those it had inputs for), next to the evaluate step's metrics.
    for key, value in (("gate_champion_auc", decision.champion_auc), ("gate_baseline_auc", decision.baseline_auc),
                       ("gate_baseline_logloss", decision.baseline_logloss),
                       ("gate_candidate_logloss", decision.candidate_logloss),
                       ("gate_base_rate_logloss", decision.base_rate_logloss)):
        if value is not None:
            gate_metrics[key] = value
    for key, value in {**metrics, **gate_metrics}.items():
        client.log_metric(run_id, key, value, model_id=model_id)  # linked to the LoggedModel
    client.log_text(run_id, decision.to_json(), "gate/decision.json")
    client.log_text(run_id, decision.to_markdown(), "gate/decision.md")


# ---- reading versions back ---------------------------------------------------------------------


def load_version(tracking_uri: str, model_name: str, version: str) -> CDAnetPyfunc:
    """Load one registered version's model, as data only, without touching MLflow's process-global URIs.

    No code or pickle from the artifact store runs here (:func:`cdanet.serving.load_logged_model`):
    whoever can write to the artifact store cannot run code in the gate.

    ``mlflow.pyfunc.load_model("models:/...")`` resolves registry URIs through the global registry
    URI even when ``download_artifacts`` is given explicit ones (MLflow 3.17), so the version's
    download URI is resolved with our client and the artifacts are fetched from there.
    """
    client = store_client(tracking_uri)
    source = client.get_model_version_download_uri(model_name, version)
    with tempfile.TemporaryDirectory(prefix="cdanet-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=tracking_uri)
        return load_logged_model(local)  # reads everything before tmp goes


def get_champion(tracking_uri: str, model_name: str) -> ChampionInfo | None:
    """The version behind ``models:/<model_name>@champion`` with its run's metrics, or None."""
    client = store_client(tracking_uri)
    version = _champion_version(client, model_name)
    if version is None:
        return None
    return _info(client, model_name, version)


def get_version(tracking_uri: str, model_name: str, version: str) -> ChampionInfo | None:
    """One version of ``model_name`` with its run's metrics, or None if it does not exist (deleted)."""
    client = store_client(tracking_uri)
    try:
        found = client.get_model_version(model_name, version)
    except MlflowException as e:
        if is_error(e, RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    return _info(client, model_name, found)


def _info(client: MlflowClient, model_name: str, version: ModelVersion) -> ChampionInfo:
    metrics: dict[str, float] = {}
    if version.run_id:
        with contextlib.suppress(MlflowException):  # the run may live in a store we cannot read
            metrics = dict(client.get_run(version.run_id).data.metrics)
    return ChampionInfo(
        name=model_name,
        version=str(version.version),
        model_uri=f"models:/{model_name}/{version.version}",
        run_id=version.run_id,
        metrics=metrics,
        tags=dict(version.tags or {}),
    )
