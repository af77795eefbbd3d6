"""The experiments pipeline (Kubeflow Pipelines v2): the paper's studies fanned out over runs.

    processed data (importer) -> plan_runs -> ParallelFor(run specs) { train_run }
                                        -> aggregate_studies(Collected(records)) -> CSV + Markdown + HTML
                              -> [table4] translated_semantics -> Markdown + CSV

The input is an already *processed* dataset (``processed_uri``: the ``processed`` artifact URI of a
training-pipeline run, or any folder laid out as ``<root>/<domain>/{schema.json, *.parquet}``), so
one preprocessing serves every study and a sweep never re-runs Beam. ``create_experiments_pipeline``
is the factory (compile-time settings: image, GPU, parallelism); the studies, the spec and the
tiny switch are run-time parameters. The same plan/record/report code backs
``python -m cdanet.studies``, so both paths give identical tables for identical runs.

Verbs (``python experiments_pipeline.py --help``): ``run`` (locally through ``kfp.local``),
``compile``, ``submit``.
"""

import argparse
import glob
import os
import sys
from collections.abc import Sequence

from kfp import dsl

from components._image import DEFAULT_IMAGE
from components.studies import aggregate_studies, plan_runs, train_run, translated_semantics

PIPELINE_NAME = "cdanet-experiments"
DEFAULT_STUDIES = ["table2", "table5", "fig5", "fig6"]


def create_experiments_pipeline(
    image: str = DEFAULT_IMAGE,
    use_gpu: bool = False,
    accelerator_type: str = "nvidia.com/gpu",
    parallelism: int = 4,
    data_pvc: str | None = None,
    data_mount_path: str = "/data",
    training_retries: int = 1,
):
    """Build the experiments pipeline.

    Args:
        image: the project's image for every task.
        use_gpu: request one ``accelerator_type`` per training task (each ParallelFor iteration).
        parallelism: how many runs train at the same time (the ParallelFor's parallelism).
        data_pvc: mount this PVC at ``data_mount_path`` on every task (e.g. for ``oracle_uri``).
        training_retries: retry policy of the training tasks (preemptible nodes).
    """
    if parallelism < 1:
        raise ValueError(f"parallelism must be >= 1, got {parallelism}")

    def _common(task: dsl.PipelineTask, cpu: str, memory: str) -> dsl.PipelineTask:
        task.set_container_image(image)
        task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
        if data_pvc:
            from kfp import kubernetes

            kubernetes.mount_pvc(task, pvc_name=data_pvc, mount_path=data_mount_path)
        return task

    def _training(task: dsl.PipelineTask) -> dsl.PipelineTask:
        task.set_retry(num_retries=training_retries, backoff_duration="60s", backoff_factor=2.0)
        if use_gpu:
            task.set_accelerator_type(accelerator_type).set_accelerator_limit(1)
        return task

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="CDAnet paper studies: Table 2 (models), Table 5 (ablations), Fig. 5 (sparsity), "
        "Fig. 6 (sensitivity) as parallel training runs, and Table 4 (semantics of translated features).",
    )
    def cdanet_experiments(
        processed_uri: str,
        studies: list = DEFAULT_STUDIES,  # noqa: B006 - KFP needs a literal default
        table4: bool = True,
        spec: dict = {},  # noqa: B006
        tiny: bool = False,
        oracle_uri: str = "",
    ):
        """Run-time parameters. ``studies``: any of table2, table5, fig5, fig6; ``spec``: a study spec
        (docs/studies.md) merged over the defaults (or over the tiny variant when ``tiny``);
        ``oracle_uri``: the simulator's output folder as seen by the tasks, to add oracle AUCs."""
        data = dsl.importer(artifact_uri=processed_uri, artifact_class=dsl.Dataset, reimport=False)
        data.set_display_name("processed-data")
        plan = _common(plan_runs(spec=spec, tiny=tiny, studies=studies), "500m", "1Gi")
        with dsl.ParallelFor(plan.output, parallelism=parallelism, name="runs") as run:
            trained = _training(_common(train_run(processed=data.output, run=run), "4", "16Gi"))
        _common(
            aggregate_studies(
                processed=data.output, spec=spec, tiny=tiny, studies=studies,
                records=dsl.Collected(trained.output), oracle_uri=oracle_uri,
            ),
            "1", "4Gi",
        ).set_caching_options(False)  # cheap, and its Metrics output never hits the cache anyway
        with dsl.If(table4 == True, name="table4"):  # noqa: E712 - KFP condition syntax
            _training(_common(translated_semantics(processed=data.output, spec=spec, tiny=tiny), "4", "16Gi"))

    return cdanet_experiments


