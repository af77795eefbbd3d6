"""``pipeline.py compile --distributed N``: the training tasks launch Kubeflow Trainer TrainJobs.

Offline: the compiled YAML (launcher tasks, work-PVC mount, image, arguments), the option's errors,
and the launcher's library function (:func:`cdanet.trainjob.launch_step`) against a stand-in for the
Kubernetes ``CustomObjectsApi`` (no cluster exists here) whose ``create`` runs the node's real entry
point (``python -m cdanet.trainjob``, single process) on the staged folder, so the staging and the
copy-back are real files and a real model."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
import yaml
from helpers import configure

import pipeline as P
from cdanet import steps, trainjob
from cdanet.trainjob import TrainJobSettings

REPO = Path(__file__).resolve().parents[1]


def _compile(tmp_path: Path, **kwargs) -> tuple[dict, dict, str]:
    path = P.compile_pipeline(str(tmp_path / "d.yaml"), **kwargs)
    text = Path(path).read_text()
    spec, platform = yaml.safe_load_all(text)
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"], text


def _executor(spec: dict, task: str) -> dict:
    comp = spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]
    return spec["deploymentSpec"]["executors"][spec["components"][comp]["executorLabel"]]


def test_compiled_yaml_has_trainjob_launchers_with_the_work_pvc(tmp_path: Path) -> None:
    spec, platform, _ = _compile(tmp_path, distributed=2, work_pvc="cdanet-processed-data", use_gpu=True,
                                 image="registry.example/cdanet:1.2.3")
    tasks = spec["root"]["dag"]["tasks"]
    for name in ("pretrain", "finetune"):
        assert tasks[name]["taskInfo"]["name"] == f"{name} (TrainJob, 2 nodes)"
        container = _executor(spec, name)["container"]
        assert container["image"] == "registry.example/cdanet:1.2.3"
        assert f'trainjob.launch_step(\n        "{name}"' in " ".join(container["args"] + container["command"])
        # the launcher's pod is small and GPU-free: the nodes get the training resources and the GPU
        res = container["resources"]
        assert (res["resourceCpuRequest"], res["resourceCpuLimit"], res["resourceMemoryLimit"]) == P.LAUNCHER_RESOURCES
        assert "accelerator" not in res
        params = {k: v["runtimeValue"]["constant"] for k, v in tasks[name]["inputs"]["parameters"].items()}
        assert params == {"run_id": "{{$.pipeline_job_uuid}}", "num_nodes": 2, "work_pvc": "cdanet-processed-data",
                          "work_root": "/data/work", "image": "registry.example/cdanet:1.2.3", "gpus_per_node": 1,
                          "cpu": "4", "memory": "16Gi"}
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 2
        exe = platform[f"exec-{name}"]
        assert [(m["pvcNameParameter"]["runtimeValue"]["constant"], m["mountPath"]) for m in exe["pvcMount"]] == [
            ("cdanet-processed-data", "/data/work")]
        assert "nodeSelector" not in exe and "tolerations" not in exe
    # downstream unchanged: evaluate and register read the launchers' outputs under the same keys
    ev = tasks["evaluate"]["inputs"]["artifacts"]
    assert ev["model"]["taskOutputArtifact"] == {"outputArtifactKey": "model", "producerTask": "finetune"}
    assert ev["pretrained"]["taskOutputArtifact"] == {"outputArtifactKey": "pretrained", "producerTask": "pretrain"}
    assert "validate" in tasks["pretrain"]["dependentTasks"]


def test_distributed_1_is_todays_pipeline(tmp_path: Path) -> None:
    kw = dict(work_pvc="cdanet-processed-data", use_gpu=True)
    *_, plain = _compile(tmp_path, **kw)
    *_, one = _compile(tmp_path, distributed=1, **kw)
    assert one == plain and "launch_step" not in plain


@pytest.mark.parametrize("argv, message", [
    (["--distributed", "2"], "pipeline.py: error: --distributed 2 needs --work-pvc"),
    (["--distributed", "0", "--work-pvc", "w"], "pipeline.py: error: --distributed 0: expected a number of nodes >= 1"),
])
def test_bad_distributed_option_is_one_line(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    out = tmp_path / "x.yaml"
    assert P.main(["compile", "--output", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not out.exists()


class _Cluster:
    """A stand-in for ``kubernetes.client.CustomObjectsApi`` (as in tests/test_trainjob.py). ``create``
    plays the TrainJob: it runs the node's entry point, single process, with the job's own arguments
    (so rank 0's model directory is really written where the job says); ``get`` then reports Complete."""

    def __init__(self) -> None:
        self.created: list[dict] = []

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, body: dict) -> dict:
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        command = body["spec"]["trainer"]["command"]
        assert command[:3] == ["torchrun", "-m", "cdanet.trainjob"]
        assert trainjob.main(command[3:]) == 0
        self.created.append(body)
        return body

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str) -> dict:
        return {**self.created[-1], "status": {"conditions": [{"type": "Complete", "status": "True"}]}}


