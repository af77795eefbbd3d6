"""Apache Beam preprocessing: raw files -> schema.json + parquet splits per domain."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Output

from components._image import COMPONENT_KWARGS


@dsl.component(**COMPONENT_KWARGS)
def preprocess(
    config: Input[Artifact],
    raw_uri: str,
    glove_uri: str,
    data_until: str,
    window_days: int,
    beam_args: list,
    processed: Output[Dataset],
    stats: Output[Markdown],
    metrics: Output[Metrics],
):
    """Run the Beam job; ``data_until`` is the run's scheduled time (KFP placeholder) for daily retraining."""
    from cdanet import steps

    result = steps.preprocess(config.path, raw_uri, glove_uri, processed.path, data_until, window_days, beam_args)
    with open(stats.path, "w") as fh:
        fh.write(result.markdown)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
