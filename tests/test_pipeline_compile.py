"""The compiled pipeline spec: tasks, dependencies, the gate condition, GPU, retries and caching."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

import pipeline as P


def compiled(tmp_path, **kwargs) -> tuple[dict, list[dict]]:
    path = P.compile_pipeline(str(tmp_path / "p.yaml"), **kwargs)
    with open(path) as fh:
        docs = list(yaml.safe_load_all(fh))
    return docs[0], docs[1:]


def executor_of(spec: dict, task: str, dag: dict | None = None) -> dict:
    tasks = (dag or spec["root"]["dag"])["tasks"]
    comp = tasks[task]["componentRef"]["name"]
    exe = spec["components"][comp]["executorLabel"]
    return spec["deploymentSpec"]["executors"][exe]


def test_tasks_and_dependencies(tmp_path):
    spec, _ = compiled(tmp_path)
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"configure", "preprocess", "validate", "baseline", "pretrain", "finetune", "evaluate",
                          "gate", "condition-branches-1"}
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert deps["preprocess"] == {"configure"}
    assert deps["validate"] == {"configure", "preprocess"}
    assert "validate" in deps["pretrain"]  # training never starts on data that failed validation
    assert "pretrain" in deps["finetune"]
    assert deps["evaluate"] == {"preprocess", "pretrain", "finetune"}  # stage 1 scores the source domain
    assert "evaluate" in deps["gate"]
    # the in-run baseline: after validation, beside the training tasks (neither waits for the other)
    assert deps["baseline"] == {"configure", "preprocess", "validate"}
    assert "baseline" in deps["gate"] and not deps["baseline"] & {"pretrain", "finetune"}
    assert "baseline" not in deps["pretrain"] | deps["finetune"] | deps["evaluate"]
    gate_inputs = tasks["gate"]["inputs"]
    assert gate_inputs["artifacts"]["baseline"]["taskOutputArtifact"] == {
        "outputArtifactKey": "test_metrics", "producerTask": "baseline"}
    for name, output in (("candidate_logloss", "target_logloss"), ("base_rate_logloss", "target_base_rate_logloss")):
        assert gate_inputs["parameters"][name]["taskOutputParameter"] == {
            "outputParameterKey": output, "producerTask": "evaluate"}
    configure_inputs = tasks["configure"]["inputs"]["parameters"]
    assert configure_inputs["baseline_margin"]["componentInputParameter"] == "baseline_margin"
    assert spec["root"]["inputDefinitions"]["parameters"]["baseline_margin"]["defaultValue"] == 0.005


def test_promotion_only_when_blessed(tmp_path):
    spec, _ = compiled(tmp_path)
    branches = spec["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    blessed = branches["condition-2"]["triggerPolicy"]["condition"]
    rejected = branches["condition-3"]["triggerPolicy"]["condition"]
    assert "gate-blessed" in blessed and blessed.endswith("== true")
    assert rejected.startswith("!(") and "gate-blessed" in rejected
    promote = spec["components"]["comp-condition-2"]["dag"]["tasks"]
    assert [t["taskInfo"]["name"] for t in promote.values()] == ["promote"]


def test_gpu_request_only_when_enabled(tmp_path):
    cpu, _ = compiled(tmp_path)
    gpu, _ = compiled(tmp_path, use_gpu=True)
    for task in ("pretrain", "finetune"):
        assert "accelerator" not in executor_of(cpu, task)["container"]["resources"]
        acc = executor_of(gpu, task)["container"]["resources"]["accelerator"]
        assert acc["resourceType"] == "nvidia.com/gpu" and int(acc["resourceCount"]) == 1
    assert "accelerator" not in executor_of(gpu, "preprocess")["container"]["resources"]


def test_resources_retries_caching_and_image(tmp_path):
    spec, _ = compiled(tmp_path, image="registry.example/cdanet:1.2.3")
    tasks = spec["root"]["dag"]["tasks"]
    for name in ("configure", "preprocess", "validate", "baseline", "pretrain", "finetune", "evaluate", "gate"):
        container = executor_of(spec, name)["container"]
        assert container["image"] == "registry.example/cdanet:1.2.3"
        assert container["resources"]["resourceCpuRequest"] and container["resources"]["resourceMemoryRequest"]
        # the image has kfp baked in: nothing is pip-installed at run time
        assert "pip install" not in " ".join(container["command"])
    for name in ("pretrain", "finetune"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 2
    for name in ("preprocess", "validate", "pretrain", "finetune"):
        assert tasks[name]["cachingOptions"].get("enableCache") is True
    for name in ("evaluate", "gate"):
        assert not tasks[name]["cachingOptions"].get("enableCache", False)
    assert "retryPolicy" not in tasks["gate"]


def test_scheduled_time_pins_the_data_window(tmp_path):
    spec, _ = compiled(tmp_path, scheduled=True)
    params = spec["root"]["dag"]["tasks"]["preprocess"]["inputs"]["parameters"]
    assert params["data_until"]["runtimeValue"]["constant"] == "{{$.pipeline_job_schedule_time_utc}}"
    manual, _ = compiled(tmp_path)  # a manual run takes the window end from its data_until parameter
    params = manual["root"]["dag"]["tasks"]["preprocess"]["inputs"]["parameters"]
    assert params["data_until"]["componentInputParameter"] == "data_until"


def test_kubernetes_platform_settings(tmp_path):
    _, platform = compiled(tmp_path, data_pvc="cdanet-raw-data", mlflow_secret="mlflow-tracking")
    assert platform, "kfp-kubernetes settings are the second YAML document"
    executors = platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all(e["pvcMount"][0]["mountPath"] == "/data/raw" for e in executors.values())
    secret_users = [n for n, e in executors.items() if "secretAsEnv" in e]
    assert any("gate" in n for n in secret_users) and any("register" in n for n in secret_users)
    _, none = compiled(tmp_path)
    assert none == []


def test_kfp_cli_compiles_the_module(tmp_path):
    out = tmp_path / "cli.yaml"
    kfp_cli = os.path.join(os.path.dirname(sys.executable), "kfp")
    subprocess.run([kfp_cli, "dsl", "compile", "--py", "pipeline.py", "--output", str(out)],
                   check=True, capture_output=True)
    assert yaml.safe_load(out.read_text().split("\n---")[0])["pipelineInfo"]["name"] == "cdanet-training"


def test_help_documents_the_verbs(capsys):
    with pytest.raises(SystemExit) as e:
        P.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for verb in ("run", "compile", "submit", "schedule", "deploy"):
        assert verb in text


def test_gpu_tasks_land_on_gpu_nodes(tmp_path):
    _, platform = compiled(tmp_path, use_gpu=True)
    executors = platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    gpu = {n: e for n, e in executors.items() if "nodeSelector" in e}
    assert sorted(gpu) == ["exec-finetune", "exec-pretrain"]
    for e in gpu.values():
        assert e["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        assert e["tolerations"][0]["key"] == "nvidia.com/gpu"
