"""The same hyperparameter search on a cluster: a Katib ``Experiment`` (``kubeflow.org/v1beta1``).

Katib's TPE suggestion service (hyperopt) draws the values of a :class:`~cdanet.tuning.SearchSpace`;
each trial is a Kubernetes Job in the project's image that runs ``cdanet tune-trial`` with the
drawn values as ``--set`` overrides and prints ``val_auc=<value>`` (the final stage's best
validation AUC of the target domain) on stdout, where Katib's StdOut metrics collector reads it
with its default filter. Like ``cdanet tune``, a trial never reads the test split.

Katib reads a log-uniform range from ``feasibleSpace.distribution: logUniform`` (Katib >= 0.18);
older releases drop the field and draw uniformly. The namespace must be one where Katib injects
its metrics collector (a Kubeflow profile namespace, or the label
``katib.kubeflow.org/metrics-collector-injection: enabled``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cdanet import __version__
from cdanet.config import ConfigError, ExperimentConfig
from cdanet.tuning import CategoricalParam, FloatParam, SearchSpace

API_VERSION = "kubeflow.org/v1beta1"
METRIC_NAME = "val_auc"
PRIMARY_CONTAINER = "training"
DEFAULT_IMAGE = f"ghcr.io/cdanet/cdanet:{__version__}"  # the same as components.DEFAULT_IMAGE
#: Katib's default StdOut filter (pkg/metricscollector/v1beta1/common): ``name=value``, no exponent.
STDOUT_METRIC_PATTERN = r"([\w|-]+)\s*=\s*((-?\d+)(\.\d+)?)"
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class KatibSettings:
    """Cluster-side settings of the Experiment (where and how trials run, how many)."""

    name: str
    namespace: str = "cdanet"
    image: str = DEFAULT_IMAGE
    max_trials: int = 20
    parallel_trials: int = 1  # > 1 across nodes needs a ReadWriteMany volume (docs/deploy.md, "Storage")
    max_failed_trials: int = 3
    seed: int = 42  # TPE's random_state
    pvc: str | None = "cdanet-processed-data"
    mount_path: str = "/data/processed"
    cpu: str = "4"
    memory: str = "16Gi"
    gpu: bool = False
    service_account: str | None = None

    def validate(self) -> KatibSettings:
        problems = []
        if not _NAME.match(self.name) or len(self.name) > 63:
            problems.append(f"name {self.name!r} must be a DNS label (lower-case letters, digits, '-')")
        if self.max_trials < 1 or self.parallel_trials < 1 or self.max_failed_trials < 0:
            problems.append("max_trials and parallel_trials must be >= 1, max_failed_trials >= 0")
        elif self.parallel_trials > self.max_trials or self.max_failed_trials > self.max_trials:
            problems.append("parallel_trials and max_failed_trials must be <= max_trials (Katib rejects it)")
        if self.seed < 0:
            problems.append(f"seed must be >= 0 (hyperopt's random_state), got {self.seed}")
        if problems:
            raise ConfigError("invalid Katib settings: " + "; ".join(problems))
        return self


def parameter_name(key: str) -> str:
    """The Katib parameter (and trial parameter) name of a dotted config key: ``model.alpha`` -> ``model-alpha``."""
    return key.replace(".", "-")


def placeholder(key: str) -> str:
    return "${trialParameters." + parameter_name(key) + "}"


def _value(v: Any) -> str:
    # Katib passes values as strings; --set parses them as JSON, so non-strings go as JSON literals.
    return v if isinstance(v, str) else json.dumps(v)


def trial_command(cfg: ExperimentConfig, processed: str, profile: str, fixed: Sequence[str],
                  space: SearchSpace) -> list[str]:
    """``cdanet tune-trial ...`` with one ``--set key=${trialParameters.<name>}`` per searched key."""
    command = ["cdanet", "tune-trial", "--processed", processed, "--profile", profile, "--dataset", cfg.dataset,
               "--target", cfg.target_domain, "--model", cfg.model.name]
    if cfg.model.ablation != "none":
        command += ["--ablation", cfg.model.ablation]
    for item in fixed:
        command += ["--set", item]
    for key in space.keys:
        command += ["--set", f"{key}={placeholder(key)}"]
    return command


def _parameter(key: str, p: Any) -> dict[str, Any]:
    if isinstance(p, CategoricalParam):
        return {"name": parameter_name(key), "parameterType": "categorical",
                "feasibleSpace": {"list": [_value(c) for c in p.choices]}}
    space: dict[str, Any] = {"min": _value(p.low), "max": _value(p.high)}
    if p.log:
        space["distribution"] = "logUniform"
    step = p.step if isinstance(p, FloatParam) else (p.step if p.step != 1 else None)
    if step is not None:
        space["step"] = _value(step)
    kind = "double" if isinstance(p, FloatParam) else "int"
    return {"name": parameter_name(key), "parameterType": kind, "feasibleSpace": space}


def experiment(cfg: ExperimentConfig, space: SearchSpace, settings: KatibSettings, *, processed: str,
               profile: str, fixed: Sequence[str] = ()) -> dict[str, Any]:
    """The Katib Experiment object that searches ``space`` around ``cfg`` (profile + ``fixed``).

    ``processed`` is the processed data's path inside the trial container (under
    ``settings.mount_path`` when a PVC is mounted).
    """
    settings.validate()
    space.validate(cfg, [f.split("=", 1)[0].strip() for f in fixed])
    container: dict[str, Any] = {
        "name": PRIMARY_CONTAINER,
        "image": settings.image,
        "command": trial_command(cfg, processed, profile, fixed, space),
        "resources": {"requests": {"cpu": settings.cpu, "memory": settings.memory},
                      "limits": {"memory": settings.memory}},
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if settings.gpu:
        container["resources"]["limits"]["nvidia.com/gpu"] = 1
        pod["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    if settings.pvc:
        container["volumeMounts"] = [{"name": "processed", "mountPath": settings.mount_path, "readOnly": True}]
        pod["volumes"] = [{"name": "processed", "persistentVolumeClaim": {"claimName": settings.pvc, "readOnly": True}}]
    if settings.service_account:
        pod["serviceAccountName"] = settings.service_account
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        # Katib's metrics collector sidecar must not keep the pod alive; one attempt per trial.
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
            "spec": pod,
        }},
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "Experiment",
        "metadata": {"name": settings.name, "namespace": settings.namespace,
                     "labels": {"app.kubernetes.io/part-of": "cdanet", "app.kubernetes.io/component": "tuning"}},
        "spec": {
            "objective": {"type": "maximize", "objectiveMetricName": METRIC_NAME,
                          "metricStrategies": [{"name": METRIC_NAME, "value": "latest"}]},
            "algorithm": {"algorithmName": "tpe",
                          "algorithmSettings": [{"name": "random_state", "value": str(settings.seed)}]},
            "maxTrialCount": settings.max_trials,
            "parallelTrialCount": settings.parallel_trials,
            "maxFailedTrialCount": settings.max_failed_trials,
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "parameters": [_parameter(k, p) for k, p in space.params],
            "trialTemplate": {
                "primaryContainerName": PRIMARY_CONTAINER,
                "successCondition": 'status.conditions.#(type=="Complete")#|#(status=="True")#',
                "failureCondition": 'status.conditions.#(type=="Failed")#|#(status=="True")#',
                "trialParameters": [
                    {"name": parameter_name(k), "reference": parameter_name(k), "description": f"config key {k}"}
                    for k in space.keys
                ],
                "trialSpec": job,
            },
        },
    }


def to_yaml(obj: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=120)
