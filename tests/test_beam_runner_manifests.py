"""Offline checks of manifests/beam-runner: the Beam preprocessing job on Flink (Flink Kubernetes Operator
session cluster + Beam's Flink job server) and the pipeline options that use it.

Rendered with the real ``kubectl kustomize``; Kubernetes objects validated strictly against the
1.32 schemas (``kubernetes_validate``); the FlinkDeployment against a schema of the fields this tree
sets (the operator's v1beta1 names and enums), its pod template as a Pod; and the wiring between
the objects and the options (service names, ports, versions) checked so that the options reach the
job server and the job server reaches the Flink cluster. No cluster, operator or Flink is needed.
"""

from __future__ import annotations

import importlib.metadata
import shlex
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from beam_jobs import preprocess as job
from cdanet import __version__
from cdanet.deploy import DEFAULT_MANIFESTS_ROOT, DeployError, find_kubectl
from cdanet.preprocessing.pipeline import pipeline_options

TREE = DEFAULT_MANIFESTS_ROOT / "beam-runner"
K8S_VERSION = "1.32.0"
Obj = dict[str, Any]

_RESOURCE = {"type": "object", "additionalProperties": False, "required": ["cpu", "memory"],
             "properties": {"cpu": {"type": "number", "exclusiveMinimum": 0}, "memory": {"type": "string"},
                            "ephemeralStorage": {"type": "string"}}}
#: The FlinkDeployment fields this tree uses, with the operator's (flink.apache.org/v1beta1) types and
#: enums; flinkVersion limited to the versions Beam 2.77 publishes a job server for.
FLINK_DEPLOYMENT_SCHEMA: Obj = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "flink.apache.org/v1beta1"},
        "kind": {"const": "FlinkDeployment"},
        "spec": {
            "type": "object", "additionalProperties": False,
            "required": ["image", "flinkVersion", "serviceAccount", "jobManager", "taskManager"],
            "properties": {
                "image": {"type": "string"},
                "flinkVersion": {"enum": ["v1_19", "v1_20"]},
                "mode": {"enum": ["native", "standalone"]},
                "serviceAccount": {"type": "string"},
                "flinkConfiguration": {"type": "object", "additionalProperties": {"type": "string"}},
                "jobManager": {"type": "object", "additionalProperties": False,
                               "properties": {"replicas": {"type": "integer", "minimum": 1}, "resource": _RESOURCE,
                                              "podTemplate": {"type": "object"}}},
                "taskManager": {"type": "object", "additionalProperties": False,
                                "properties": {"replicas": {"type": "integer", "minimum": 1}, "resource": _RESOURCE,
                                               "podTemplate": {"type": "object"}}},
            },
        },
    },
}


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], Obj]:
    import subprocess

    try:
        kubectl = find_kubectl()
    except DeployError as e:  # a declared test dependency: missing is a failure, not a skip
        pytest.fail(str(e))
    out = subprocess.run([kubectl, "kustomize", str(TREE)], capture_output=True, text=True, check=True).stdout
    return {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(out) if o}


def _flink(objects: dict[tuple[str, str], Obj]) -> Obj:
    (fd,) = [o for (kind, _), o in objects.items() if kind == "FlinkDeployment"]
    return fd


def _beam_args(objects: dict[tuple[str, str], Obj]) -> list[str]:
    return shlex.split(objects[("ConfigMap", "cdanet-beam-runner-options")]["data"]["BEAM_ARGS"])


def test_renders_the_expected_objects(objects: dict[tuple[str, str], Obj]) -> None:
    assert sorted(objects) == sorted([
        ("ConfigMap", "cdanet-beam-runner-options"), ("Deployment", "cdanet-beam-job-server"),
        ("FlinkDeployment", "cdanet-beam-flink"), ("Role", "flink"), ("RoleBinding", "flink"),
        ("Service", "cdanet-beam-job-server"), ("ServiceAccount", "flink"),
    ])
    for o in objects.values():
        assert o["metadata"]["namespace"] == "cdanet"
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "cdanet"


def test_kubernetes_objects_validate_strictly(objects: dict[tuple[str, str], Obj]) -> None:
    for (kind, _), o in objects.items():
        if kind != "FlinkDeployment":
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)


def test_flink_deployment_matches_the_operator_fields(objects: dict[tuple[str, str], Obj]) -> None:
    fd = _flink(objects)
    jsonschema.validate(fd, FLINK_DEPLOYMENT_SCHEMA)
    assert "job" not in fd["spec"]  # a session cluster: the job server submits the pipelines
    template = fd["spec"]["taskManager"]["podTemplate"]
    pod = {**template, "metadata": {"name": template["metadata"]["name"]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    claims = {v["persistentVolumeClaim"]["claimName"] for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"cdanet-raw-data", "cdanet-processed-data"}  # the base's PVCs


def test_schema_check_rejects_a_wrong_field(objects: dict[tuple[str, str], Obj]) -> None:
    bad = yaml.safe_load(yaml.safe_dump(_flink(objects)))
    bad["spec"]["flinkVersion"] = "1.20"  # the operator's enum is v1_20
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, FLINK_DEPLOYMENT_SCHEMA)


def test_versions_agree(objects: dict[tuple[str, str], Obj]) -> None:
    from apache_beam.options.pipeline_options import FlinkRunnerOptions

    fd = _flink(objects)
    flink = fd["spec"]["flinkVersion"].removeprefix("v").replace("_", ".")
    assert flink in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    assert fd["spec"]["image"].startswith(f"flink:{flink}.")
    (server,) = objects[("Deployment", "cdanet-beam-job-server")]["spec"]["template"]["spec"]["containers"]
    assert server["image"] == f"apache/beam_flink{flink}_job_server:{importlib.metadata.version('apache-beam')}"
    (pool,) = fd["spec"]["taskManager"]["podTemplate"]["spec"]["containers"]
    assert pool["image"] == f"ghcr.io/cdanet/cdanet:{__version__}"  # the SDK workers import cdanet


def test_options_reach_the_job_server_and_the_worker_pool(objects: dict[tuple[str, str], Obj]) -> None:
    opts = pipeline_options(_beam_args(objects)).get_all_options()
    assert opts["runner"] == "PortableRunner" and opts["environment_type"] == "EXTERNAL"
    service = objects[("Service", "cdanet-beam-job-server")]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    for option, port in (("job_endpoint", "job"), ("artifact_endpoint", "artifact")):
        host, _, number = opts[option].rpartition(":")
        assert (host, int(number)) == (service["metadata"]["name"], ports[port]), option
    (server,) = objects[("Deployment", "cdanet-beam-job-server")]["spec"]["template"]["spec"]["containers"]
    assert f"--job-port={ports['job']}" in server["args"] and f"--artifact-port={ports['artifact']}" in server["args"]
    # The job server talks to the operator's REST service of the session cluster, <name>-rest:8081.
    assert f"--flink-master={_flink(objects)['metadata']['name']}-rest:8081" in server["args"]
    (pool,) = _flink(objects)["spec"]["taskManager"]["podTemplate"]["spec"]["containers"]
    assert opts["environment_config"] == f"localhost:{pool['ports'][0]['containerPort']}"
    assert f"--service_port={pool['ports'][0]['containerPort']}" in pool["args"]


def test_preprocess_job_passes_the_options_through(objects: dict[tuple[str, str], Obj]) -> None:
    args, beam_args = job.build_parser().parse_known_args(
        ["--dataset", "taobao", "--input", "/data/raw/taobao", "--output", "/data/processed/run1", *_beam_args(objects)])
    assert beam_args == _beam_args(objects)
    assert args.dataset == "taobao"
