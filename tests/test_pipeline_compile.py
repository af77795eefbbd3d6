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
    # stage 1 scores the source domain; the config names the MLflow run (cdanet.tracking)
    assert deps["evaluate"] == {"configure", "preprocess", "pretrain", "finetune"}
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


ALL_TASKS = ("configure", "preprocess", "validate", "baseline", "pretrain", "finetune", "evaluate", "gate")


def platform_executors(platform: list[dict]) -> dict[str, dict]:
    return platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_kubernetes_platform_settings(tmp_path):
    _, platform = compiled(tmp_path, data_pvc="cdanet-raw-data", mlflow_secret="mlflow-tracking",
                           work_pvc="cdanet-processed-data")
    assert platform, "kfp-kubernetes settings are the second YAML document"
    executors = platform_executors(platform)
    mounts = {n: sorted((m["pvcNameParameter"]["runtimeValue"]["constant"], m["mountPath"]) for m in e.get("pvcMount", []))
              for n, e in executors.items()}
    # Before: the raw-data volume was mounted (read-write) in all 8 tasks. Now only where it is read.
    assert {n for n, m in mounts.items() if ("cdanet-raw-data", "/data/raw") in m} == {
        "exec-configure", "exec-preprocess"}
    assert {n for n, m in mounts.items() if ("cdanet-processed-data", "/data/work") in m} == {
        "exec-pretrain", "exec-finetune"}
    secret_users = sorted(n for n, e in executors.items() if "secretAsEnv" in e)
    # Every task that logs to the pipeline run's MLflow run (cdanet.tracking), not only gate/register.
    assert secret_users == ["exec-evaluate", "exec-finetune", "exec-gate", "exec-pretrain", "exec-register",
                            "exec-register-2", "exec-validate"]
    for name in secret_users:
        # Before: only MLFLOW_TRACKING_URI; username and password never reached the tasks.
        envs = {kv["envVar"]: s.get("optional", False) for s in executors[name]["secretAsEnv"] for kv in s["keyToEnv"]}
        assert envs == {"MLFLOW_TRACKING_URI": False, **{k: True for k in P.MLFLOW_SECRET_OPTIONAL}}
        assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(envs)
    _, none = compiled(tmp_path)
    assert "pvcMount" not in str(none) and "secretAsEnv" not in str(none)


def test_every_task_runs_as_non_root_with_cpu_and_memory_limits(tmp_path):
    spec, platform = compiled(tmp_path, use_gpu=True)
    executors = platform_executors(platform)
    assert set(executors) == set(spec["deploymentSpec"]["executors"])  # no task left out
    for name, e in executors.items():
        assert e["securityContext"] == {"runAsNonRoot": True, "runAsUser": "10001", "runAsGroup": "10001"}, name
    for name, exe in spec["deploymentSpec"]["executors"].items():
        res = exe["container"]["resources"]
        for key in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
            assert res.get(key), (name, key)


def test_training_tasks_checkpoint_under_the_run_id(tmp_path):
    spec, _ = compiled(tmp_path, work_pvc="cdanet-processed-data")
    tasks = spec["root"]["dag"]["tasks"]
    for name in ("pretrain", "finetune"):
        params = tasks[name]["inputs"]["parameters"]
        assert params["checkpoint_root"]["runtimeValue"]["constant"] == "/data/work/checkpoints"
        assert params["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    plain, _ = compiled(tmp_path)
    assert plain["root"]["dag"]["tasks"]["pretrain"]["inputs"]["parameters"]["checkpoint_root"][
        "runtimeValue"]["constant"] == ""


def test_model_name_defaults_to_dataset_and_target(tmp_path):
    # Before: the compiled default was "cdanet" for every dataset and target.
    spec, _ = compiled(tmp_path)
    assert spec["root"]["inputDefinitions"]["parameters"]["model_name"]["defaultValue"] == ""
    gate = spec["root"]["dag"]["tasks"]["gate"]["inputs"]["parameters"]["model_name"]
    assert gate["taskOutputParameter"] == {"outputParameterKey": "Output", "producerTask": "configure"}
    from cdanet import steps

    assert steps.model_name_for("amazon", "") == "cdanet-amazon-movie"
    assert steps.model_name_for("taobao", "rec") == "cdanet-taobao-rec"


def test_image_can_be_pinned_by_digest(tmp_path):
    ref = "registry.example/cdanet@sha256:" + "ab" * 32
    out = tmp_path / "digest.yaml"
    assert P.main(["compile", "--output", str(out), "--image", ref]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {ref}


def test_compile_takes_the_cluster_options_in_one_command(tmp_path, capsys):
    out = tmp_path / "c.yaml"
    assert P.main(["compile", "--output", str(out), "--gpu", "--data-pvc", "cdanet-raw-data", "--work-pvc",
                   "cdanet-processed-data", "--mlflow-secret", "mlflow-tracking"]) == 0
    text = out.read_text()
    for needle in ("cdanet-raw-data", "cdanet-processed-data", "mlflow-tracking", "MLFLOW_TRACKING_PASSWORD",
                   "nvidia.com/gpu"):
        assert needle in text
    # The service account is a run setting (KFP's spec has no field for it): compile does not take it.
    with pytest.raises(SystemExit) as e:
        P.main(["compile", "--output", str(out), "--service-account", "cdanet-pipeline-runner"])
    assert e.value.code == 2 and "unrecognized arguments: --service-account" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["deploy", "--dry-run"], ["deploy", "--overlay", "gpu", "--dry-run"]])
def test_deploy_options_reach_the_deploy_parser(argv, capsys):
    # Before: the top-level parser rejected them ("unrecognized arguments: --dry-run"), exit 2.
    rc = P.main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    # lstrip: an earlier kfp.local run in this process can leave kfp's indented print() behind
    assert out.lstrip().startswith("# cdanet deploy plan: overlay"), (out[:500], err[-500:])


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


def test_the_secret_example_lists_every_key_the_pipeline_forwards():
    text = (P.__file__.rsplit("/", 1)[0] + "/cdanet/manifests/secrets/mlflow-tracking.example.env")
    example = open(text).read()
    for key in (*P.MLFLOW_SECRET_REQUIRED, *P.MLFLOW_SECRET_OPTIONAL):
        assert key in example, key