def test_launcher_stages_runs_the_trainjob_and_copies_rank0_back(tmp_path: Path, processed_dir: str) -> None:
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(configure(tmp_path).to_json())
    work = tmp_path / "work"  # the work PVC, mounted at the same path in the launcher and on the nodes
    outputs = tmp_path / "artifacts"
    outputs.mkdir()
    api = _Cluster()
    settings = TrainJobSettings("cdanet", num_nodes=2, image="registry.example/cdanet:1", data_pvc="cdanet-processed-data")
    run_id = "3F2A9c1e-0000-4b6d-8e1a-1234567890ab"
    pre = trainjob.launch_step("pretrain", settings, run_id=run_id, work_root=str(work), config_path=str(cfg_path),
                               processed_dir=processed_dir, model_dir=str(outputs / "pretrained"), api=api,
                               sleep=lambda s: None)
    fine = trainjob.launch_step("finetune", settings, run_id=run_id, work_root=str(work), config_path=str(cfg_path),
                                processed_dir=processed_dir, pretrained_dir=str(outputs / "pretrained"),
                                model_dir=str(outputs / "model"), curves_path=str(outputs / "curves.html"), api=api,
                                sleep=lambda s: None)
    # the TrainJobs: N=2 nodes, the work PVC mounted where the launcher staged, paths keyed by run id and task
    for body, step in zip(api.created, ("pretrain", "finetune"), strict=True):
        staged = f"{work}/trainjobs/{run_id}/{step}"
        assert body["metadata"]["name"] == f"cdanet-{run_id.lower()}-{step}"
        assert body["spec"]["trainer"]["numNodes"] == 2 and body["spec"]["trainer"]["image"] == "registry.example/cdanet:1"
        pod = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
            "template"]["spec"]["template"]["spec"]
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "cdanet-processed-data"
        assert pod["containers"][0]["volumeMounts"] == [{"name": "data", "mountPath": str(work)}]
        expected = trainjob.step_command(step, f"{staged}/config.json", f"{staged}/processed", f"{staged}/model",
                                         f"{staged}/pretrained" if step == "finetune" else None)
        assert body["spec"]["trainer"]["command"] == expected
    # the outputs: whole model directories in the task's artifacts, the single-process task's metric names
    for name in ("pretrained", "model"):
        meta = json.loads((outputs / name / "model.json").read_text())
        assert meta["extra"]["stage"] == ("pretrain" if name == "pretrained" else "finetune")
        assert (outputs / name / "history.json").is_file()
    assert set(pre) == {"stage1_best_epoch", "stage1_best_val_auc", "stage1_epochs", "stage1_resumed_from_epoch"}
    assert set(fine) == {k.replace("stage1", "stage2") for k in pre}
    assert 0.0 < pre["stage1_best_val_auc"] <= 1.0 and fine["stage2_epochs"] == 1.0
    # the copied-back metrics are the one-process task's, for the same config and data
    single = steps.pretrain(str(cfg_path), processed_dir, str(tmp_path / "single"))
    assert pre == pytest.approx(single, abs=1e-9)
    assert "<html" in (outputs / "curves.html").read_text().lower()
    assert (outputs / "model" / steps.CURVES_PNG).is_file()
    # the staging folders are gone once copied back; nothing half-written is left beside the artifacts
    assert not (work / "trainjobs" / run_id).exists()
    assert sorted(p.name for p in outputs.iterdir()) == ["curves.html", "model", "pretrained"]


