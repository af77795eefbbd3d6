"""The MLflow run of a pipeline run: one run per pipeline run, from validation to registration.

Every step that has a tracking URI (its ``mlflow_tracking_uri`` parameter, else the task's
``MLFLOW_TRACKING_URI``) and a pipeline run id opens THE run of that pipeline run with
:func:`pipeline_run`: the run in experiment ``<model name>`` tagged ``cdanet.pipeline_run_id=<id>``
and ``cdanet.run_kind=pipeline``, created by the first step that asks (under a file lock for a
``sqlite:///`` store; on a server the steps that open it run one after another in the DAG), found by
every later step and by every retry. What lands in it:

* validate: the resolved config (every key of the frozen ``config`` artifact, dotted, as params), the
  Great Expectations Data Docs and the validation summary (``validation/``: open
  ``validation/data_docs/index.html``), the processed datasets
  as dataset inputs (one per domain and split, context ``train`` / ``validation`` / ``test``, digest =
  :func:`cdanet.steps.data_fingerprint`, source = the processed folder);
* pretrain / finetune: every validation's history entry, live, as metrics ``<stage>/<key>`` with
  ``step`` = the stage's global training step (``pretrain/val_auc_movie``, ``finetune/train_loss``
  ...); finetune also the training curves (``figures/training_curves.png``) and both stages'
  ``history.json``;
* evaluate: the test metrics and ``evaluation/roc.png``, ``reliability.png``, ``calibration.json``;
* register (:func:`cdanet.registry.register_candidate` with ``run_id``): the gate decision, the model
  as a LoggedModel of this run (its metrics linked to it), the model version, and the run ends
  ``FINISHED``.

Status: a step that raises marks the run ``FAILED``; the next step or retry that opens it sets it
back to ``RUNNING`` (so a pipeline that stops for good leaves its run ``FAILED``). Links: the run is
tagged ``kfp.run_id`` and, when ``KFP_UI_URL`` (the Kubeflow Pipelines UI's base URL) is set,
``kfp.run_url``; :func:`run_url` gives the way back, written into the register step's Markdown.

Tracking is optional: without a URI or a pipeline run id (or in a data-parallel worker of rank > 0),
:func:`pipeline_run` yields None and the step logs nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

TAG_PIPELINE_RUN = "cdanet.pipeline_run_id"  # the same tag as the model versions' (cdanet.registry)
TAG_RUN_KIND = "cdanet.run_kind"
RUN_KIND_PIPELINE = "pipeline"
TAG_KFP_RUN_ID = "kfp.run_id"
TAG_KFP_RUN_URL = "kfp.run_url"
#: The Kubeflow Pipelines UI's base URL (e.g. https://kubeflow.example.com/pipeline), when known.
KFP_UI_URL_ENV = "KFP_UI_URL"
SPLIT_CONTEXTS = ("train", "validation", "test")
_MAX_BATCH = 100  # MLflow's limit of params (and a safe size for metrics) per log_batch


def resolve_uri(uri: str) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else "" (tracking off)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI", "")


def usable_run_id(pipeline_run_id: str) -> bool:
    """False for an empty id or an unresolved ``{{...}}`` placeholder."""
    value = (pipeline_run_id or "").strip()
    return bool(value) and not value.startswith("{{")


@dataclass(frozen=True)
class PipelineRun:
    """An open MLflow run of a pipeline run: a client of the store and the run's id."""

    client: Any  # mlflow.MlflowClient
    run_id: str
    experiment_id: str
    tracking_uri: str

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nested params as dotted keys; re-logging the same value (a retry) is a no-op in MLflow."""
        from mlflow.entities import Param

        from cdanet.mlflow_store import flatten_params

        items = list(flatten_params(params).items())
        for start in range(0, len(items), _MAX_BATCH):
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[start:start + _MAX_BATCH]])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), _MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=items[start:start + _MAX_BATCH])

    def log_history_entry(self, stage: str, entry: Mapping[str, Any]) -> None:
        """One validation's history entry (:func:`cdanet.training.trainer.train_model`) at its step."""
        numeric = {f"{stage}/{k}": float(v) for k, v in entry.items()
                   if k not in ("stage", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.log_metrics(numeric, step=int(entry.get("step", 0)))

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        if os.path.isdir(path):
            self.client.log_artifacts(self.run_id, path, artifact_path)
        elif os.path.exists(path):
            self.client.log_artifact(self.run_id, path, artifact_path)
        else:
            logger.warning("tracking: %s does not exist; not logged", path)

    def log_datasets(self, processed_dir: str, domains: Sequence[str], digest: str) -> None:
        """Each domain's train/validation/test split as a dataset input (no data copied: a reference)."""
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for domain in domains:
            path = (f"{processed_dir.rstrip('/')}/{domain}" if "://" in processed_dir
                    else os.path.join(os.path.abspath(processed_dir), domain))
            with warnings.catch_warnings():
                # "" and "file" both map to MLflow's local artifact source: it warns, then picks that one.
                warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways")
                source = resolve_dataset_source(path)
            for split in SPLIT_CONTEXTS:
                ds = MetaDataset(source=source, name=f"{domain}-{split}", digest=digest)
                inputs.append(DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", split)]))
        self.client.log_inputs(self.run_id, datasets=inputs)

    def url(self) -> str:
        return run_url(self.tracking_uri, self.experiment_id, self.run_id)


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Where to open the run: the server's UI page, or for a local store the ``mlflow ui`` command and path."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return (f"`mlflow ui --backend-store-uri {tracking_uri}`, then "
            f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}")


def open_run(tracking_uri: str, experiment_name: str, pipeline_run_id: str,
             artifact_location: str | None = None) -> PipelineRun:
    """Find the run of ``pipeline_run_id`` in ``experiment_name`` or create it; set it RUNNING."""
    from cdanet.mlflow_store import (
        default_artifact_location,
        ensure_experiment,
        file_lock,
        is_safe_id,
        sqlite_path,
        store_client,
    )

    if not usable_run_id(pipeline_run_id) or not is_safe_id(pipeline_run_id):
        raise ValueError(f"pipeline_run_id {pipeline_run_id!r}: expected the pipeline run's id (no quotes)")
    client = store_client(tracking_uri)
    db = sqlite_path(tracking_uri)
    lock = file_lock(f"{db}.runs.lock", 300.0, f"opening the run of {pipeline_run_id}") if db else contextlib.nullcontext()
    with lock:
        experiment_id = ensure_experiment(client, experiment_name, artifact_location or default_artifact_location(client))
        found = client.search_runs(
            [experiment_id],
            f"tags.`{TAG_PIPELINE_RUN}` = '{pipeline_run_id}' and tags.`{TAG_RUN_KIND}` = '{RUN_KIND_PIPELINE}'",
            max_results=2, order_by=["attributes.start_time ASC"],
        )
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
        else:
            tags = {TAG_PIPELINE_RUN: pipeline_run_id, TAG_RUN_KIND: RUN_KIND_PIPELINE, TAG_KFP_RUN_ID: pipeline_run_id}
            base = os.environ.get(KFP_UI_URL_ENV, "")
            if base:
                tags[TAG_KFP_RUN_URL] = f"{base.rstrip('/')}/#/runs/details/{pipeline_run_id}"
            run_id = client.create_run(experiment_id, run_name=f"{experiment_name}-{pipeline_run_id}"[:250],
                                       tags=tags).info.run_id
            logger.info("tracking: MLflow run %s for pipeline run %s", run_id, pipeline_run_id)
    return PipelineRun(client, run_id, experiment_id, tracking_uri)


@contextlib.contextmanager
def pipeline_run(tracking_uri: str, experiment_name: str, pipeline_run_id: str,
                 config: Mapping[str, Any] | None = None) -> Iterator[PipelineRun | None]:
    """THE run of the pipeline run (None when tracking is off: no URI or no usable run id).

    ``config`` (the frozen pipeline config as a dict) is logged as params. An exception in the
    block marks the run FAILED and propagates.
    """
    uri = resolve_uri(tracking_uri)
    if os.environ.get("RANK", "0") != "0":  # a data-parallel worker: rank 0 logs for the job
        yield None
        return
    if not uri or not usable_run_id(pipeline_run_id):
        if uri:
            logger.warning("tracking: no pipeline run id; this step logs nothing to MLflow")
        yield None
        return
    run = open_run(uri, experiment_name, pipeline_run_id)
    if config is not None:
        run.log_params(config)
    try:
        yield run
    except BaseException:
        with contextlib.suppress(Exception):
            run.client.set_terminated(run.run_id, status="FAILED")
        raise


def config_params(config_path: str) -> dict[str, Any]:
    """The frozen pipeline config (``configure``'s artifact) as a dict: every resolved key."""
    with open(config_path) as fh:
        return json.load(fh)
