"""Promotion under concurrency, in real processes on a real MLflow SQLite store.

Each finding of issue 12 point 1 is reproduced here as it happened: separate Python processes
(the pipeline's steps or the registry API, exactly as a KFP task calls them) share one store, and
files in a folder order their steps where the race needs an order. The models are real: a tiny
CDAnet trained for one epoch ("better") and a copy with noise added to its embedding tables
("worse"), both scored by the evaluate step.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from mlflow.tracking import MlflowClient

from cdanet import steps
from cdanet.config import tiny_config
from cdanet.gate import GateConfig, decide
from cdanet.registry import (
    CHAMPION_ALIAS,
    LOCK_MODEL_SUFFIX,
    TAG_ANCHOR,
    TAG_LOCK_EXPIRES,
    TAG_LOCK_HOLDER,
    RegistryLockLost,
    RegistryLockTimeout,
    get_champion,
    promotion_lock,
    register_candidate,
)
from cdanet.training import run_experiment

NAME = "cdanet-book"
TARGET = "book"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 600


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def _start(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], env=_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    """Each process's stdout; fails with the stderr of any process that failed."""
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=WAIT_S)
        assert p.returncode == 0, f"worker failed (rc {p.returncode}):\n{err[-3000:]}"
        outs.append(out)
    return outs


