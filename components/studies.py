"""The experiments pipeline's steps (paper Table 2, Table 5, Fig. 5, Fig. 6, Table 4).

Thin adapters: unwrap artifacts into paths, call :mod:`cdanet.studies.pipeline_steps`, log what it
returns. ``plan_runs`` returns a plain list (the ParallelFor items); ``train_run`` returns its run
record as a JSON string so ``dsl.Collected`` can hand all of them to ``aggregate_studies``.
"""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Output

from components._image import COMPONENT_KWARGS


@dsl.component(**COMPONENT_KWARGS)
def plan_runs(spec: dict, tiny: bool, studies: list) -> list:
    """The distinct training runs of ``studies`` (JSON run specs: run id, label, resolved config)."""
    from cdanet.studies import pipeline_steps

    runs = pipeline_steps.plan_runs(spec, tiny, studies)
    print(f"{len(runs)} distinct runs for {studies}")
    return runs


@dsl.component(**COMPONENT_KWARGS)
def train_run(processed: Input[Dataset], run: str) -> str:
    """Train and test one run; a failure comes back as a failed record (the tables mark it).

    No Metrics output on purpose: a task with one never hits the KFP cache, and caching is what
    makes re-running a study with a few new runs cheap. The record (with the AUCs) is the output.
    """
    from cdanet.studies import pipeline_steps

    return pipeline_steps.train_run(run, processed.path)


@dsl.component(**COMPONENT_KWARGS)
def aggregate_studies(
    processed: Input[Dataset],
    spec: dict,
    tiny: bool,
    studies: list,
    records: list,
    oracle_uri: str,
    results: Output[Dataset],
    tables: Output[Markdown],
    figures: Output[HTML],
    metrics: Output[Metrics],
):
    """Every run's row (CSV), the paper-style tables (Markdown) and figures (HTML with embedded PNGs)."""
    from cdanet.studies import pipeline_steps

    values = pipeline_steps.aggregate(spec, tiny, studies, records, processed.path, oracle_uri,
                                      results.path, tables.path, figures.path)
    for name, value in values.items():
        metrics.log_metric(name, value)


@dsl.component(**COMPONENT_KWARGS)
def translated_semantics(
    processed: Input[Dataset], spec: dict, tiny: bool, table: Output[Markdown], neighbours: Output[Dataset]
):
    """Table 4: nearest source-domain items of translated target latents (trains a translation network)."""
    from cdanet.studies import pipeline_steps

    rows = pipeline_steps.semantics(spec, tiny, processed.path, table.path, neighbours.path)
    print(f"Table 4: {rows} neighbour rows")
