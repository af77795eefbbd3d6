"""The two training tasks of ``pipeline.py compile --distributed N``: launchers of a Kubeflow Trainer
TrainJob on N nodes (:func:`cdanet.trainjob.launch_step`). Same inputs and outputs as
components/train.py, so evaluate, gate and register are unchanged; the task pod mounts the work PVC
at ``work_root``, stages the step's inputs there, and copies rank 0's model back."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components._image import COMPONENT_KWARGS


@dsl.component(**COMPONENT_KWARGS)
def pretrain(
    config: Input[Artifact],
    processed: Input[Dataset],
    pretrained: Output[Model],
    metrics: Output[Metrics],
    run_id: str,
    num_nodes: int,
    work_pvc: str,
    work_root: str,
    image: str,
    gpus_per_node: int = 0,
    cpu: str = "4",
    memory: str = "16Gi",
):
    """Stage 1 (Eq. 1-9) as a TrainJob of ``num_nodes`` nodes (in-cluster Kubernetes config)."""
    from cdanet import trainjob

    settings = trainjob.launcher_settings(image=image, num_nodes=num_nodes, gpus_per_node=gpus_per_node, cpu=cpu,
                                          memory=memory, work_pvc=work_pvc)
    for name, value in trainjob.launch_step(
        "pretrain", settings, run_id=run_id, work_root=work_root, config_path=config.path,
        processed_dir=processed.path, model_dir=pretrained.path,
    ).items():
        metrics.log_metric(name, value)


@dsl.component(**COMPONENT_KWARGS)
def finetune(
    config: Input[Artifact],
    processed: Input[Dataset],
    pretrained: Input[Model],
    model: Output[Model],
    metrics: Output[Metrics],
    curves: Output[HTML],
    run_id: str,
    num_nodes: int,
    work_pvc: str,
    work_root: str,
    image: str,
    gpus_per_node: int = 0,
    cpu: str = "4",
    memory: str = "16Gi",
):
    """Stage 2 (Eq. 10-11) as a TrainJob of ``num_nodes`` nodes; training curves as an HTML plot."""
    from cdanet import trainjob

    settings = trainjob.launcher_settings(image=image, num_nodes=num_nodes, gpus_per_node=gpus_per_node, cpu=cpu,
                                          memory=memory, work_pvc=work_pvc)
    for name, value in trainjob.launch_step(
        "finetune", settings, run_id=run_id, work_root=work_root, config_path=config.path,
        processed_dir=processed.path, pretrained_dir=pretrained.path, model_dir=model.path, curves_path=curves.path,
    ).items():
        metrics.log_metric(name, value)
