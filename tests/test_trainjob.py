"""The training step as a Kubeflow Trainer v2 TrainJob (cdanet.trainjob), built with the kubeflow SDK's
models and checked offline: structure, the SDK's own type checks, the pod patches against the
Kubernetes schemas, and the command each node runs."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pydantic
import pytest
import yaml
from kubeflow_trainer_api import models as m

from cdanet import trainjob
from cdanet.trainjob import TrainJobSettings, step_command, to_dict, to_yaml, train_job

PATHS = {"config": "/data/run/config.json", "processed": "/data/processed", "model_dir": "/data/run/stage1"}


def _job(**settings: object) -> dict:
    return to_dict(train_job(TrainJobSettings("cdanet-pretrain", **settings), "pretrain", **PATHS))


def _pod(obj: dict) -> dict:
    (patch,) = obj["spec"]["runtimePatches"]
    (rj,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rj["name"] == trainjob.NODE
    return rj["template"]["spec"]["template"]["spec"]


def test_cpu_trainjob_structure() -> None:
    obj = _job(num_nodes=3, cpu="8", memory="32Gi", image="registry.example/cdanet:1")
    assert (obj["apiVersion"], obj["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert obj["metadata"] == {"name": "cdanet-pretrain", "namespace": "cdanet",
                               "labels": {"app.kubernetes.io/part-of": "cdanet", "cdanet/step": "pretrain"}}
    spec = obj["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                  "name": "torch-distributed"}
    tr = spec["trainer"]
    assert tr["image"] == "registry.example/cdanet:1"
    assert (tr["numNodes"], tr["numProcPerNode"]) == (3, 1)
    assert tr["command"] == ["torchrun", "-m", "cdanet.trainjob", "pretrain", "--config",
                             PATHS["config"], "--processed", PATHS["processed"], "--model-dir", PATHS["model_dir"]]
    assert tr["resourcesPerNode"] == {"requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"cpu": "8", "memory": "32Gi"}}
    assert {e["name"]: e["value"] for e in tr["env"]}["OMP_NUM_THREADS"] == "8"
    pod = _pod(obj)
    assert pod["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "cdanet-processed-data"}}]
    assert pod["containers"] == [{"name": "node", "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                                  "securityContext": {"allowPrivilegeEscalation": False,
                                                      "capabilities": {"drop": ["ALL"]}}}]
    # Pod Security "restricted" (enforced on the namespace) admits only non-root, locked-down pods.
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    assert "nodeSelector" not in pod and "tolerations" not in pod
    # The node pods carry the label that the trainjob-nodes NetworkPolicy selects (test_manifests.py).
    (patch,) = obj["spec"]["runtimePatches"]
    (rj,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rj["template"]["spec"]["template"]["metadata"] == {"labels": {"app.kubernetes.io/component": "cdanet-trainjob-node"}}


def test_gpu_option_requests_gpus_and_schedules_on_gpu_nodes() -> None:
    obj = _job(num_nodes=2, gpus_per_node=4, procs_per_node=4, cpu="16")
    tr = obj["spec"]["trainer"]
    assert tr["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert tr["resourcesPerNode"]["requests"]["nvidia.com/gpu"] == "4"
    assert tr["numProcPerNode"] == 4
    assert {e["name"]: e["value"] for e in tr["env"]}["OMP_NUM_THREADS"] == "4"
    pod = _pod(obj)
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_finetune_command_takes_the_stage1_directory() -> None:
    job = train_job(TrainJobSettings("cdanet-finetune"), "finetune", **{**PATHS, "model_dir": "/data/run/stage2"},
                    pretrained="/data/run/stage1")
    assert to_dict(job)["spec"]["trainer"]["command"][-2:] == ["--pretrained", "/data/run/stage1"]
    with pytest.raises(ValueError, match="finetune needs pretrained="):
        step_command("finetune", **PATHS)
    with pytest.raises(ValueError, match="unknown training step 'train'"):
        step_command("train", **PATHS)


def test_manifest_round_trips_through_the_sdk_models() -> None:
    text = to_yaml(train_job(TrainJobSettings("cdanet-pretrain", gpus_per_node=1), "pretrain", **PATHS))
    obj = yaml.safe_load(text)
    again = m.TrainerV1alpha1TrainJob.from_dict(obj)
    assert again is not None and again.to_dict() == obj
    json.dumps(obj)  # plain data only


def test_pod_patches_are_valid_kubernetes_objects() -> None:
    # The patch's volumes, mounts and tolerations are core/v1 types: validate them inside a Pod.
    pod = _pod(_job(gpus_per_node=1))
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {
        "volumes": pod["volumes"], "nodeSelector": pod["nodeSelector"], "tolerations": pod["tolerations"],
        "securityContext": pod["securityContext"],
        "containers": [{**pod["containers"][0], "image": "cdanet"}]}}
    kubernetes_validate.validate(manifest, "1.32.0", strict=True)


def test_sdk_rejects_bad_types() -> None:
    with pytest.raises(pydantic.ValidationError):
        m.TrainerV1alpha1Trainer(numNodes="two")


@pytest.mark.parametrize("settings, message", [
    ({"name": "Bad_Name"}, "is not a DNS-1123 label"),
    ({"name": "ok", "num_nodes": 0}, "num_nodes must be >= 1"),
    ({"name": "ok", "gpus_per_node": 2, "procs_per_node": 1}, "must equal gpus_per_node"),
    ({"name": "ok", "data_mount": "data"}, "data_mount must be an absolute path"),
])
def test_bad_settings_are_one_clear_error(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train_job(TrainJobSettings(**settings), "pretrain", **PATHS)


def test_paths_must_lie_on_the_shared_volume() -> None:
    with pytest.raises(ValueError, match="processed '/tmp/p' must lie under the shared volume's mount '/data'"):
        train_job(TrainJobSettings("ok"), "pretrain", **{**PATHS, "processed": "/tmp/p"})


def test_node_entry_point_rejects_a_missing_config(tmp_path: Path) -> None:
    from cdanet.trainjob import main

    with pytest.raises(FileNotFoundError):
        main(["pretrain", "--config", str(tmp_path / "missing.json"), "--processed", str(tmp_path),
              "--model-dir", str(tmp_path / "m")])


class _Cluster:
    """A stand-in for ``kubernetes.client.CustomObjectsApi``: stores the created object and reports the
    given sequence of condition lists on successive reads (no cluster can run here)."""

    def __init__(self, conditions: list[list[dict]]) -> None:
        self.created: list[tuple] = []
        self.conditions = conditions
        self.reads = 0

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, body: dict) -> dict:
        self.created.append((group, version, namespace, plural, body))
        return body

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str) -> dict:
        conds = self.conditions[min(self.reads, len(self.conditions) - 1)]
        self.reads += 1
        return {**self.created[0][4], "status": {"conditions": conds}}


def test_run_train_job_creates_then_waits_for_complete() -> None:
    from cdanet.trainjob import run_train_job

    api = _Cluster([[], [{"type": "Created", "status": "True"}],
                    [{"type": "Created", "status": "True"}, {"type": "Complete", "status": "True"}]])
    job = train_job(TrainJobSettings("cdanet-pretrain"), "pretrain", **PATHS)
    sleeps: list[float] = []
    obj = run_train_job(job, api, poll_s=5, sleep=sleeps.append)
    ((group, version, namespace, plural, body),) = api.created
    assert (group, version, namespace, plural) == ("trainer.kubeflow.org", "v1alpha1", "cdanet", "trainjobs")
    assert body == to_dict(job) and obj["metadata"]["name"] == "cdanet-pretrain"
    assert sleeps == [5, 5]


def test_run_train_job_reports_failure_and_timeout() -> None:
    from cdanet.trainjob import run_train_job

    job = train_job(TrainJobSettings("cdanet-pretrain"), "pretrain", **PATHS)
    failed = _Cluster([[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "node-0 OOM"}]])
    with pytest.raises(RuntimeError, match="TrainJob cdanet/cdanet-pretrain failed: BackoffLimitExceeded: node-0 OOM"):
        run_train_job(job, failed, sleep=lambda s: None)
    with pytest.raises(TimeoutError, match="did not finish within 30 s"):
        run_train_job(job, _Cluster([[]]), poll_s=10, timeout_s=30, sleep=lambda s: None)


def test_training_jobs_chain_the_two_steps_on_the_shared_volume() -> None:
    from cdanet.trainjob import training_jobs

    jobs = {k: to_dict(v) for k, v in training_jobs(TrainJobSettings("cdanet-run7", num_nodes=4), "/data/runs/7/",
                                                    "/data/processed").items()}
    assert [j["metadata"]["name"] for j in jobs.values()] == ["cdanet-run7-pretrain", "cdanet-run7-finetune"]
    pre, fine = (j["spec"]["trainer"]["command"] for j in jobs.values())
    assert pre[pre.index("--model-dir") + 1] == fine[fine.index("--pretrained") + 1] == "/data/runs/7/stage1"
    assert fine[fine.index("--model-dir") + 1] == "/data/runs/7/stage2"
    assert {c[c.index("--config") + 1] for c in (pre, fine)} == {"/data/runs/7/config.json"}
    assert all(j["spec"]["trainer"]["numNodes"] == 4 for j in jobs.values())
