"""The CDAnet training pipeline (Kubeflow Pipelines v2) and its command line.

    configure -> preprocess (Beam) -> validate (GX) -> pretrain (translation network)
      -> finetune (augmentation network) -> evaluate -> gate -> register (promote | record rejection)
                                  validate -> baseline (id-only logistic regression) -> gate

``create_pipeline(...)`` is the single factory (TFX style): its arguments are compile-time settings
(image, GPU request, volumes, secrets); the returned ``@dsl.pipeline`` has the typed run-time
parameters. Nothing here reads the environment at import time.

Verbs (``python pipeline.py --help``):

* ``run``       the whole pipeline on this machine through ``kfp.local`` (SubprocessRunner), with real
                Beam, GX, training and a SQLite-backed MLflow registry; simulates raw data when none is given
* ``compile``   write the pipeline YAML (``kfp dsl compile --py pipeline.py`` works too)
* ``submit``    create a run on a Kubeflow Pipelines endpoint
* ``schedule``  create a recurring (daily) run: max_concurrency 1, no catch-up
* ``deploy``    render ``manifests/`` and apply them to the current kube context
"""


import argparse
import sys
from collections.abc import Sequence

from kfp import dsl

import components as C
from cdanet.params import UNSET_FLOAT, UNSET_INT
from components import DEFAULT_IMAGE
from components import train_distributed as CD

PIPELINE_NAME = "cdanet-training"
GPU_TASKS = ("pretrain", "finetune")
#: Kubernetes objects the cluster side provides (see manifests/ and docs/deploy.md).
DATA_PVC = "cdanet-raw-data"
WORK_PVC = "cdanet-processed-data"
SERVICE_ACCOUNT = "cdanet-pipeline-runner"
MLFLOW_SECRET = "mlflow-tracking"
#: Keys of the MLflow Secret that become environment variables of the tasks that log to MLflow
#: (validate, pretrain, finetune, evaluate, gate, register; manifests/secrets/mlflow-tracking.example.env).
#: The URI is required; the others are optional so that a server without authentication needs only the URI.
MLFLOW_SECRET_REQUIRED = ("MLFLOW_TRACKING_URI",)
MLFLOW_SECRET_OPTIONAL = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                          "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH")
#: The image's non-root user (docker/Dockerfile ``USER 10001:10001``); Pod Security "restricted".
RUN_AS_USER = 10001
#: Tasks that read the raw data (and so mount the raw-data PVC); no other task mounts it.
RAW_READERS = ("configure", "preprocess")
#: Where training checkpoints live in a task pod: ``<root>/<pipeline run id>/<task>``.
WORK_MOUNT_PATH = "/data/work"
#: (cpu request, cpu limit, memory) per task: requests and limits on every task.
RESOURCES: dict[str, tuple[str, str, str]] = {
    "configure": ("500m", "1", "1Gi"),
    "preprocess": ("4", "4", "8Gi"),
    "validate": ("1", "2", "4Gi"),
    "pretrain": ("4", "4", "16Gi"),
    "finetune": ("4", "4", "16Gi"),
    "baseline": ("2", "2", "8Gi"),
    "evaluate": ("2", "2", "8Gi"),
    "gate": ("2", "2", "8Gi"),
    "register": ("1", "1", "2Gi"),
}
#: With ``--distributed N`` the training tasks only launch a TrainJob and copy files: their own pod is
#: small; each of the N nodes gets the training task's resources (:data:`RESOURCES`).
LAUNCHER_RESOURCES = ("500m", "1", "2Gi")


