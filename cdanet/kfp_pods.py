"""The Kubernetes pods that a compiled pipeline's tasks become, for offline policy checks.

A KFP v2 backend turns each executor of the compiled YAML into a pod: the container of the pipeline
spec (image, command, resources, GPU) with the kfp-kubernetes settings of the second YAML document
(PVC mounts, Secret env, node selector, tolerations, the container's security identity) and the
security defaults the backend adds itself (``allowPrivilegeEscalation: false``, ``drop: [ALL]``,
``seccompProfile: RuntimeDefault``; see ``kfp.kubernetes.set_security_context``). :func:`task_pods`
builds those pods, so that the same policy tool that checks ``manifests/`` (checkov, in
tests/test_manifests.py) checks the pipeline's task pods too. KFP's own driver and launcher pieces
are not in it: they are the backend's, not the project's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

#: The label KFP v2 puts on every task pod (the NetworkPolicies select it).
KFP_POD_LABEL = ("pipelines.kubeflow.org/v2_component", "true")
#: What the KFP backend adds to every task container (kfp-kubernetes 2.17 documents it).
BACKEND_CONTAINER_DEFAULTS: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def load_compiled(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pipeline spec, kfp-kubernetes executor settings by executor name) of a compiled YAML."""
    with open(path) as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return docs[0], platform


def _resources(res: Mapping[str, Any]) -> dict[str, Any]:
    requests, limits = {}, {}
    for key, (where, name) in {"resourceCpuRequest": (requests, "cpu"), "resourceCpuLimit": (limits, "cpu"),
                               "resourceMemoryRequest": (requests, "memory"),
                               "resourceMemoryLimit": (limits, "memory")}.items():
        if res.get(key):
            where[name] = str(res[key])
    acc = res.get("accelerator") or {}
    if acc.get("resourceType"):
        limits[acc["resourceType"]] = str(acc.get("resourceCount", "1"))
    return {"requests": requests, "limits": limits}


def task_pods(path: str, namespace: str = "cdanet") -> list[dict[str, Any]]:
    """One Pod object per executor of the compiled pipeline at ``path``."""
    spec, platform = load_compiled(path)
    pods = []
    for name, exe in sorted(spec["deploymentSpec"]["executors"].items()):
        container = exe["container"]
        k8s = platform.get(name, {})
        identity = k8s.get("securityContext") or {}
        sc: dict[str, Any] = dict(BACKEND_CONTAINER_DEFAULTS)
        for key in ("runAsNonRoot", "runAsUser", "runAsGroup"):
            if key in identity:
                sc[key] = int(identity[key]) if key != "runAsNonRoot" else bool(identity[key])
        env = [{"name": kv["envVar"], "valueFrom": {"secretKeyRef": {
                   "name": s["secretNameParameter"]["runtimeValue"]["constant"], "key": kv["secretKey"],
                   **({"optional": True} if s.get("optional") else {})}}}
               for s in k8s.get("secretAsEnv", []) for kv in s["keyToEnv"]]
        mounts, volumes = [], []
        for i, m in enumerate(k8s.get("pvcMount", [])):
            claim = m["pvcNameParameter"]["runtimeValue"]["constant"]
            mounts.append({"name": f"pvc-{i}", "mountPath": m["mountPath"]})
            volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim}})
        pod_spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": container["image"], "command": container.get("command", []),
                "args": container.get("args", []), "resources": _resources(container.get("resources") or {}),
                "securityContext": sc, **({"env": env} if env else {}),
                **({"volumeMounts": mounts} if mounts else {}),
            }],
            **({"volumes": volumes} if volumes else {}),
        }
        if k8s.get("nodeSelector"):
            pod_spec["nodeSelector"] = dict(k8s["nodeSelector"]["labels"])
        if k8s.get("tolerations"):
            pod_spec["tolerations"] = [{k: v for k, v in t.items() if k in ("key", "operator", "value", "effect")}
                                       for t in k8s["tolerations"]]
        pods.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": name.removeprefix("exec-"), "namespace": namespace,
                                  "labels": {KFP_POD_LABEL[0]: KFP_POD_LABEL[1]}},
                     "spec": pod_spec})
    return pods
