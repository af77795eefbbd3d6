"""Tests of ``cdanet.deploy``: plan, ordering, image overrides, readiness, and the CLI's behaviour
without a cluster and against a minimal in-process Kubernetes API server.

No real cluster can run here. The apply path is exercised through the real ``kubernetes`` client
over HTTP against :class:`FakeApiServer`, which implements just what a deploy touches: /version,
discovery, GET of Secrets/Namespaces/objects and server-side-apply PATCHes.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from cdanet.deploy import (
    APPLY_ORDER,
    DEFAULT_MANIFESTS_ROOT,
    OVERLAYS,
    DeployError,
    apply_order,
    find_kubectl,
    format_plan,
    main,
    object_id,
    override_images,
    parse_image_overrides,
    pod_spec,
    referenced_secrets,
    render,
    workload_status,
)

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = DEFAULT_MANIFESTS_ROOT

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    kubectl = find_kubectl()
    return {overlay: render(overlay, MANIFESTS, kubectl) for overlay in OVERLAYS}


def _plan_ids(stdout: str) -> list[tuple[str, str, str]]:
    rows = [line.split() for line in stdout.splitlines() if line and not line.startswith("#")]
    return [(kind, "" if ns == "-" else ns, name) for _, kind, ns, name in rows]


# ---- plan and ordering ---------------------------------------------------------------------


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_dry_run_lists_every_rendered_object_in_apply_order(
    rendered: dict[str, list[Obj]], overlay: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--overlay", overlay, "--dry-run"]) == 0
    out = capsys.readouterr().out
    listed = _plan_ids(out)
    assert sorted(listed) == sorted(object_id(o) for o in rendered[overlay])
    assert len(listed) == len(set(listed)) == len(rendered[overlay])
    assert listed == [object_id(o) for o in apply_order(rendered[overlay])]
    assert f"overlay {overlay!r}, {len(listed)} objects" in out.splitlines()[0]


def test_dry_run_needs_no_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert main(["--dry-run"]) == 0
    assert "Deployment" in capsys.readouterr().out


def test_apply_order_on_rendered_objects(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["gpu"]
    ordered = apply_order(objects)
    assert sorted(map(object_id, ordered)) == sorted(map(object_id, objects))
    kinds = [o["kind"] for o in ordered]
    position = {kind: i for i, kind in enumerate(kinds)}  # last position of each kind
    first = {kind: kinds.index(kind) for kind in kinds}
    assert kinds[0] == "Namespace"
    assert position["ServiceAccount"] < first["RoleBinding"] and position["Role"] < first["RoleBinding"]
    workloads_start = min(first[k] for k in ("StatefulSet", "Deployment", "Job"))
    for dependency in ("ConfigMap", "PersistentVolumeClaim", "Service", "NetworkPolicy", "ServiceAccount"):
        assert position[dependency] < workloads_start, f"{dependency} must exist before the pods"
    # PostgreSQL before MLflow, which needs its database at start-up.
    assert first["StatefulSet"] < first["Deployment"]
    ranks = [APPLY_ORDER.index(k) for k in kinds]
    assert ranks == sorted(ranks)


def test_apply_order_is_stable_within_a_kind(rendered: dict[str, list[Obj]]) -> None:
    shuffled = list(rendered["base"])
    random.Random(7).shuffle(shuffled)
    ordered = apply_order(shuffled)
    for kind in {o["kind"] for o in shuffled}:
        assert [object_id(o) for o in ordered if o["kind"] == kind] == [
            object_id(o) for o in shuffled if o["kind"] == kind
        ]
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert apply_order([unknown, *shuffled])[-1]["kind"] == "Widget", "unknown kinds go last"


def test_format_plan_marks_cluster_scoped_objects() -> None:
    plan = format_plan([{"kind": "Namespace", "metadata": {"name": "cdanet"}}], "base")
    assert _plan_ids(plan) == [("Namespace", "", "cdanet")]


# ---- rendering errors, images, secrets --------------------------------------------------------


def test_the_manifests_are_package_data_and_the_checkout_links_to_them() -> None:
    import cdanet

    assert DEFAULT_MANIFESTS_ROOT == Path(cdanet.__file__).parent / "manifests"
    assert (REPO / "manifests").is_symlink() and (REPO / "manifests").resolve() == DEFAULT_MANIFESTS_ROOT.resolve()


@pytest.mark.slow
def test_a_built_wheel_carries_the_manifests_and_they_render_the_same(
    tmp_path: Path, rendered: dict[str, list[Obj]]
) -> None:
    """What an installed image has: the wheel's own copy renders every overlay like the source tree."""
    src = tmp_path / "src"  # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for pkg in ("cdanet", "components", "beam_jobs"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("cdanet-*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    installed = tmp_path / "site" / "cdanet" / "manifests"
    assert sorted(p.name for p in (installed / "secrets").iterdir()) == sorted(
        p.name for p in (MANIFESTS / "secrets").glob("*.example.env"))
    kubectl = find_kubectl()
    for overlay in OVERLAYS:
        assert render(overlay, installed, kubectl) == rendered[overlay], overlay


