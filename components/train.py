"""The two training stages of CDAnet: translation pretraining, then augmentation fine-tuning."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components._image import COMPONENT_KWARGS


@dsl.component(**COMPONENT_KWARGS)
def pretrain(
    config: Input[Artifact],
    processed: Input[Dataset],
    pretrained: Output[Model],
    metrics: Output[Metrics],
    checkpoint_root: str = "",
    run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Stage 1 (Eq. 1-9): the translation network on both domains. Epoch checkpoints go to
    ``<checkpoint_root>/<run_id>/pretrain`` (when ``checkpoint_root`` is set), so a retry resumes.
    With a tracking URI (or ``MLFLOW_TRACKING_URI``), per-validation metrics go live to the run's
    MLflow run (``cdanet.tracking``)."""
    from cdanet import steps

    ckpt = steps.checkpoint_dir(checkpoint_root, run_id, "pretrain")
    for name, value in steps.pretrain(config.path, processed.path, pretrained.path, checkpoint_dir=ckpt,
                                      tracking_uri=mlflow_tracking_uri, pipeline_run_id=run_id).items():
        metrics.log_metric(name, value)


@dsl.component(**COMPONENT_KWARGS)
def finetune(
    config: Input[Artifact],
    processed: Input[Dataset],
    pretrained: Input[Model],
    model: Output[Model],
    metrics: Output[Metrics],
    curves: Output[HTML],
    checkpoint_root: str = "",
    run_id: str = "",
    mlflow_tracking_uri: str = "",
):
    """Stage 2 (Eq. 10-11): the augmentation network on the target domain; training curves as an HTML plot.
    Epoch checkpoints go to ``<checkpoint_root>/<run_id>/finetune``, so a retry resumes; MLflow as in pretrain."""
    from cdanet import steps

    ckpt = steps.checkpoint_dir(checkpoint_root, run_id, "finetune")
    result = steps.finetune(config.path, processed.path, pretrained.path, model.path, curves.path, checkpoint_dir=ckpt,
                            tracking_uri=mlflow_tracking_uri, pipeline_run_id=run_id)
    for name, value in result.items():
        metrics.log_metric(name, value)