@pytest.fixture(scope="module")
def models(processed_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """``{"better": {...}, "worse": {...}, "worst": {...}}``: model dir and the evaluate step's metrics."""
    root = tmp_path_factory.mktemp("models")
    cfg = tiny_config("amazon", target_domain=TARGET).with_overrides(
        ["train.max_epochs=1", "train.num_threads=1", "train.batch_size=256"]
    ).validate()
    trained = run_experiment(cfg, processed_dir, str(root / "experiment")).model_dir
    out = {name: _noisy(trained, processed_dir, str(root / name), noise)
           for name, noise in (("better", 0.0), ("worse", 1.0), ("worst", 2.0))}
    out["trained"] = trained
    assert out["better"]["auc"] > out["worse"]["auc"] + 0.01 > out["worst"]["auc"] + 0.02, out
    return out


def _noisy(trained: str, processed_dir: str, model_dir: str, noise: float) -> dict:
    """A copy of ``trained`` with noise on its embedding tables, and its figures from the evaluate step."""
    shutil.copytree(trained, model_dir)
    if noise:
        weights = torch.load(os.path.join(model_dir, "weights.pt"), weights_only=True)
        g = torch.Generator().manual_seed(0)
        for key, value in weights.items():
            if "emb" in key.lower() and value.is_floating_point():
                weights[key] = value + noise * value.std() * torch.randn(value.shape, generator=g)
        torch.save(weights, os.path.join(model_dir, "weights.pt"))
    metrics = steps.evaluate(model_dir, processed_dir, f"{model_dir}-predictions").metrics
    return {"model_dir": model_dir, "auc": metrics[f"{TARGET}_test_auc"], "logloss": metrics[f"{TARGET}_test_logloss"],
            "base_rate_logloss": metrics[f"{TARGET}_test_base_rate_logloss"]}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return str(path)


@pytest.fixture
def uri(empty_store: str, tmp_path) -> str:
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


def _register_args(uri: str, model: dict, run_id: str, decision) -> dict:
    return {"tracking_uri": uri, "model_name": NAME, "metrics": {"test_auc": model["auc"]}, "params": {"a": 1},
            "decision": decision, "lineage": {"pipeline_run_id": run_id}, "pipeline_run_id": run_id}


# ---- a fresh store opened by several processes at once ---------------------------------------------
OPEN_STORE = """
import sys
from cdanet.registry import get_champion
print(get_champion(sys.argv[1], "m"))
"""


@pytest.mark.slow
def test_first_use_of_a_fresh_sqlite_store_by_several_processes(tmp_path) -> None:
    """Before: MLflow's schema migration ran in each process at once and all but one failed
    (``_alembic_tmp_experiments already exists`` / ``expected to match one row``)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    outs = _finish([_start(OPEN_STORE, uri) for _ in range(3)])
    assert [o.strip() for o in outs] == ["None"] * 3


# ---- two overlapping runs: the worse one finishes last --------------------------------------------
RUN = """
import json, os, sys, time
from cdanet import steps
cfg, processed, model_json, uri, run_id, sync, role = sys.argv[1:]
m = json.loads(model_json)

def wait_for(*names):
    deadline = time.monotonic() + 600
    while not all(os.path.exists(os.path.join(sync, n)) for n in names):
        assert time.monotonic() < deadline, names
        time.sleep(0.1)

gated = steps.gate(cfg, processed, m["auc"], uri, "cdanet-book", candidate_logloss=m["logloss"],
                   base_rate_logloss=m["base_rate_logloss"], baseline_path=os.path.join(sync, "baseline.json"))
decision = os.path.join(sync, f"decision-{role}.json")
with open(decision, "w") as fh:
    fh.write(gated.decision.to_json())
open(os.path.join(sync, f"gated-{role}"), "w").close()
wait_for("gated-better", "gated-worse")  # both runs gated against the same champion
if role == "worse":
    wait_for("registered-better")  # ... and the worse one registers last
md = steps.register(cfg, processed, m["model_dir"], {"test_auc": m["auc"]}, decision, uri, "cdanet-book", run_id)
open(os.path.join(sync, f"registered-{role}"), "w").close()
print(json.dumps({"gate_blessed": gated.decision.blessed, "gate_champion": gated.decision.champion_version,
                  "markdown": md}))
"""


@pytest.mark.slow
def test_two_overlapping_runs_where_the_worse_finishes_last_leave_the_better_champion(
    models: dict, processed_dir: str, uri: str, tmp_path
) -> None:
    """Before: both gated against the old champion, the last to register won (the worse model)."""
    sync = tmp_path / "sync"
    sync.mkdir()
    cfg_path = str(tmp_path / "config.json")
    pc = steps.PipelineConfig(tiny_config("amazon", target_domain=TARGET), min_auc=0.5, tolerance=0.005,
                              raw_uri="unused", glove_uri="", baseline_margin=-1.0)
    with open(cfg_path, "w") as fh:
        fh.write(pc.to_json())
    steps.baseline(cfg_path, processed_dir, str(sync / "baseline.json"))
    old = models["worst"]
    v1 = register_candidate(old["model_dir"], **_register_args(uri, old, "day-0", decide(
        old["auc"], None, GateConfig(min_auc=0.5, domain=TARGET))))
    assert v1.aliases == [CHAMPION_ALIAS]

    procs = {role: _start(RUN, cfg_path, processed_dir, json.dumps(models[role]), uri, f"day-1-{role}", str(sync),
                          role) for role in ("better", "worse")}
    outs = dict(zip(procs, (json.loads(o) for o in _finish(list(procs.values()))), strict=True))

    # Both were blessed against the old champion (version 1) ...
    assert all(o["gate_blessed"] and o["gate_champion"] == "1" for o in outs.values()), outs
    champion = get_champion(uri, NAME)
    # ... but the champion is the better model, and the worse one is on record as rejected, re-gated.
    assert champion is not None and champion.metrics["test_auc"] == pytest.approx(models["better"]["auc"])
    client = MlflowClient(uri, registry_uri=uri)
    versions = {v.tags["cdanet.pipeline_run_id"]: v for v in client.search_model_versions(f"name = '{NAME}'")}
    worse = versions["day-1-worse"]
    assert worse.tags["cdanet.gate.blessed"] == "false"
    assert worse.tags["cdanet.gate.champion_version"] == champion.version
    assert "re-gated at promotion" in worse.tags["cdanet.gate.reasons"]
    assert "re-gated against the new one" in outs["worse"]["markdown"]
    assert "recorded as rejected" in outs["worse"]["markdown"]
    # The better one improved on version 1: it is its own drift anchor.
    assert champion.tags[TAG_ANCHOR] == champion.version


# ---- a chain of daily runs cannot drift down without bound ------------------------------------------
@pytest.mark.slow
def test_a_chain_of_daily_runs_each_within_tolerance_cannot_drift_down(
    models: dict, processed_dir: str, uri: str, tmp_path
) -> None:
    """Each day's model is a little worse than the day before, always within ``tolerance`` of it, but
    the last is beyond ``tolerance`` of the first. Gate and register steps, real scoring, one store.

    Before (the champion alone): every day was promoted, and the champion ended more than
    ``tolerance`` below the first. After: the champion stays within ``tolerance`` of its anchor.
    """
    days = [_noisy(models["trained"], processed_dir, str(tmp_path / f"day{i}"), noise)
            for i, noise in enumerate((0.0, 0.5, 0.7, 0.85, 1.0))]
    aucs = [d["auc"] for d in days]
    drops = [a - b for a, b in zip(aucs, aucs[1:], strict=False)]
    assert all(d > 0 for d in drops), aucs
    tolerance = max(drops) + 1e-4  # every day within tolerance of the day before ...
    assert aucs[0] - aucs[-1] > tolerance + 0.005, aucs  # ... but the chain drifts well past it

    cfg_path = str(tmp_path / "config.json")
    pc = steps.PipelineConfig(tiny_config("amazon", target_domain=TARGET), min_auc=0.5, tolerance=tolerance,
                              raw_uri="unused", glove_uri="", baseline_margin=-1.0)
    with open(cfg_path, "w") as fh:
        fh.write(pc.to_json())
    baseline = str(tmp_path / "baseline.json")
    steps.baseline(cfg_path, processed_dir, baseline)
    champions = []
    for i, day in enumerate(days):
        gated = steps.gate(cfg_path, processed_dir, day["auc"], uri, NAME, candidate_logloss=day["logloss"],
                           base_rate_logloss=day["base_rate_logloss"], baseline_path=baseline)
        decision = str(tmp_path / f"decision{i}.json")
        with open(decision, "w") as fh:
            fh.write(gated.decision.to_json())
        steps.register(cfg_path, processed_dir, day["model_dir"], {"test_auc": day["auc"]}, decision, uri, NAME,
                       f"day-{i}")
        champions.append(get_champion(uri, NAME).metrics["test_auc"])

    assert min(champions) >= aucs[0] - tolerance, (champions, aucs, tolerance)
    assert champions[1] == pytest.approx(aucs[1])  # the first drop within tolerance was promoted
    client = MlflowClient(uri, registry_uri=uri)
    assert client.get_model_version(NAME, "2").tags[TAG_ANCHOR] == "1"
    rejected = [v for v in client.search_model_versions(f"name = '{NAME}'") if v.tags["cdanet.gate.blessed"] == "false"]
    assert rejected and all("drift anchor" in v.tags["cdanet.gate.reasons"] for v in rejected)


# ---- one pipeline run registered by six processes at once -----------------------------------------
REGISTER = """
import json, sys
from cdanet.gate import GateDecision
from cdanet.registry import register_candidate
uri, model_dir, decision, lock = sys.argv[1:]
v = register_candidate(model_dir, tracking_uri=uri, model_name="cdanet-book", metrics={"test_auc": 0.7},
                       params={"a": 1}, decision=GateDecision.from_json(decision), lineage={},
                       pipeline_run_id="run-42", lock=lock)
print(json.dumps({"version": v.version, "reused": v.reused}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("lock", ["auto", "registry"])
def test_six_concurrent_registrations_of_one_run_give_one_version(models: dict, uri: str, lock: str) -> None:
    """Before: 2 versions, and a later retry failed on finding two. ``registry`` is the MLflow-server lock."""
    model = models["better"]
    decision = decide(model["auc"], None, GateConfig(min_auc=0.5, domain=TARGET))
    outs = [json.loads(o) for o in _finish([_start(REGISTER, uri, model["model_dir"], decision.to_json(), lock)
                                            for _ in range(6)])]
    assert {o["version"] for o in outs} == {"1"}
    assert sorted(o["reused"] for o in outs) == [False] + [True] * 5
    client = MlflowClient(uri, registry_uri=uri)
    assert [str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")] == ["1"]
    assert client.search_registered_models() and all(
        not m.name.endswith(LOCK_MODEL_SUFFIX) for m in client.search_registered_models())  # lock released
    retry = register_candidate(model["model_dir"], **_register_args(uri, model, "run-42", decision), lock=lock)
    assert (retry.version, retry.reused, retry.aliases) == ("1", True, [CHAMPION_ALIAS])


# ---- the registry-side lock (the MLflow server's) -------------------------------------------------
HOLD = """
import sys, time
from cdanet.registry import promotion_lock
uri, log = sys.argv[1:]
with promotion_lock(uri, "cdanet-book", kind="registry", timeout=120):
    with open(log, "a") as fh:
        fh.write("enter\\n")
    time.sleep(0.5)
    with open(log, "a") as fh:
        fh.write("exit\\n")
"""


@pytest.mark.slow
def test_registry_lock_admits_one_process_at_a_time(uri: str, tmp_path) -> None:
    log = tmp_path / "log"
    _finish([_start(HOLD, uri, str(log)) for _ in range(4)])
    assert log.read_text().split() == ["enter", "exit"] * 4


@pytest.fixture
def mlflow_server(tmp_path) -> str:
    """A real MLflow tracking server (uvicorn, one worker) on a free local port; its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mlflow_cli = os.path.join(os.path.dirname(sys.executable), "mlflow")
    server = subprocess.Popen(
        [mlflow_cli, "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination",
         str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=_env(), stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the MLflow server did not start in 300 s"
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.mark.slow
def test_registry_lock_on_a_real_mlflow_server(mlflow_server: str, tmp_path) -> None:
    """The lock a ``http://`` store gets (``auto``): one holder at a time, released after use."""
    log = tmp_path / "log"
    _finish([_start(HOLD.replace('kind="registry"', 'kind="auto"'), mlflow_server, str(log)) for _ in range(3)])
    assert log.read_text().split() == ["enter", "exit"] * 3
    assert MlflowClient(mlflow_server, registry_uri=mlflow_server).search_registered_models() == []


def test_registry_lock_left_by_a_killed_holder_expires(uri: str) -> None:
    client = MlflowClient(uri, registry_uri=uri)
    lock_name = f"{NAME}{LOCK_MODEL_SUFFIX}"
    client.create_registered_model(lock_name, tags={TAG_LOCK_HOLDER: "dead:1:x", TAG_LOCK_EXPIRES: f"{time.time() + 60:.0f}"})
    with pytest.raises(RegistryLockTimeout, match=f"registry lock '{lock_name}'.*another run holds it") as e:
        with promotion_lock(uri, NAME, kind="registry", timeout=0.5):
            pass
    assert "\n" not in str(e.value)
    client.set_registered_model_tag(lock_name, TAG_LOCK_EXPIRES, f"{time.time() - 1:.0f}")
    with promotion_lock(uri, NAME, kind="registry", timeout=5):
        assert client.get_registered_model(lock_name).tags[TAG_LOCK_HOLDER] != "dead:1:x"
    assert not [m for m in client.search_registered_models() if m.name == lock_name]


def test_a_registry_lock_released_while_being_taken_is_taken(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: CI failed once here. The SQL store answers a name clash by reading the existing model;
    # when its holder released it between the clash and that read, the waiter got
    # RESOURCE_DOES_NOT_EXIST and the promotion step failed. The release is put exactly there.
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    client = MlflowClient(uri, registry_uri=uri)
    lock_name = f"{NAME}{LOCK_MODEL_SUFFIX}"
    client.create_registered_model(lock_name, tags={TAG_LOCK_HOLDER: "other:1:x", TAG_LOCK_EXPIRES: f"{time.time() + 60:.0f}"})
    read = SqlAlchemyStore.get_registered_model
    released = []

    def read_after_release(self, name):
        if name == lock_name and not released:
            released.append(name)
            client.delete_registered_model(lock_name)
        return read(self, name)

    monkeypatch.setattr(SqlAlchemyStore, "get_registered_model", read_after_release)
    with promotion_lock(uri, NAME, kind="registry", timeout=5):
        assert released
        assert client.get_registered_model(lock_name).tags[TAG_LOCK_HOLDER] != "other:1:x"
    assert not [m for m in client.search_registered_models() if m.name == lock_name]


def test_registry_lock_of_a_live_holder_never_expires(uri: str) -> None:
    # Before: a holder that worked longer than the ttl lost the lock to the next waiter, and two runs
    # moved the alias at once. Now a heartbeat pushes the expiry forward while the holder lives.
    import threading

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with promotion_lock(uri, NAME, kind="registry", ttl=1.0):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        with pytest.raises(RegistryLockTimeout):  # 3 ttls: an unrefreshed lock would have expired
            with promotion_lock(uri, NAME, kind="registry", timeout=3.0, ttl=1.0):
                pass
    finally:
        release.set()
        holder.join(30)
    with promotion_lock(uri, NAME, kind="registry", timeout=5.0):  # released: free again
        pass


def test_a_holder_that_lost_the_registry_lock_does_not_move_the_alias(uri: str) -> None:
    from cdanet.registry import _held_lock

    client = MlflowClient(uri, registry_uri=uri)
    lock_name = f"{NAME}{LOCK_MODEL_SUFFIX}"
    with _held_lock(uri, NAME, "registry", 5.0, 600.0) as (_, still_held):
        still_held()  # ours: no error
        # As if it had expired and another run had taken it.
        client.set_registered_model_tag(lock_name, TAG_LOCK_HOLDER, "other-host:1:abc")
        with pytest.raises(RegistryLockLost, match="expired while this run held it.*alias was not moved"):
            still_held()
    # ... and on leaving, the other run's lock is left alone.
    assert client.get_registered_model(lock_name).tags[TAG_LOCK_HOLDER] == "other-host:1:abc"


def test_file_lock_timeout_is_one_line_naming_the_lock_file(uri: str) -> None:
    with promotion_lock(uri, NAME):
        proc = _start("import sys\nfrom cdanet.registry import promotion_lock\n"
                      "with promotion_lock(sys.argv[1], 'cdanet-book', timeout=0.5):\n    pass\n", uri)
        _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode != 0
    last = err.strip().splitlines()[-1]
    assert "RegistryLockTimeout" in last and "mlflow.db.registry.lock" in last and "another process holds it" in last


def test_unknown_lock_kind_is_rejected(uri: str) -> None:
    with pytest.raises(ValueError, match="lock kind 'nfs'"):
        with promotion_lock(uri, NAME, kind="nfs"):
            pass