def test_render_reports_a_missing_manifests_root(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="kustomization.yaml not found"):
        render("base", tmp_path)


def test_render_reports_kustomize_errors(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(DeployError, match="kubectl kustomize .* failed: .*missing.yaml"):
        render("base", tmp_path)


def test_override_images_replaces_by_repository_name(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["gpu"]
    out = override_images(objects, {"cdanet-mlflow": "registry.example.com/ml/mlflow:7",
                                    "ghcr.io/cdanet/cdanet": "registry.example.com/ml/cdanet@sha256:abc"})
    images = {object_id(o): [c["image"] for c in pod_spec(o)["containers"]]  # type: ignore[index]
              for o in out if pod_spec(o)}
    assert images[("Deployment", "cdanet", "mlflow")] == ["registry.example.com/ml/mlflow:7"]
    assert images[("Job", "cdanet", "cdanet-gpu-check")] == ["registry.example.com/ml/cdanet@sha256:abc"]
    assert images[("StatefulSet", "cdanet", "mlflow-postgres")] == ["postgres:16.10-bookworm"]
    # The input is left alone.
    mlflow = next(o for o in objects if o["kind"] == "Deployment")
    assert mlflow["spec"]["template"]["spec"]["containers"][0]["image"].endswith("cdanet-mlflow:3.17.2")
    with pytest.raises(DeployError, match="no container image .*: nope"):
        override_images(objects, {"nope": "x:1"})


@pytest.mark.parametrize("bad", ["cdanet-mlflow", "=x:1", "cdanet-mlflow="])
def test_parse_image_overrides_rejects_malformed_items(bad: str) -> None:
    with pytest.raises(DeployError, match="NAME=IMAGE"):
        parse_image_overrides([bad])


def test_referenced_secrets(rendered: dict[str, list[Obj]]) -> None:
    refs = referenced_secrets(rendered["base"])
    assert set(refs) == {("cdanet", "mlflow-db"), ("cdanet", "mlflow-s3")}
    assert sorted(refs[("cdanet", "mlflow-db")]) == ["Deployment cdanet/mlflow", "StatefulSet cdanet/mlflow-postgres"]
    optional = {"kind": "Pod", "metadata": {"name": "p", "namespace": "n"}, "spec": {"containers": [
        {"name": "c", "envFrom": [{"secretRef": {"name": "opt", "optional": True}}]}],
        "volumes": [{"name": "v", "secret": {"secretName": "vol"}}]}}
    assert set(referenced_secrets([optional])) == {("n", "vol")}


# ---- readiness -----------------------------------------------------------------------------------


def _deployment(generation: int, observed: int, available: int, condition: str) -> Obj:
    return {"kind": "Deployment", "metadata": {"name": "mlflow", "namespace": "cdanet", "generation": generation},
            "spec": {"replicas": 1},
            "status": {"observedGeneration": observed, "updatedReplicas": available, "availableReplicas": available,
                       "conditions": [{"type": "Available", "status": condition}]}}


def test_workload_status_of_deployments() -> None:
    assert workload_status(_deployment(2, 2, 1, "True"))[0] is True
    assert workload_status(_deployment(3, 2, 1, "True"))[0] is False, "controller has not seen the new spec"
    assert workload_status(_deployment(1, 1, 0, "False")) == (False, "0/1 available, 0/1 updated")


def test_workload_status_of_statefulsets_and_jobs() -> None:
    sts = {"kind": "StatefulSet", "metadata": {"generation": 1}, "spec": {"replicas": 1},
           "status": {"observedGeneration": 1, "readyReplicas": 0, "updatedReplicas": 1}}
    assert workload_status(sts)[0] is False
    sts["status"]["readyReplicas"] = 1
    assert workload_status(sts)[0] is True
    job = {"kind": "Job", "metadata": {"name": "cdanet-gpu-check", "namespace": "cdanet"},
           "status": {"active": 1}}
    assert workload_status(job) == (False, "1 active, not complete")
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    assert workload_status(job)[0] is True
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                     "message": "Job has reached the specified backoff limit"}]}
    with pytest.raises(DeployError, match="failed: BackoffLimitExceeded.*logs job/cdanet-gpu-check"):
        workload_status(job)
    with pytest.raises(ValueError):
        workload_status({"kind": "Service"})