def test_launcher_leaves_no_output_when_the_trainjob_fails(tmp_path: Path, processed_dir: str) -> None:
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(configure(tmp_path).to_json())

    class Failing(_Cluster):
        def create_namespaced_custom_object(self, *args: object) -> dict:
            self.created.append(args[-1])
            return args[-1]

        def get_namespaced_custom_object(self, *args: object) -> dict:
            return {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailed",
                                               "message": "node-1 exited 1"}]}}

    with pytest.raises(RuntimeError, match="failed: PodFailed: node-1 exited 1"):
        trainjob.launch_step("pretrain", TrainJobSettings("cdanet"), run_id="r1", work_root=str(tmp_path / "w"),
                             config_path=str(cfg_path), processed_dir=processed_dir,
                             model_dir=str(tmp_path / "out" / "pretrained"), api=Failing(), sleep=lambda s: None)
    assert not (tmp_path / "out" / "pretrained").exists()
    with pytest.raises(FileNotFoundError, match="pretrain: input processed '/nonexistent' is not a folder"):
        trainjob.launch_step("pretrain", TrainJobSettings("cdanet"), run_id="r1", work_root=str(tmp_path / "w"),
                             config_path=str(cfg_path), processed_dir="/nonexistent",
                             model_dir=str(tmp_path / "m"), api=Failing())
    with pytest.raises(steps.PipelineParameterError, match="run_id '{{.*}}': expected the pipeline run's id"):
        trainjob.launch_step("pretrain", TrainJobSettings("cdanet"), run_id="{{$.pipeline_job_uuid}}",
                             work_root=str(tmp_path / "w"), config_path=str(cfg_path), processed_dir=processed_dir,
                             model_dir=str(tmp_path / "m"), api=Failing())


class _ApiError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def test_a_retry_replaces_the_trainjob_an_earlier_attempt_left() -> None:
    calls: list[str] = []

    class Leftover:
        """An earlier attempt's TrainJob exists; once deleted, it takes one more read to be gone."""

        state = "leftover"

        def create_namespaced_custom_object(self, *args: object) -> dict:
            calls.append("create")
            if self.state == "leftover":
                raise _ApiError(409)
            self.state = "created"
            return {}

        def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kw) -> dict:
            calls.append(f"delete {name} {kw['propagation_policy']}")
            self.state = "terminating"
            return {}

        def get_namespaced_custom_object(self, *args: object) -> dict:
            calls.append("get")
            if self.state == "terminating":
                self.state = "gone"
                return {}
            if self.state == "gone":
                raise _ApiError(404)
            return {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}

    job = trainjob.train_job(TrainJobSettings("cdanet-r1-pretrain"), "pretrain", config="/data/c.json",
                             processed="/data/p", model_dir="/data/m")
    trainjob.run_train_job(job, Leftover(), sleep=lambda s: None)
    assert calls == ["create", "delete cdanet-r1-pretrain Foreground", "get", "get", "create", "get"]

    class Forbidden(Leftover):
        def create_namespaced_custom_object(self, *args: object) -> dict:
            raise _ApiError(403)

    with pytest.raises(_ApiError):  # anything but 409 is not the launcher's to handle
        trainjob.run_train_job(job, Forbidden(), sleep=lambda s: None)


def test_job_names_are_dns_labels() -> None:
    assert trainjob.job_name("3F2A9c1e-0000-4b6d-8e1a-1234567890ab", "finetune") == (
        "cdanet-3f2a9c1e-0000-4b6d-8e1a-1234567890ab-finetune")
    long = trainjob.job_name("run_" + "x" * 80, "pretrain")
    assert len(long) <= 63 and long.endswith("-pretrain") and trainjob._DNS1123.match(long)


def _doc_command(path: Path) -> list[str]:
    from test_cli import fenced_commands

    (cmd,) = [c for _, c in fenced_commands(path) if "--distributed" in c]
    return shlex.split(cmd)


@pytest.mark.parametrize("doc", ["README.md", "docs/deploy.md"])
def test_documented_distributed_compile_command_runs(doc: str, tmp_path: Path, monkeypatch) -> None:
    words = _doc_command(REPO / doc)
    assert words[:3] == ["python", "pipeline.py", "compile"] and "--distributed" in words
    monkeypatch.chdir(tmp_path)
    assert P.main(words[2:]) == 0
    out = words[words.index("--output") + 1]
    text = (tmp_path / out).read_text()
    assert "trainjob.launch_step" in text and os.path.basename(out) == out


@pytest.mark.parametrize("gpus, procs", [(0, 1), (2, 2)])
def test_launcher_settings_run_one_worker_per_gpu_on_the_work_pvc(gpus: int, procs: int) -> None:
    from cdanet.trainjob import launcher_settings

    s = launcher_settings(image="repo/cdanet@sha256:" + "0" * 64, num_nodes=3, gpus_per_node=gpus, cpu="4",
                          memory="16Gi", work_pvc="cdanet-processed-data")
    assert (s.num_nodes, s.procs_per_node, s.gpus_per_node) == (3, procs, gpus)
    assert s.data_pvc == "cdanet-processed-data" and s.namespace == "cdanet"  # not in a pod: the default
