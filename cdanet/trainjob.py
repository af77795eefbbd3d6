"""The training step on N nodes as a Kubeflow Trainer v2 ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``).

Built with the ``kubeflow`` SDK's own models (``kubeflow_trainer_api``, pydantic: a wrong type is
rejected when the object is built) and offline: no cluster is asked for the runtime. The job refers
to the Trainer's ``torch-distributed`` ClusterTrainingRuntime, which starts ``num_nodes`` pods and
sets torchrun's ``PET_*`` variables; each pod runs ``torchrun ... -m cdanet.trainjob`` (:func:`main`), so the nodes train data-parallel with gloo (CPU) or NCCL
(GPU) and rank 0 writes the model directory to the shared volume.

:func:`train_job` returns the SDK model, :func:`to_dict` / :func:`to_yaml` the manifest,
:func:`run_train_job` creates it and waits for it to finish; :func:`training_jobs` builds both
steps of a run with consistent paths. :func:`launch_step` is what ``pipeline.py compile
--distributed N``'s training tasks run (components/train_distributed.py): stage the step's inputs on
the shared work volume, run the TrainJob, copy rank 0's model back into the task's output artifacts
(docs/performance.md, "Beyond one process"; docs/deploy.md).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

from cdanet import __version__

DEFAULT_IMAGE = f"ghcr.io/cdanet/cdanet:{__version__}"  # the same as components.DEFAULT_IMAGE
RUNTIME = "torch-distributed"  # the Trainer's default ClusterTrainingRuntime for PyTorch
#: The replicated job and container of the torch runtime that the patches address.
NODE = "node"
PATCH_MANAGER = "cdanet.trainjob"
STEPS: tuple[str, ...] = ("pretrain", "finetune")
GPU_RESOURCE = "nvidia.com/gpu"
GPU_SELECTOR = {"nvidia.com/gpu.present": "true"}  # the GPU overlay's scheduling (docs/deploy.md, "GPU")
#: The image's non-root user (docker/Dockerfile ``USER 10001:10001``): the cdanet namespace enforces
#: Pod Security "restricted", which refuses a node pod without this identity and lock-down.
RUN_AS_USER = 10001
#: The label every node pod of a TrainJob carries (through the runtime patch's pod metadata): the
#: NetworkPolicy ``trainjob-nodes`` (manifests/base/networkpolicy.yaml) lets the nodes of a job reach
#: one another (torchrun's rendezvous, gloo/NCCL on ephemeral ports) and nothing else but DNS.
NODE_POD_LABEL = ("app.kubernetes.io/component", "cdanet-trainjob-node")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class TrainJobSettings:
    """Where and on what the TrainJob runs.

    ``num_nodes`` pods, each running ``procs_per_node`` torchrun workers (with ``gpus_per_node`` GPUs:
    one worker per GPU, NCCL; without: gloo on CPU). ``data_pvc`` is mounted at ``data_mount`` on every
    node: the processed data, the config artifact and the model directories live there.
    """

    name: str
    namespace: str = "cdanet"
    image: str = DEFAULT_IMAGE
    num_nodes: int = 2
    procs_per_node: int = 1
    gpus_per_node: int = 0
    cpu: str = "4"
    memory: str = "16Gi"
    runtime: str = RUNTIME
    data_pvc: str = "cdanet-processed-data"
    data_mount: str = "/data"
    active_deadline_seconds: int = 6 * 3600
    labels: dict[str, str] = field(default_factory=lambda: {"app.kubernetes.io/part-of": "cdanet"})

    def validate(self) -> TrainJobSettings:
        errors = []
        if not _DNS1123.match(self.name):
            errors.append(f"name {self.name!r} is not a DNS-1123 label (lower-case letters, digits, '-', <= 63)")
        if not _DNS1123.match(self.namespace):
            errors.append(f"namespace {self.namespace!r} is not a DNS-1123 label")
        if self.num_nodes < 1:
            errors.append(f"num_nodes must be >= 1, got {self.num_nodes}")
        if self.procs_per_node < 1:
            errors.append(f"procs_per_node must be >= 1, got {self.procs_per_node}")
        if self.gpus_per_node < 0:
            errors.append(f"gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if self.gpus_per_node and self.procs_per_node != self.gpus_per_node:
            errors.append(f"with GPUs, procs_per_node ({self.procs_per_node}) must equal gpus_per_node "
                          f"({self.gpus_per_node}): one torchrun worker per GPU")
        if not self.image:
            errors.append("image must be set")
        if not self.data_mount.startswith("/"):
            errors.append(f"data_mount must be an absolute path, got {self.data_mount!r}")
        if errors:
            raise ValueError("TrainJobSettings: " + "; ".join(errors))
        return self


def step_command(step: str, config: str, processed: str, model_dir: str, pretrained: str | None = None) -> list[str]:
    """The command every node runs: torchrun (configured by the runtime's ``PET_*`` variables) on
    :func:`main` (data-parallel: :mod:`cdanet.training.distributed`)."""
    if step not in STEPS:
        raise ValueError(f"unknown training step {step!r}; expected one of {STEPS}")
    if (step == "finetune") != (pretrained is not None):
        raise ValueError("finetune needs pretrained= (the stage-1 model directory); pretrain takes none")
    cmd = ["torchrun", "-m", "cdanet.trainjob", step, "--config", config, "--processed", processed,
           "--model-dir", model_dir]
    return cmd + (["--pretrained", pretrained] if pretrained is not None else [])


def train_job(settings: TrainJobSettings, step: str, *, config: str, processed: str, model_dir: str,
              pretrained: str | None = None) -> Any:
    """The TrainJob of one training step (``pretrain`` / ``finetune``) as the SDK's ``TrainerV1alpha1TrainJob``.

    ``config``, ``processed``, ``model_dir``, ``pretrained``: paths inside the pods (under
    ``settings.data_mount``, the shared volume).
    """
    from kubeflow.trainer.backends.kubernetes.utils import get_resources_per_node
    from kubeflow.trainer.constants import constants as c
    from kubeflow_trainer_api import models as m

    s = settings.validate()
    for name, path in (("config", config), ("processed", processed), ("model_dir", model_dir),
                       ("pretrained", pretrained)):
        if path is not None and not path.startswith(s.data_mount.rstrip("/") + "/"):
            raise ValueError(f"{name} {path!r} must lie under the shared volume's mount {s.data_mount!r}")
    resources: dict[str, Any] = {"cpu": s.cpu, "memory": s.memory}
    if s.gpus_per_node:
        resources["gpu"] = str(s.gpus_per_node)  # a quantity string: an int would come out as 2.0
    env = [m.IoK8sApiCoreV1EnvVar(name="OMP_NUM_THREADS", value=str(max(1, _cpu_count(s.cpu) // s.procs_per_node))),
           m.IoK8sApiCoreV1EnvVar(name="HOME", value="/tmp")]
    trainer = m.TrainerV1alpha1Trainer(
        image=s.image,
        command=step_command(step, config, processed, model_dir, pretrained),
        numNodes=s.num_nodes,
        numProcPerNode=s.procs_per_node,
        resourcesPerNode=get_resources_per_node(resources),
        env=env,
    )
    pod = m.TrainerV1alpha1PodSpecPatch(
        volumes=[m.IoK8sApiCoreV1Volume(
            name="data", persistentVolumeClaim=m.IoK8sApiCoreV1PersistentVolumeClaimVolumeSource(claimName=s.data_pvc))],
        securityContext=m.IoK8sApiCoreV1PodSecurityContext(
            runAsNonRoot=True, runAsUser=RUN_AS_USER, runAsGroup=RUN_AS_USER,
            seccompProfile=m.IoK8sApiCoreV1SeccompProfile(type="RuntimeDefault")),
        containers=[m.TrainerV1alpha1ContainerPatch(
            name=NODE, volumeMounts=[m.IoK8sApiCoreV1VolumeMount(name="data", mountPath=s.data_mount)],
            securityContext=m.IoK8sApiCoreV1SecurityContext(
                allowPrivilegeEscalation=False, capabilities=m.IoK8sApiCoreV1Capabilities(drop=["ALL"])))],
    )
    if s.gpus_per_node:
        pod.node_selector = dict(GPU_SELECTOR)
        pod.tolerations = [m.IoK8sApiCoreV1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")]
    patch = m.TrainerV1alpha1RuntimePatch(
        manager=PATCH_MANAGER,
        trainingRuntimeSpec=m.TrainerV1alpha1TrainingRuntimeSpecPatch(
            template=m.TrainerV1alpha1JobSetTemplatePatch(spec=m.TrainerV1alpha1JobSetSpecPatch(replicatedJobs=[
                m.TrainerV1alpha1ReplicatedJobPatch(name=NODE, template=m.TrainerV1alpha1JobTemplatePatch(
                    spec=m.TrainerV1alpha1JobSpecPatch(template=m.TrainerV1alpha1PodTemplatePatch(
                        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(labels=dict([NODE_POD_LABEL])),
                        spec=pod)))),
            ]))),
    )
    return m.TrainerV1alpha1TrainJob(
        apiVersion=c.API_VERSION,
        kind=c.TRAINJOB_KIND,
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=s.name, namespace=s.namespace, labels={**s.labels, "cdanet/step": step}),
        spec=m.TrainerV1alpha1TrainJobSpec(
            runtimeRef=m.TrainerV1alpha1RuntimeRef(name=s.runtime, kind="ClusterTrainingRuntime",
                                                   apiGroup=c.GROUP),
            trainer=trainer,
            runtimePatches=[patch],
            activeDeadlineSeconds=s.active_deadline_seconds,
        ),
    )


def training_jobs(settings: TrainJobSettings, run_dir: str, processed: str) -> dict[str, Any]:
    """Both training steps of one pipeline run as TrainJobs: what ``compile --distributed N`` needs.

    ``run_dir`` (on the shared volume) holds the configure step's ``config.json``; ``pretrain``
    writes ``run_dir/stage1``, ``finetune`` reads it and writes ``run_dir/stage2``. The jobs are
    named ``<settings.name>-pretrain`` / ``-finetune``.
    """
    import dataclasses

    run_dir = run_dir.rstrip("/")
    config, stage1, stage2 = f"{run_dir}/config.json", f"{run_dir}/stage1", f"{run_dir}/stage2"
    return {
        "pretrain": train_job(dataclasses.replace(settings, name=f"{settings.name}-pretrain"), "pretrain",
                              config=config, processed=processed, model_dir=stage1),
        "finetune": train_job(dataclasses.replace(settings, name=f"{settings.name}-finetune"), "finetune",
                              config=config, processed=processed, model_dir=stage2, pretrained=stage1),
    }


def run_train_job(job: Any, api: Any = None, *, poll_s: float = 10.0, timeout_s: float | None = None,
                  sleep: Any = time.sleep) -> dict[str, Any]:
    """Create ``job`` on the cluster and wait for its ``Complete`` or ``Failed`` condition (what a
    pipeline step that launches training as a TrainJob does).

    ``api``: a ``kubernetes.client.CustomObjectsApi`` (default: the in-cluster config, else kubeconfig).
    A TrainJob of the same name left by an earlier attempt of the task (HTTP 409) is deleted and
    created afresh: its nodes wrote into the folder this attempt re-staged.
    Returns the finished object; raises ``RuntimeError`` (the condition's reason and message) when it
    failed, ``TimeoutError`` after ``timeout_s``.
    """
    from kubeflow.trainer.constants import constants as c

    if api is None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = client.CustomObjectsApi()
    body = to_dict(job)
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        api.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.TRAINJOB_PLURAL, body)
    except Exception as e:  # kubernetes.client.ApiException; not imported: api may be any stand-in
        if getattr(e, "status", None) != 409:
            raise
        logging.getLogger(__name__).warning("TrainJob %s/%s exists (an earlier attempt): recreating it", namespace, name)
        api.delete_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.TRAINJOB_PLURAL, name,
                                            propagation_policy="Foreground")
        _wait_gone(api, namespace, name, poll_s, sleep)
        api.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.TRAINJOB_PLURAL, body)
    waited = 0.0
    while True:
        obj = api.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.TRAINJOB_PLURAL, name)
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if cond.get("status") != "True":
                continue
            if cond.get("type") == c.TRAINJOB_COMPLETE:
                return obj
            if cond.get("type") == c.TRAINJOB_FAILED:
                raise RuntimeError(f"TrainJob {namespace}/{name} failed: {cond.get('reason', '')}: {cond.get('message', '')}")
        if timeout_s is not None and waited >= timeout_s:
            raise TimeoutError(f"TrainJob {namespace}/{name} did not finish within {timeout_s:g} s")
        sleep(poll_s)
        waited += poll_s


def _wait_gone(api: Any, namespace: str, name: str, poll_s: float, sleep: Any, tries: int = 60) -> None:
    from kubeflow.trainer.constants import constants as c

    for _ in range(tries):
        try:
            api.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.TRAINJOB_PLURAL, name)
        except Exception as e:
            if getattr(e, "status", None) == 404:
                return
            raise
        sleep(poll_s)
    raise TimeoutError(f"TrainJob {namespace}/{name} of an earlier attempt was not deleted after {tries} polls")


# ---- the pipeline's launcher tasks (compile --distributed N) ----------------------------------------------
#: Under the work volume: ``<root>/trainjobs/<run id>/<step>/`` holds what the nodes read and write.
STAGING_DIR = "trainjobs"


def job_name(run_id: str, step: str) -> str:
    """``cdanet-<run id>-<step>`` as a DNS-1123 label (the run id lower-cased, other characters '-',
    cut so that the whole fits 63 characters)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    return f"cdanet-{slug[:63 - len('cdanet-') - len(step) - 1].strip('-')}-{step}"


def in_cluster_namespace(default: str = "cdanet") -> str:
    """The namespace of the pod this runs in (its service account's), else ``default``."""
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(path) as fh:
            return fh.read().strip() or default
    except OSError:
        return default



def launcher_settings(*, image: str, num_nodes: int, gpus_per_node: int, cpu: str, memory: str,
                      work_pvc: str) -> TrainJobSettings:
    """The settings a launcher task (components/train_distributed.py) builds its TrainJob with: in the
    pod's own namespace, one torchrun worker per GPU (one per node on CPU), the work PVC as data volume."""
    return TrainJobSettings("cdanet", namespace=in_cluster_namespace(), image=image, num_nodes=num_nodes,
                            procs_per_node=max(1, gpus_per_node), gpus_per_node=gpus_per_node, cpu=cpu,
                            memory=memory, data_pvc=work_pvc)

def stage_inputs(step: str, staging: str, *, config_path: str, processed_dir: str,
                 pretrained_dir: str | None = None) -> dict[str, str]:
    """Copy a step's inputs into ``staging`` (a folder on the shared volume; emptied first, so a retried
    task never mixes attempts). Returns the paths the nodes use: config, processed, model_dir and, for
    finetune, pretrained."""
    import shutil

    if step not in STEPS:
        raise ValueError(f"unknown training step {step!r}; expected one of {STEPS}")
    if (step == "finetune") != (pretrained_dir is not None):
        raise ValueError("finetune needs pretrained_dir= (the stage-1 model directory); pretrain takes none")
    for name, path, is_dir in (("config", config_path, False), ("processed", processed_dir, True),
                               ("pretrained", pretrained_dir, True)):
        if path is not None and not (os.path.isdir(path) if is_dir else os.path.isfile(path)):
            raise FileNotFoundError(f"{step}: input {name} {path!r} is not a {'folder' if is_dir else 'file'}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    paths = {"config": os.path.join(staging, "config.json"), "processed": os.path.join(staging, "processed"),
             "model_dir": os.path.join(staging, "model")}
    shutil.copyfile(config_path, paths["config"])
    shutil.copytree(processed_dir, paths["processed"])
    if pretrained_dir is not None:
        paths["pretrained"] = os.path.join(staging, "pretrained")
        shutil.copytree(pretrained_dir, paths["pretrained"])
    return paths


def copy_back(node_model_dir: str, model_dir: str) -> None:
    """Rank 0's model directory into the task's output artifact: copied to a sibling, then renamed,
    so the artifact is either whole or absent."""
    import shutil

    if not os.path.isfile(os.path.join(node_model_dir, "model.json")):
        raise RuntimeError(f"the TrainJob finished but rank 0 wrote no model directory at {node_model_dir!r}")
    tmp = model_dir.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(node_model_dir, tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)


def step_metrics(model_dir: str, prefix: str) -> dict[str, float]:
    """The task's metrics from the copied model directory (``model.json["extra"]``): the same names as
    the single-process task's (:func:`cdanet.steps.pretrain`); a TrainJob never resumes (0)."""
    with open(os.path.join(model_dir, "model.json")) as fh:
        extra = json.load(fh)["extra"]
    return {f"{prefix}_best_epoch": float(extra["best_epoch"]), f"{prefix}_best_val_auc": float(extra["best_val_auc"]),
            f"{prefix}_epochs": float(extra["epochs"]), f"{prefix}_resumed_from_epoch": 0.0}


def launch_step(step: str, settings: TrainJobSettings, *, run_id: str, work_root: str, config_path: str,
                processed_dir: str, model_dir: str, pretrained_dir: str | None = None,
                curves_path: str | None = None, api: Any = None, poll_s: float = 30.0,
                timeout_s: float | None = None, sleep: Any = time.sleep) -> dict[str, float]:
    """One training task of ``compile --distributed N``: stage, run the TrainJob, copy back.

    ``work_root``: the shared work volume as mounted in this pod and on the nodes (the same path:
    ``settings.data_mount`` is set to it); the step's folder is ``<work_root>/trainjobs/<run_id>/<step>``,
    removed (with the run's folder once empty) after the model is copied back. ``model_dir`` (and, for finetune, ``curves_path``): the
    task's output artifacts, written as the single-process task writes them. Returns its metrics.
    """
    import dataclasses

    from cdanet.steps import _drop_checkpoints, checkpoint_dir

    if not work_root.startswith("/"):
        raise ValueError(f"work_root must be an absolute path (the work volume's mount), got {work_root!r}")
    staging = checkpoint_dir(os.path.join(work_root, STAGING_DIR), run_id, step)  # refuses a bad run id
    assert staging is not None
    paths = stage_inputs(step, staging, config_path=config_path, processed_dir=processed_dir,
                         pretrained_dir=pretrained_dir)
    job = train_job(dataclasses.replace(settings, name=job_name(run_id, step), data_mount=work_root.rstrip("/")),
                    step, **paths)
    run_train_job(job, api, poll_s=poll_s, timeout_s=timeout_s, sleep=sleep)
    copy_back(paths["model_dir"], model_dir)
    _drop_checkpoints(staging)  # the step's folder, and the run's once empty
    metrics = step_metrics(model_dir, "stage1" if step == "pretrain" else "stage2")
    if step == "finetune" and curves_path is not None:
        from cdanet.figures import write_curves_html
        from cdanet.steps import CURVES_PNG, PipelineConfig, _read_history

        target = PipelineConfig.load(config_path).experiment.target_domain
        write_curves_html({"stage 1 (translation)": _read_history(pretrained_dir or ""),
                           "stage 2 (augmentation)": _read_history(model_dir)},
                          target, curves_path, os.path.join(model_dir, CURVES_PNG))
    return metrics


def _cpu_count(cpu: str) -> int:
    """Whole cores of a Kubernetes CPU quantity (``"4"``, ``"500m"`` -> 0)."""
    return int(cpu[:-1]) // 1000 if cpu.endswith("m") else int(float(cpu))


def to_dict(job: Any) -> dict[str, Any]:
    """The manifest (camelCase keys, no nulls), as ``kubectl apply`` takes it."""
    return job.to_dict()


def to_yaml(job: Any) -> str:
    return yaml.safe_dump(to_dict(job), sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    """What every node of the TrainJob runs: a pipeline training step under torchrun.

    ``torchrun ... -m cdanet.trainjob pretrain --config C --processed P --model-dir M``
    ``torchrun ... -m cdanet.trainjob finetune --config C --processed P --pretrained D --model-dir M``

    ``C`` is the configure step's frozen config artifact; rank 0 writes the model directory.
    """
    import argparse

    from cdanet.config import ExperimentConfig
    from cdanet.training import distributed, experiment

    parser = argparse.ArgumentParser(prog="python -m cdanet.trainjob", description=main.__doc__)
    parser.add_argument("step", choices=("pretrain", "finetune"))
    parser.add_argument("--config", required=True, metavar="FILE", help="the configure step's config artifact")
    parser.add_argument("--processed", required=True, metavar="DIR")
    parser.add_argument("--pretrained", metavar="DIR", default=None, help="finetune: the stage-1 model directory")
    parser.add_argument("--model-dir", required=True, metavar="DIR", help="where rank 0 writes the model directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The configure step's artifact (cdanet.steps.PipelineConfig, a layer above this one): its "experiment".
    with open(args.config) as fh:
        cfg = ExperimentConfig.from_dict(json.load(fh)["experiment"]).validate()
    distributed.init_from_env(cfg.train.device)
    try:
        with distributed.rank_output(args.model_dir) as out:
            if args.step == "pretrain":
                result = experiment.pretrain(cfg, args.processed, out)
            else:
                result = experiment.finetune(cfg, args.processed, args.pretrained, out)
    finally:
        distributed.shutdown()
    logging.getLogger(__name__).info("%s: best validation AUC %.4f at epoch %g", args.step, result.best_val_auc, result.best_epoch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