# ---- no cluster ------------------------------------------------------------------------------------


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
    }))
    return path


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deploy: error: "), err
    return lines[0]


def test_missing_kubeconfig_fails_with_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nope.yaml"))
    assert main([]) == 1
    assert f"no kubeconfig at {tmp_path / 'nope.yaml'}" in _one_line_error(capsys)


def test_unreachable_api_server_fails_with_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "config", "https://127.0.0.1:1")))
    assert main(["--timeout", "5"]) == 1
    line = _one_line_error(capsys)
    assert "cannot reach the Kubernetes API server at https://127.0.0.1:1" in line


def test_unknown_context_fails_with_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "config", "https://127.0.0.1:1")))
    assert main(["--context", "staging"]) == 1
    assert "context 'staging'" in _one_line_error(capsys)


@pytest.mark.parametrize("argv", [["--overlay", "prod"], ["--timeout", "0"], ["--timeout", "soon"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


# ---- against an API server -------------------------------------------------------------------------

_GROUPS = {
    "": {"namespaces": ("Namespace", False), "serviceaccounts": ("ServiceAccount", True),
         "configmaps": ("ConfigMap", True), "secrets": ("Secret", True),
         "persistentvolumeclaims": ("PersistentVolumeClaim", True), "services": ("Service", True)},
    "apps": {"deployments": ("Deployment", True), "statefulsets": ("StatefulSet", True)},
    "rbac.authorization.k8s.io": {"roles": ("Role", True), "rolebindings": ("RoleBinding", True)},
    "networking.k8s.io": {"networkpolicies": ("NetworkPolicy", True)},
    "batch": {"jobs": ("Job", True)},
}


class FakeApiServer:
    """The slice of the Kubernetes API that a deploy uses, with objects kept in memory.

    Applied Deployments/StatefulSets/Jobs get a ready status at once unless ``ready`` is False.
    """

    def __init__(self, secrets: set[tuple[str, str]], ready: bool = True) -> None:
        self.secrets, self.ready = secrets, ready
        self.objects: dict[str, Obj] = {}
        self.patches: list[tuple[str, dict[str, list[str]], str]] = []
        self.deletes: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: Obj) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                code, body = server.get(urlsplit(self.path).path)
                self._send(code, body)

            def do_PATCH(self) -> None:  # noqa: N802
                url = urlsplit(self.path)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.patches.append((url.path, parse_qs(url.query), self.headers["Content-Type"]))
                self._send(*server.apply(url.path, body))

            def do_DELETE(self) -> None:  # noqa: N802
                server.deletes.append(self.path)
                found = server.objects.pop(urlsplit(self.path).path, None)
                self._send(200 if found else 404, {"kind": "Status", "apiVersion": "v1",
                                                   "status": "Success" if found else "Failure"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def get(self, path: str) -> tuple[int, Obj]:
        path = path.rstrip("/") or "/"
        if path == "/version":
            return 200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0"}
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/apis":
            groups = [{"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                       "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}} for g in _GROUPS if g]
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        for group, resources in _GROUPS.items():
            if path == (f"/apis/{group}/v1" if group else "/api/v1"):
                return 200, {"kind": "APIResourceList", "groupVersion": f"{group}/v1" if group else "v1",
                             "resources": [{"name": n, "singularName": n[:-1], "namespaced": ns, "kind": k,
                                            "verbs": ["get", "patch", "delete"]}
                                           for n, (k, ns) in resources.items()]}
        parts = path.strip("/").split("/")
        if parts[-2:-1] == ["secrets"] and (parts[-3], parts[-1]) in self.secrets:
            return 200, {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": parts[-1], "namespace": parts[-3]}}
        if path in self.objects:
            return 200, self.objects[path]
        return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                     "message": f"{path} not found"}

    def apply(self, path: str, body: Obj) -> tuple[int, Obj]:
        previous = self.objects.get(path)
        if previous and body["kind"] == "Job" and previous["spec"]["template"] != body["spec"]["template"]:
            return 422, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
                         "message": "Job.batch is invalid: spec.template: field is immutable"}
        obj = dict(body)
        meta = dict(obj["metadata"])
        unchanged = previous is not None and _desired(previous) == _desired(body)
        version = int(previous["metadata"]["resourceVersion"]) if previous else 0
        meta["resourceVersion"] = str(version if unchanged else version + 1)
        meta["generation"] = 1
        obj["metadata"] = meta
        if self.ready and obj["kind"] == "Deployment":
            obj["status"] = {"observedGeneration": 1, "updatedReplicas": 1, "availableReplicas": 1,
                             "conditions": [{"type": "Available", "status": "True"}]}
        elif self.ready and obj["kind"] == "StatefulSet":
            obj["status"] = {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1}
        elif self.ready and obj["kind"] == "Job":
            obj["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
        self.objects[path] = obj
        return 200, obj


def _desired(obj: Obj) -> Obj:
    """An object without what the server adds (status, resourceVersion, generation)."""
    meta = {k: v for k, v in obj["metadata"].items() if k not in ("resourceVersion", "generation")}
    return {k: v for k, v in obj.items() if k != "status"} | {"metadata": meta}


@pytest.fixture()
def api_server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
               ) -> Iterator[FakeApiServer]:
    secrets, ready = getattr(request, "param", ({("cdanet", "mlflow-db"), ("cdanet", "mlflow-s3")}, True))
    server = FakeApiServer(secrets=secrets, ready=ready)
    server.thread.start()
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "config", server.url)))
    # The dynamic client caches discovery in the temp dir; keep that cache per test.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_deploy_applies_everything_in_order_with_server_side_apply(
    api_server: FakeApiServer, rendered: dict[str, list[Obj]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--overlay", "gpu", "--timeout", "30"]) == 0
    out, err = capsys.readouterr()
    names = [path.rsplit("/", 1)[-1] for path, _, _ in api_server.patches]
    assert names == [object_id(o)[2] for o in apply_order(rendered["gpu"])]
    for path, query, content_type in api_server.patches:
        assert content_type == "application/apply-patch+yaml", path
        assert query["fieldManager"] == ["cdanet-deploy"] and query["force"] == ["True"], (path, query)
    assert "/apis/apps/v1/namespaces/cdanet/deployments/mlflow" in api_server.objects
    assert "/api/v1/namespaces/cdanet" in api_server.objects
    assert "ready: MLflow at http://mlflow.cdanet.svc.cluster.local:5000" in out
    assert "warning: Secret cdanet/mlflow-tracking is missing; pipeline runs need it" in err

    # A second deploy of the same tree changes nothing.
    versions = {p: o["metadata"]["resourceVersion"] for p, o in api_server.objects.items()}
    assert main(["--overlay", "gpu"]) == 0
    assert {p: o["metadata"]["resourceVersion"] for p, o in api_server.objects.items()} == versions


@pytest.mark.parametrize("api_server", [(set(), True)], indirect=True)
def test_deploy_stops_before_applying_when_secrets_are_missing(
    api_server: FakeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([]) == 1
    line = _one_line_error(capsys)
    assert "missing Secret(s) cdanet/mlflow-db, cdanet/mlflow-s3" in line
    assert "kubectl create namespace cdanet" in line
    assert "kubectl -n cdanet create secret generic mlflow-db" in line
    assert api_server.patches == []


@pytest.mark.parametrize("api_server", [({("cdanet", "mlflow-db"), ("cdanet", "mlflow-s3")}, False)],
                         indirect=True)
def test_deploy_times_out_naming_the_workloads_that_are_not_ready(
    api_server: FakeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "not ready after 1s" in err and "Deployment cdanet/mlflow" in err
    assert "StatefulSet cdanet/mlflow-postgres" in err
    assert "kubectl -n cdanet describe" in err


def test_deploy_replaces_a_job_whose_template_changed(
    api_server: FakeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    job = "/apis/batch/v1/namespaces/cdanet/jobs/cdanet-gpu-check"
    assert main(["--overlay", "gpu"]) == 0
    assert api_server.deletes == []
    assert main(["--overlay", "gpu", "--image", "cdanet=registry.example.com/cdanet:0.2.0-cuda"]) == 0
    assert [urlsplit(d).path for d in api_server.deletes] == [job]
    assert "replacing Job cdanet/cdanet-gpu-check" in capsys.readouterr().out
    spec = api_server.objects[job]["spec"]["template"]["spec"]
    assert spec["containers"][0]["image"] == "registry.example.com/cdanet:0.2.0-cuda"
