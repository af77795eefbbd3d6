"""Running the pipeline: locally through ``kfp.local``, or on a Kubeflow Pipelines endpoint.

The runners only bind paths, images and parameters (TFX style); the pipeline itself is built by
``pipeline.create_pipeline`` and the work happens in :mod:`cdanet.steps`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

log = logging.getLogger("cdanet")

#: GloVe file name the simulator writes (glove.6B.50d.txt stands in for it on real data).
SIM_GLOVE = os.path.join("glove", "glove.sim.50d.txt")


class OrchestrationError(RuntimeError):
    """A run could not be started or did not finish; the message says why."""


def parse_params(values: Sequence[str]) -> dict[str, Any]:
    """``["max_epochs=5", "extra_overrides=[\\"model.dropout=0.1\\"]"]`` -> typed values (JSON when it parses)."""
    params: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise SystemExit(f"pipeline parameter {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            params[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[key.strip()] = raw
    return params


def _check_params(pipeline_func: Any, params: Mapping[str, Any]) -> None:
    known = set(pipeline_func.component_spec.inputs or {})
    unknown = sorted(set(params) - known)
    if unknown:
        raise SystemExit(f"unknown pipeline parameter(s) {unknown}; known: {sorted(known)}")


# ---- local ----------------------------------------------------------------------------------------
def run_local(
    pipeline_func: Any,
    *,
    raw_dir: str | None,
    glove: str | None,
    dataset: str,
    scale: str,
    workdir: str,
    profile: str,
    params: Mapping[str, Any],
    out: Callable[[str], None] = print,
) -> int:
    """Run the whole pipeline through ``kfp.local`` with the SubprocessRunner and print a summary.

    With no ``raw_dir`` a dataset is simulated (once) under ``workdir/raw`` so that repeated runs
    train on the same data and the second model is gated against the first.
    """
    from kfp import local

    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if raw_dir is None:
        raw_root = os.path.join(workdir, "raw")
        if not os.path.exists(os.path.join(raw_root, "manifest.json")):
            from cdanet.simulate import simulate

            out(f"[cdanet] no --raw given: simulating a {scale} {dataset} dataset in the real raw formats "
                f"under {raw_root}")
            simulate(raw_root, dataset=dataset, scale=scale, seed=0)
        raw_dir = os.path.join(raw_root, dataset)
        glove = glove or os.path.join(raw_root, SIM_GLOVE)
    raw_dir = os.path.abspath(raw_dir)
    if not os.path.isdir(raw_dir):
        raise SystemExit(f"--raw {raw_dir} is not a folder of raw {dataset} files")
    tracking_uri = "sqlite:///" + os.path.join(workdir, "mlflow.db")
    arguments = {
        "raw_uri": raw_dir,
        "glove_uri": os.path.abspath(glove) if glove else "",
        "dataset": dataset,
        "profile": profile,
        "mlflow_tracking_uri": tracking_uri,
        **params,
    }
    _check_params(pipeline_func, arguments)
    model_name = arguments.get("model_name", "cdanet")
    # Inherited by every task subprocess: no analytics calls (there is no network), Beam on all cores.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    pipeline_root = os.path.join(workdir, "pipeline_root")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True)
    started = time.time()
    out(f"[cdanet] running pipeline locally (kfp.local SubprocessRunner); artifacts under {pipeline_root}")
    try:
        import warnings

        with warnings.catch_warnings():
            # The SubprocessRunner warns that the project image is not a python:* image; locally the
            # tasks run in this interpreter, which has the same packages as the image.
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            pipeline_func(**arguments)
    except Exception as e:  # kfp.local raises a RuntimeError naming the failed task
        out(f"[cdanet] pipeline FAILED after {time.time() - started:.0f}s: {e}")
        out("[cdanet] the failed task's log is printed above; no model was registered by this run.")
        return 1
    out(f"[cdanet] pipeline finished in {time.time() - started:.0f}s")
    from cdanet.registry import summarize_latest

    out(summarize_latest(tracking_uri, model_name, pipeline_root=pipeline_root))
    return 0


# ---- cluster ----------------------------------------------------------------------------------------
def _client(host: str):
    import kfp

    try:
        client = kfp.Client(host=host)
        client.get_kfp_healthz()
        return client
    except Exception as e:  # connection errors come in many types from kfp_server_api/urllib3
        raise OrchestrationError(
            f"cannot reach Kubeflow Pipelines at {host}: {type(e).__name__}: {str(e).splitlines()[0][:200]}. "
            "Check the endpoint (e.g. `kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80` then "
            "--host http://localhost:8080)."
        ) from e


def _compiled(pipeline_func: Any) -> str:
    from kfp import compiler

    path = os.path.join(tempfile.mkdtemp(prefix="cdanet-"), "cdanet_pipeline.yaml")
    compiler.Compiler().compile(pipeline_func, package_path=path)
    return path


def submit(pipeline_func: Any, *, host: str, experiment: str, run_name: str | None,
           params: Mapping[str, Any], service_account: str | None = None) -> int:
    """Create one run (the same as ``kfp run submit -e EXPERIMENT -f cdanet_pipeline.yaml key=value``)."""
    _check_params(pipeline_func, params)
    try:
        client = _client(host)
        run = client.create_run_from_pipeline_package(
            _compiled(pipeline_func), arguments=dict(params), run_name=run_name, experiment_name=experiment,
            service_account=service_account,
        )
    except OrchestrationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"submitted run {run.run_id} in experiment {experiment!r}: {host}/#/runs/details/{run.run_id}")
    return 0


def validate_cron(cron: str) -> str:
    """KFP cron has six fields, seconds first (``0 0 2 * * *`` = daily at 02:00)."""
    fields = cron.split()
    if len(fields) != 6:
        raise SystemExit(
            f"--cron {cron!r} has {len(fields)} fields; KFP cron needs six, seconds first "
            "(e.g. '0 0 2 * * *' for daily at 02:00)"
        )
    return cron


def schedule(pipeline_func: Any, *, host: str, experiment: str, cron: str, job_name: str,
             params: Mapping[str, Any], service_account: str | None = None) -> int:
    """Create a recurring run: at most one run at a time, no catch-up of missed schedules."""
    validate_cron(cron)
    _check_params(pipeline_func, params)
    try:
        client = _client(host)
        exp = client.create_experiment(name=experiment)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=job_name, cron_expression=cron, max_concurrency=1,
            no_catchup=True, params=dict(params), pipeline_package_path=_compiled(pipeline_func), enabled=True,
            service_account=service_account,
        )
    except OrchestrationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"scheduled recurring run {getattr(job, 'recurring_run_id', job)} ({cron!r}, max_concurrency=1, "
          f"no catch-up) in experiment {experiment!r}")
    return 0