def create_pipeline(
    image: str = DEFAULT_IMAGE,
    use_gpu: bool = False,
    accelerator_type: str = "nvidia.com/gpu",
    data_pvc: str | None = None,
    data_mount_path: str = "/data/raw",
    mlflow_secret: str | None = None,
    training_retries: int = 2,
    scheduled: bool = False,
    work_pvc: str | None = None,
    checkpoint_root: str = "",
    distributed: int = 1,
):
    """Build the pipeline.

    Args:
        image: the project's image (docker/Dockerfile or Dockerfile.cuda) used by every task; a
            digest reference (``repo@sha256:...``) pins it.
        use_gpu: request one ``accelerator_type`` on the two training tasks.
        data_pvc: mount this PVC at ``data_mount_path`` on the tasks that read the raw data
            (:data:`RAW_READERS`: configure and preprocess; raw data and GloVe live there); without it,
            inputs are read from object-storage URIs through Beam's filesystems.
        mlflow_secret: a Kubernetes Secret whose keys (:data:`MLFLOW_SECRET_REQUIRED`, and
            :data:`MLFLOW_SECRET_OPTIONAL` when present) become environment variables of the tasks
            that log to MLflow (validate, pretrain, finetune, evaluate, gate, register;
            :mod:`cdanet.tracking`); credentials never live in code.
        training_retries: retry policy of the training tasks (preemptible GPU nodes).
        scheduled: for recurring runs: the data window ends at the run's scheduled time (KFP
            placeholder), so a rerun of the same day trains on the same data. Otherwise the window
            ends at the ``data_until`` parameter (ISO-8601; empty = all data).
        work_pvc: mount this PVC at :data:`WORK_MOUNT_PATH` on the training tasks; their epoch
            checkpoints go to ``<WORK_MOUNT_PATH>/checkpoints/<run id>/<task>`` there, so a retried
            task (a new pod) resumes at its next epoch.
        checkpoint_root: the checkpoint root without a PVC (a local run passes a folder of its
            workdir); empty and no ``work_pvc``: no checkpoints, a retry starts from epoch 1.
        distributed: N >= 2: the pretrain and finetune tasks become launchers of a Kubeflow Trainer
            TrainJob on N nodes (components/train_distributed.py, :func:`cdanet.trainjob.launch_step`):
            they stage their inputs on ``work_pvc`` under ``<WORK_MOUNT_PATH>/trainjobs/<run id>/<task>``,
            run the TrainJob (one node per pod, each with the task's :data:`RESOURCES` and, with
            ``use_gpu``, one GPU) and copy rank 0's model back into the same output artifacts. Needs
            ``work_pvc``. 1: one process in the task's pod (the default pipeline, unchanged).
    """
    from cdanet.orchestration import ParameterError

    if distributed < 1:
        raise ParameterError(f"--distributed {distributed}: expected a number of nodes >= 1 (1 = one process)")
    if distributed > 1 and not work_pvc:
        raise ParameterError(f"--distributed {distributed} needs --work-pvc: the TrainJob's nodes read their "
                             "inputs from and write the model to that shared volume")
    if work_pvc:
        checkpoint_root = f"{WORK_MOUNT_PATH}/checkpoints"

    def _common(task: dsl.PipelineTask, step: str, cache: bool = True) -> dsl.PipelineTask:
        cpu, cpu_limit, memory = (LAUNCHER_RESOURCES if distributed > 1 and step in GPU_TASKS
                                  else RESOURCES[step])
        task.set_container_image(image)
        task.set_cpu_request(cpu).set_cpu_limit(cpu_limit).set_memory_request(memory).set_memory_limit(memory)
        task.set_caching_options(cache)
        from kfp import kubernetes

        # Pod Security "restricted": KFP's backend adds allowPrivilegeEscalation=false, drop ALL
        # capabilities and the RuntimeDefault seccomp profile to every task container itself (see
        # kfp.kubernetes.set_security_context); the identity is ours to set.
        kubernetes.set_security_context(task, run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER,
                                        run_as_non_root=True)
        if data_pvc and step in RAW_READERS:
            kubernetes.mount_pvc(task, pvc_name=data_pvc, mount_path=data_mount_path)
        return task

    def _mlflow(task: dsl.PipelineTask) -> dsl.PipelineTask:
        if mlflow_secret:
            from kfp import kubernetes

            kubernetes.use_secret_as_env(task, secret_name=mlflow_secret,
                                         secret_key_to_env={k: k for k in MLFLOW_SECRET_REQUIRED})
            kubernetes.use_secret_as_env(task, secret_name=mlflow_secret, optional=True,
                                         secret_key_to_env={k: k for k in MLFLOW_SECRET_OPTIONAL})
        return task

    def _training(task: dsl.PipelineTask) -> dsl.PipelineTask:
        task.set_retry(num_retries=training_retries, backoff_duration="60s", backoff_factor=2.0)
        from kfp import kubernetes

        if work_pvc:
            kubernetes.mount_pvc(task, pvc_name=work_pvc, mount_path=WORK_MOUNT_PATH)
        if use_gpu and distributed == 1:  # distributed: the TrainJob's nodes get the GPUs, not the launcher
            task.set_accelerator_type(accelerator_type).set_accelerator_limit(1)
            # Land on GPU nodes and tolerate their taint (manifests/overlays/gpu checks the same settings).
            kubernetes.add_node_selector(task, label_key="nvidia.com/gpu.present", label_value="true")
            kubernetes.add_toleration(task, key=accelerator_type, operator="Exists", effect="NoSchedule")
        return task

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="CDAnet: Beam preprocessing, GX validation, translation pretraining, augmentation "
        "fine-tuning, an in-run id-only logistic-regression baseline, AUC/calibration gate and MLflow promotion.",
    )
    def cdanet_pipeline(
        raw_uri: str,
        glove_uri: str = "",
        dataset: str = "amazon",
        target_domain: str = "",
        profile: str = "paper",
        alpha: float = UNSET_FLOAT,
        beta: float = UNSET_FLOAT,
        num_experts: int = UNSET_INT,
        latent_dim: int = UNSET_INT,
        max_epochs: int = UNSET_INT,
        batch_size: int = UNSET_INT,
        learning_rate: float = UNSET_FLOAT,
        seed: int = UNSET_INT,
        extra_overrides: list = [],  # noqa: B006 - KFP needs a literal default
        tuned_config_uri: str = "",
        min_auc: float = 0.6,
        tolerance: float = 0.005,
        baseline_margin: float = 0.005,
        model_name: str = "",
        mlflow_tracking_uri: str = "",
        data_until: str = "",
        window_days: int = 0,
        beam_args: list = [],  # noqa: B006
    ):
        """Run-time parameters. ``target_domain`` empty = the dataset's sparse domain (movie / ad);
        ``profile`` = paper, strict or tiny (``cdanet.config.PROFILES``); the hyperparameters ``alpha``
        ... ``seed`` at their default ``-1`` are unset: the profile's value for the dataset (or the tuned
        config's), see ``cdanet.params``; ``extra_overrides`` = ``section.key=value`` settings applied
        last; ``baseline_margin`` = how much
        higher than the in-run baseline's the candidate's test AUC must be (negative: may trail it);
        ``model_name`` empty = ``cdanet-<dataset>-<target>``;
        ``mlflow_tracking_uri`` empty = the task environment's ``MLFLOW_TRACKING_URI`` (from the
        Secret in a cluster); ``tuned_config_uri`` = a ``best_config.json`` of ``cdanet tune`` whose
        hyperparameters replace the profile's (hyperparameters set here still win; see
        ``cdanet.steps.configure``)."""
        cfg = _common(
            C.configure(
                dataset=dataset, target_domain=target_domain, raw_uri=raw_uri, glove_uri=glove_uri,
                profile=profile, alpha=alpha, beta=beta, num_experts=num_experts, latent_dim=latent_dim,
                max_epochs=max_epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                extra_overrides=extra_overrides, min_auc=min_auc, tolerance=tolerance,
                tuned_config_uri=tuned_config_uri,
                baseline_margin=baseline_margin, model_name=model_name,
            ),
            "configure",
        )
        # model_name empty = cdanet-<dataset>-<target>, as local runs (resolved once, by configure).
        registered_name = cfg.outputs["Output"]
        pre = _common(
            C.preprocess(
                config=cfg.outputs["config"], raw_uri=raw_uri, glove_uri=glove_uri,
                # The scheduled time pins a recurring run's data window, so reruns of a day are reproducible.
                data_until=dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER if scheduled else data_until,
                window_days=window_days,
                beam_args=beam_args,
            ),
            "preprocess",
        )
        # The MLflow run of this pipeline run starts here (cdanet.tracking): validate, training and
        # evaluate log into it when they have a tracking URI (the parameter, or the Secret's env).
        val = _mlflow(_common(
            C.validate(config=cfg.outputs["config"], processed=pre.outputs["processed"],
                       mlflow_tracking_uri=mlflow_tracking_uri, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER), "validate"
        ))
        if distributed > 1:
            # Launchers of a TrainJob on `distributed` nodes; same outputs, so nothing downstream changes.
            # (The nodes do not log per-epoch history to MLflow; evaluate and register still do.)
            node_cpu, _, node_memory = RESOURCES["pretrain"]
            launch = dict(run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, num_nodes=distributed, work_pvc=work_pvc,
                          work_root=WORK_MOUNT_PATH, image=image, gpus_per_node=1 if use_gpu else 0,
                          cpu=node_cpu, memory=node_memory)
            stage1 = _training(_common(
                CD.pretrain(config=cfg.outputs["config"], processed=pre.outputs["processed"], **launch), "pretrain",
            ).after(val)).set_display_name(f"pretrain (TrainJob, {distributed} nodes)")
            stage2 = _training(_common(
                CD.finetune(config=cfg.outputs["config"], processed=pre.outputs["processed"],
                            pretrained=stage1.outputs["pretrained"], **launch), "finetune",
            )).set_display_name(f"finetune (TrainJob, {distributed} nodes)")
        else:
            # A retry of a training task has the run's id: it finds the checkpoints of the attempt before it.
            stage1 = _mlflow(_training(_common(
                C.pretrain(config=cfg.outputs["config"], processed=pre.outputs["processed"],
                           checkpoint_root=checkpoint_root, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                           mlflow_tracking_uri=mlflow_tracking_uri),
                "pretrain",
            ).after(val)))
            stage2 = _mlflow(_training(_common(
                C.finetune(
                    config=cfg.outputs["config"], processed=pre.outputs["processed"],
                    pretrained=stage1.outputs["pretrained"],
                    checkpoint_root=checkpoint_root, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                    mlflow_tracking_uri=mlflow_tracking_uri,
                ),
                "finetune",
            )))
        # The cheap model the candidate must beat: same split, runs alongside the training tasks.
        base = _common(
            C.baseline(config=cfg.outputs["config"], processed=pre.outputs["processed"]), "baseline"
        ).after(val)
        ev = _mlflow(_common(
            C.evaluate(processed=pre.outputs["processed"], model=stage2.outputs["model"],
                       pretrained=stage1.outputs["pretrained"], config=cfg.outputs["config"],
                       mlflow_tracking_uri=mlflow_tracking_uri, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER),
            "evaluate", cache=False,
        ))
        # The gate reads the registry's current champion, so it must never be served from cache.
        gt = _mlflow(_common(
            C.gate(
                config=cfg.outputs["config"], processed=pre.outputs["processed"],
                candidate_auc=ev.outputs["target_auc"], candidate_logloss=ev.outputs["target_logloss"],
                base_rate_logloss=ev.outputs["target_base_rate_logloss"], baseline=base.outputs["test_metrics"],
                mlflow_tracking_uri=mlflow_tracking_uri, model_name=registered_name,
            ),
            "gate", cache=False,
        ))
        register_args = dict(
            config=cfg.outputs["config"], processed=pre.outputs["processed"], model=stage2.outputs["model"],
            metrics=ev.outputs["metrics"], decision=gt.outputs["decision"],
            mlflow_tracking_uri=mlflow_tracking_uri, model_name=registered_name,
            pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        with dsl.If(gt.outputs["blessed"] == True, name="blessed"):  # noqa: E712 - KFP condition syntax
            _mlflow(_common(C.register(**register_args), "register", cache=False)).set_display_name("promote")
        with dsl.Else(name="rejected"):
            _mlflow(_common(C.register(**register_args), "register", cache=False)).set_display_name(
                "record-rejection"
            )

    return cdanet_pipeline


#: The pipeline with default compile-time settings, for ``kfp dsl compile --py pipeline.py``.
cdanet_pipeline = create_pipeline()


def compile_pipeline(output: str, **factory_kwargs) -> str:
    from kfp import compiler

    compiler.Compiler().compile(create_pipeline(**factory_kwargs), package_path=output)
    return output


# ---- command line ---------------------------------------------------------------------------------
def _factory_args(p: argparse.ArgumentParser) -> None:
    """The compile-time settings; ``compile``, ``submit`` and ``schedule`` share them."""
    p.add_argument("--image", default=DEFAULT_IMAGE,
                   help="the project's image for every task, by tag or digest (repo@sha256:...) (default %(default)s)")
    p.add_argument("--gpu", action="store_true", help="request one GPU on the training tasks")
    p.add_argument("--accelerator-type", default="nvidia.com/gpu")
    p.add_argument("--data-pvc", default=None,
                   help=f"mount this PVC at /data/raw on the tasks that read raw data (e.g. {DATA_PVC})")
    p.add_argument("--work-pvc", default=None,
                   help=f"mount this PVC at {WORK_MOUNT_PATH} on the training tasks for their epoch checkpoints, "
                   f"so a retried task resumes (e.g. {WORK_PVC})")
    p.add_argument("--mlflow-secret", default=None,
                   help=f"Secret whose MLflow keys (MLFLOW_TRACKING_URI, _USERNAME, _PASSWORD, ...) become env vars "
                   f"of the tasks that log to MLflow: validate, training, evaluate, gate, register (e.g. {MLFLOW_SECRET})")
    p.add_argument("--distributed", type=int, default=1, metavar="N",
                   help="N >= 2: run pretrain and finetune as Kubeflow Trainer TrainJobs on N nodes, launched by "
                   "the training tasks through the work PVC (needs --work-pvc; default 1: one process)")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    p.add_argument("--experiment", default="cdanet")
    # A run-time setting of KFP (the pipeline spec has no field for it; `kfp run create` has no flag):
    # runs created with `kfp run submit` use the namespace's default, which manifests/ binds too.
    p.add_argument("--service-account", default=SERVICE_ACCOUNT,
                   help="Kubernetes service account of the run's pods (default %(default)s, see manifests/)")


def _factory_kwargs(a: argparse.Namespace) -> dict:
    return dict(image=a.image, use_gpu=a.gpu, accelerator_type=a.accelerator_type, data_pvc=a.data_pvc,
                mlflow_secret=a.mlflow_secret, work_pvc=a.work_pvc, distributed=a.distributed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = sub.add_parser("run", help="run the whole pipeline locally through kfp.local (the embedded default)")
    run.add_argument("--raw", default=None, help="folder of raw files (default: simulate a small dataset first)")
    run.add_argument("--glove", default=None, help="GloVe text file (glove.6B.50d.txt, .zip or .gz)")
    run.add_argument("--dataset", default="amazon", choices=["amazon", "taobao"])
    run.add_argument("--scale", default="small", help="simulator scale when --raw is not given (default small)")
    run.add_argument("--workdir", default="runs/local",
                     help="pipeline root, MLflow store, training checkpoints and simulated data")
    run.add_argument("--profile", default="paper", choices=["paper", "strict", "tiny"],
                     help="paper: the paper's settings with the measured defaults; strict: the paper's inputs only")
    run.add_argument("params", nargs="*", metavar="key=value", help="pipeline parameters, e.g. max_epochs=5")

    comp = sub.add_parser("compile", help="compile the pipeline to YAML")
    comp.add_argument("--output", default="cdanet_pipeline.yaml")
    _factory_args(comp)

    submit = sub.add_parser("submit", help="create a run on a Kubeflow Pipelines endpoint")
    _run_args(submit)
    submit.add_argument("--run-name", default=None)
    _factory_args(submit)
    submit.add_argument("params", nargs="*", metavar="key=value")

    sched = sub.add_parser("schedule", help="create a recurring run (daily retraining)")
    _run_args(sched)
    sched.add_argument("--cron", default="0 0 2 * * *", help="six-field KFP cron, seconds first (default daily 02:00)")
    sched.add_argument("--job-name", default="cdanet-daily-retraining")
    _factory_args(sched)
    sched.add_argument("params", nargs="*", metavar="key=value")

    sub.add_parser("deploy", add_help=False,
                   help="render manifests/ and apply them with kubectl (`deploy --help` for its options)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The verbs; exit status 0 done, 1 failed, 2 usage or configuration error (one line on stderr)."""
    from cdanet.orchestration import ParameterError

    try:
        return _main(argv)
    except ParameterError as e:
        print(f"pipeline.py: error: {e.message}", file=sys.stderr)
        return 2


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["deploy"]:
        # Its own parser (cdanet.deploy): `deploy --dry-run`, `deploy --overlay gpu`, `deploy --help`.
        from cdanet.deploy import main as deploy_main

        return deploy_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.verb == "compile":
        print(compile_pipeline(args.output, **_factory_kwargs(args)))
        return 0
    from cdanet import orchestration

    if args.verb == "run":
        import os

        pipeline_func = create_pipeline(checkpoint_root=os.path.join(os.path.abspath(args.workdir), "checkpoints"))
        return orchestration.run_local(
            pipeline_func, raw_dir=args.raw, glove=args.glove, dataset=args.dataset, scale=args.scale,
            workdir=args.workdir, profile=args.profile, params=orchestration.parse_params(args.params, pipeline_func),
        )
    if args.verb == "submit":
        pipeline_func = create_pipeline(**_factory_kwargs(args))
        params = _with_tracking(args, orchestration.parse_params(args.params, pipeline_func))
        return orchestration.submit(pipeline_func, host=args.host, experiment=args.experiment, run_name=args.run_name,
                                    service_account=args.service_account, params=params)
    pipeline_func = create_pipeline(**_factory_kwargs(args), scheduled=True)
    params = _with_tracking(args, orchestration.parse_params(args.params, pipeline_func))
    return orchestration.schedule(pipeline_func, host=args.host, experiment=args.experiment, cron=args.cron,
                                  job_name=args.job_name, service_account=args.service_account, params=params)


def _with_tracking(args: argparse.Namespace, params: dict) -> dict:
    """A cluster run needs an MLflow server for its gate and registry: without one the run would train for
    hours and fail at the gate. Checked before anything is sent."""
    from cdanet.orchestration import ParameterError

    if not args.mlflow_secret and not params.get("mlflow_tracking_uri"):
        raise ParameterError(
            f"{args.verb} needs an MLflow server for the gate and the registry: pass --mlflow-secret "
            f"{MLFLOW_SECRET} (the Secret of manifests/, key MLFLOW_TRACKING_URI) or mlflow_tracking_uri=<uri>"
        )
    return params


if __name__ == "__main__":
    sys.exit(main())
