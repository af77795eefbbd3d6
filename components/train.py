"""The two training stages of CDAnet: translation pretraining, then augmentation fine-tuning."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components._image import COMPONENT_KWARGS


@dsl.component(**COMPONENT_KWARGS)
def pretrain(
    config: Input[Artifact], processed: Input[Dataset], pretrained: Output[Model], metrics: Output[Metrics]
):
    """Stage 1 (Eq. 1-9): the translation network on both domains."""
    from cdanet import steps

    for name, value in steps.pretrain(config.path, processed.path, pretrained.path).items():
        metrics.log_metric(name, value)


@dsl.component(**COMPONENT_KWARGS)
def finetune(
    config: Input[Artifact],
    processed: Input[Dataset],
    pretrained: Input[Model],
    model: Output[Model],
    metrics: Output[Metrics],
    curves: Output[HTML],
):
    """Stage 2 (Eq. 10-11): the augmentation network on the target domain; training curves as an HTML plot."""
    from cdanet import steps

    result = steps.finetune(config.path, processed.path, pretrained.path, model.path, curves.path)
    for name, value in result.items():
        metrics.log_metric(name, value)