#: The pipeline with default compile-time settings, for ``kfp dsl compile --py experiments_pipeline.py``.
cdanet_experiments = create_experiments_pipeline()


def compile_experiments_pipeline(output: str, **factory_kwargs) -> str:
    from kfp import compiler

    compiler.Compiler().compile(create_experiments_pipeline(**factory_kwargs), package_path=output)
    return output


def run_local(processed: str, workdir: str, arguments: dict, out=print) -> list[str]:
    """Run the pipeline through ``kfp.local`` (SubprocessRunner); return the output files it wrote.

    Raises ``RuntimeError`` (from kfp) naming the failed task when a task fails.
    """
    import warnings

    from kfp import local

    processed = os.path.abspath(processed)
    if not os.path.isdir(processed):
        raise FileNotFoundError(f"--processed {processed} is not a folder of processed data")
    pipeline_root = os.path.abspath(os.path.join(workdir, "pipeline_root"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True)
    before = set(glob.glob(os.path.join(pipeline_root, f"{PIPELINE_NAME}-*")))
    with warnings.catch_warnings():
        # Locally the tasks run in this interpreter, which has the image's packages.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        create_experiments_pipeline()(processed_uri=processed, **arguments)
    (run_dir,) = sorted(set(glob.glob(os.path.join(pipeline_root, f"{PIPELINE_NAME}-*"))) - before)
    outputs = sorted(
        p for task in ("aggregate-studies", "translated-semantics")
        for p in glob.glob(os.path.join(run_dir, task, "*")) if os.path.isfile(p) and not p.endswith(".json")
    )
    for p in outputs:
        out(p)
    return outputs


def main(argv: Sequence[str] | None = None) -> int:
    from cdanet.orchestration import parse_params

    parser = argparse.ArgumentParser(prog="experiments_pipeline.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    run = sub.add_parser("run", help="run the experiments pipeline locally through kfp.local")
    run.add_argument("--processed", required=True, help="processed data folder")
    run.add_argument("--workdir", default="runs/experiments", help="pipeline root for the local run")
    run.add_argument("params", nargs="*", metavar="key=value",
                     help='pipeline parameters, e.g. tiny=true studies=\'["table2"]\' table4=false')
    comp = sub.add_parser("compile", help="compile the pipeline to YAML")
    comp.add_argument("--output", default="cdanet_experiments.yaml")
    comp.add_argument("--image", default=DEFAULT_IMAGE)
    comp.add_argument("--gpu", action="store_true", help="request one GPU per training task")
    comp.add_argument("--parallelism", type=int, default=4, help="runs trained at the same time")
    submit = sub.add_parser("submit", help="create a run on a Kubeflow Pipelines endpoint")
    submit.add_argument("--host", required=True)
    submit.add_argument("--experiment", default="cdanet-experiments")
    submit.add_argument("--run-name", default=None)
    submit.add_argument("--image", default=DEFAULT_IMAGE)
    submit.add_argument("--gpu", action="store_true")
    submit.add_argument("--parallelism", type=int, default=4)
    submit.add_argument("params", nargs="*", metavar="key=value", help="e.g. processed_uri=s3://bucket/processed")
    args = parser.parse_args(argv)

    if args.verb == "compile":
        print(compile_experiments_pipeline(args.output, image=args.image, use_gpu=args.gpu,
                                           parallelism=args.parallelism))
        return 0
    params = parse_params(args.params)
    if args.verb == "run":
        try:
            run_local(args.processed, args.workdir, params)
        except (RuntimeError, FileNotFoundError) as e:
            print(f"experiments pipeline FAILED: {e}", file=sys.stderr)
            return 1
        return 0
    from cdanet import orchestration

    pipeline_func = create_experiments_pipeline(image=args.image, use_gpu=args.gpu, parallelism=args.parallelism)
    return orchestration.submit(pipeline_func, host=args.host, experiment=args.experiment,
                                run_name=args.run_name, params=params)


if __name__ == "__main__":
    sys.exit(main())
