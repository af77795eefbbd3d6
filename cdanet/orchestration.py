"""Running the pipeline: locally through ``kfp.local``, or on a Kubeflow Pipelines endpoint.

The runners only bind paths, images and parameters (TFX style); the pipeline itself is built by
``pipeline.create_pipeline`` and the work happens in :mod:`cdanet.steps`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
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


class ParameterError(SystemExit):
    """A pipeline parameter that cannot be used; the message is one line naming it. A SystemExit, so
    an uncaught one ends a script with that line and no traceback; ``pipeline.py`` exits 2 with it."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")
        self.message = message


def parse_params(values: Sequence[str], pipeline_func: Any = None) -> dict[str, Any]:
    """``key=value`` items as the kfp CLI parses them (``kfp run create ... key=value``:
    :func:`kfp.cli.utils.parsing.parse_parameter_value`), or, given ``pipeline_func``, each value
    coerced to the parameter's declared type (:func:`coerce_params`)."""
    from kfp.cli.utils.parsing import parse_parameter_value

    raw: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"pipeline parameter {item!r} is not of the form key=value")
        raw[key.strip()] = value
    if pipeline_func is None:
        return {k: parse_parameter_value(v) for k, v in raw.items()}
    return coerce_params(pipeline_func, raw)


def _check_params(pipeline_func: Any, params: Mapping[str, Any]) -> None:
    known = set(pipeline_func.component_spec.inputs or {})
    unknown = sorted(set(params) - known)
    if unknown:
        raise ParameterError(f"unknown pipeline parameter(s) {unknown}; known: {sorted(known)}")


def _coerce(name: str, kind: str, value: Any) -> Any:
    """``value`` (a CLI string, or a Python value) as the KFP type ``kind``; one-line error otherwise."""
    from kfp.cli.utils.parsing import parse_parameter_value

    def bad(expected: str) -> ParameterError:
        return ParameterError(f"pipeline parameter {name}={value!r}: expected {expected}")

    if kind == "String":
        if isinstance(value, str):
            return value
        if isinstance(value, (bool, list, dict)) or value is None:
            raise bad("a string")
        return str(value)
    parsed = parse_parameter_value(value) if isinstance(value, str) else value
    if kind == "Float":
        if isinstance(parsed, bool) or not isinstance(parsed, (int, float)) or not math.isfinite(parsed):
            raise bad("a finite number (float)")
        return float(parsed)
    if kind == "Integer":
        if isinstance(parsed, float) and parsed.is_integer():
            parsed = int(parsed)
        if isinstance(parsed, bool) or not isinstance(parsed, int):
            raise bad("an integer")
        return parsed
    if kind == "Boolean":
        if not isinstance(parsed, bool):
            raise bad("true or false")
        return parsed
    if kind == "List":
        if not isinstance(parsed, list):
            raise bad('a JSON list, e.g. \'["a", "b"]\'')
        return parsed
    if kind in ("Dict", "Struct"):
        if not isinstance(parsed, dict):
            raise bad("a JSON object")
        return parsed
    return parsed


def coerce_params(pipeline_func: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """Each parameter as its declared type (``tolerance=0`` is the float 0.0, ``max_epochs=5.0`` the
    int 5); an unknown name or a value that is not of its type is one line (:class:`ParameterError`)."""
    _check_params(pipeline_func, params)
    inputs = pipeline_func.component_spec.inputs or {}
    return {k: _coerce(k, inputs[k].type, v) for k, v in params.items()}


def preflight(pipeline_func: Any, params: Mapping[str, Any], *, check_inputs: bool) -> None:
    """The configure step's checks, here, before anything is started: an invalid value (out of range,
    an unknown dataset, domain or profile, ...) is one line instead of a failed run. ``check_inputs``:
    also check that ``raw_uri`` and ``glove_uri`` exist (a local run; a cluster's paths are not here)."""
    from cdanet import steps
    from cdanet.config import ConfigError

    inputs = pipeline_func.component_spec.inputs or {}
    values = {k: spec.default for k, spec in inputs.items() if spec.default is not None}
    values.update(params)
    names = ("dataset", "target_domain", "profile", "extra_overrides", "min_auc", "tolerance", "baseline_margin",
             "tuned_config_uri", "alpha", "beta", "num_experts", "latent_dim", "max_epochs", "batch_size",
             "learning_rate", "seed", "model_name")
    kwargs = {k: values[k] for k in names if k in values}
    raw_uri, glove_uri = values.get("raw_uri", ""), values.get("glove_uri", "")
    try:
        steps.configure(raw_uri=raw_uri, glove_uri=glove_uri, check_inputs=check_inputs, **kwargs)
    except ConfigError as e:
        raise ParameterError(" ".join(str(e).split())) from None


# ---- local ----------------------------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STATUS = re.compile(r"Task '([\w-]+)' finished with status (\w+)")


def display_names(pipeline_func: Any) -> dict[str, str]:
    """Task name -> the display name the pipeline gave it (``register-2`` -> ``record-rejection``),
    from the pipeline spec, for every task in every DAG (conditions included)."""
    spec = pipeline_func.pipeline_spec
    names: dict[str, str] = {}
    for dag in [spec.root.dag, *(c.dag for c in spec.components.values() if c.HasField("dag"))]:
        for key, task in dag.tasks.items():
            if task.task_info.name and task.task_info.name != key:
                names[key] = task.task_info.name
    return names


class _TaskLog:
    """A stdout stand-in: everything goes to the log file, task status lines also to the console.

    kfp.local prints each task's full executor input/output; that belongs in a log, while the user
    watching ``make run`` wants one line per finished task. kfp.local 2.17 reports a task's status
    only in that line (the structured status stays inside its orchestrator), hence the pattern.
    """

    def __init__(self, log_file, out: Callable[[str], None], started: float,
                 names: Mapping[str, str] | None = None) -> None:
        self._log, self._out, self._started, self._pending = log_file, out, started, ""
        self._names = dict(names or {})
        self.failed: list[str] = []

    def write(self, text: str) -> int:
        self._log.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            m = _STATUS.search(_ANSI.sub("", line))
            if m:
                task, state = m.groups()
                task = self._names.get(task, task)
                if state != "SUCCESS":
                    self.failed.append(task)
                self._out(f"[cdanet] {time.time() - self._started:6.0f}s  {task:<18} {state}")
        return len(text)

    def flush(self) -> None:
        self._log.flush()

def _display_names_or_none(pipeline_func: Any) -> dict[str, str]:
    try:
        return display_names(pipeline_func)
    except AttributeError:  # a stand-in pipeline (tests) has no spec
        return {}


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

    params = coerce_params(pipeline_func, params)
    # The values first (no data needed): a bad one is one line before anything is simulated or run.
    # (No --raw: the simulator provides the raw files and a GloVe file below.)
    preflight(pipeline_func, {"dataset": dataset, "profile": profile, "raw_uri": raw_dir or "-",
                              "glove_uri": glove or ("" if raw_dir else "-"), **params}, check_inputs=False)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if raw_dir is None:
        raw_root = os.path.join(workdir, "raw")
        if not os.path.exists(os.path.join(raw_root, "manifest.json")):
            from cdanet.simulate import simulate

            # Both families at once, so that a later run with the other --dataset finds its files.
            out(f"[cdanet] no --raw given: simulating a {scale} dataset (Amazon and Taobao) in the real "
                f"raw formats under {raw_root}")
            simulate(raw_root, dataset="both", scale=scale, seed=0)
        raw_dir = os.path.join(raw_root, dataset)
        glove = glove or os.path.join(raw_root, SIM_GLOVE)
    raw_dir = os.path.abspath(raw_dir)
    if not os.path.isdir(raw_dir):
        raise ParameterError(f"--raw {raw_dir} is not a folder of raw {dataset} files")
    tracking_uri = "sqlite:///" + os.path.join(workdir, "mlflow.db")
    arguments = {
        "raw_uri": raw_dir,
        "glove_uri": os.path.abspath(glove) if glove else "",
        "dataset": dataset,
        "profile": profile,
        "mlflow_tracking_uri": tracking_uri,
        **params,
    }
    arguments = coerce_params(pipeline_func, arguments)
    preflight(pipeline_func, arguments, check_inputs=True)
    # The configure step resolves the profile, the hyperparameters (cdanet.params) and the registered
    # model's name (empty: cdanet-<dataset>-<target>); the summary needs the same name.
    from cdanet.steps import model_name_for

    model_name = arguments.get("model_name") or model_name_for(dataset, arguments.get("target_domain", ""))
    # Inherited by every task subprocess: no analytics calls (there is no network), Beam on all cores.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    pipeline_root = os.path.join(workdir, "pipeline_root")
    os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
    log_path = os.path.join(workdir, "logs", time.strftime("pipeline-%Y%m%d-%H%M%S.log"))
    started = time.time()
    out(f"[cdanet] running the pipeline locally (kfp.local, SubprocessRunner); full task logs: {log_path}")
    with open(log_path, "w") as log_file:
        real_stdout = sys.stdout  # captured before the redirect below
        console = _TaskLog(log_file, out if out is not print else (lambda m: print(m, file=real_stdout, flush=True)),
                           started, _display_names_or_none(pipeline_func))
        try:
            import warnings

            with warnings.catch_warnings(), contextlib.redirect_stdout(console):
                # The SubprocessRunner warns that the project image is not a python:* image, and that
                # resource settings do nothing locally: both are expected, the tasks run in this
                # interpreter, which has the same packages as the image.
                warnings.filterwarnings("ignore", message=".*non-Python base image.*")
                warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
                local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root,
                           raise_on_error=True)
                pipeline_func(**arguments)
        except Exception as e:  # kfp.local raises naming the failed task
            out(f"[cdanet] pipeline FAILED after {time.time() - started:.0f}s: {e}")
            out(_failure_excerpt(log_path))
            out(f"[cdanet] full log: {log_path}; no model was registered or promoted by this run.")
            return 1
    out(f"[cdanet] pipeline finished in {time.time() - started:.0f}s")
    out(run_summary(tracking_uri, model_name, pipeline_root, log_path))
    return 0


def _latest_run_dir(pipeline_root: str) -> str | None:
    runs = [os.path.join(pipeline_root, d) for d in os.listdir(pipeline_root) if d.startswith("cdanet-training-")]
    return max(runs, key=os.path.getmtime) if runs else None


def run_summary(tracking_uri: str, model_name: str, pipeline_root: str, log_path: str) -> str:
    """Metrics, the gate decision with its reasons, the registry state and where the artifacts are."""
    from mlflow import MlflowClient

    from cdanet.registry import TAG_BLESSED, TAG_REASONS, TAG_SUMMARY, TAG_TARGET, get_champion
    from cdanet.steps import BASELINE_MODEL, CURVES_PNG, RELIABILITY_PNG, ROC_PNG

    client = MlflowClient(tracking_uri=tracking_uri)
    versions = client.search_model_versions(f"name = '{model_name}'", order_by=["version_number DESC"],
                                            max_results=1)
    lines = ["", "[cdanet] result"]
    if versions:
        version = client.get_model_version(model_name, versions[0].version)
        metrics = client.get_run(version.run_id).data.metrics
        # <domain>_test_auc is the candidate's, stage1_<domain>_test_auc the translation network's.
        stems = sorted((k.startswith("stage1_"), k[: -len("_test_auc")]) for k in metrics if k.endswith("_test_auc"))
        nan = float("nan")
        for stage1, stem in stems:
            domain, who = stem.removeprefix("stage1_"), "stage-1 translation network" if stage1 else "candidate"
            # The base-rate logloss (predicting the training click rate everywhere) is the bar for logloss.
            lines.append(f"  test {domain:<8} AUC {metrics[stem + '_test_auc']:.4f}   logloss "
                         f"{metrics.get(stem + '_test_logloss', nan):.4f} (base rate "
                         f"{metrics.get(domain + '_test_base_rate_logloss', nan):.4f})   ECE "
                         f"{metrics.get(stem + '_test_ece', nan):.4f}   ({who})")
        if "gate_baseline_auc" in metrics:
            target = (version.tags or {}).get(TAG_TARGET, "")
            lines.append(f"  test {target:<8} AUC {metrics['gate_baseline_auc']:.4f}   logloss "
                         f"{metrics.get('gate_baseline_logloss', nan):.4f}   (in-run baseline: {BASELINE_MODEL})")
        tags = version.tags or {}
        verdict = "blessed" if tags.get(TAG_BLESSED) == "true" else "rejected"
        lines.append(f"  gate     {tags.get(TAG_SUMMARY) or verdict}")
        lines += [f"           - {r}" for r in tags.get(TAG_REASONS, "").splitlines() if r.strip()]
        lines.append(f"  registry model {model_name!r} version {version.version}"
                     + (" (now @champion)" if verdict == "blessed" else " (not promoted)"))
        if version.run_id:
            lines.append(f"           MLflow run {version.run_id} (params, per-epoch history, figures, Data Docs, model)")
    else:
        lines.append(f"  registry model {model_name!r}: no version was registered")
    champion = get_champion(tracking_uri, model_name)
    lines.append("           @champion -> " + (f"version {champion.version}" if champion else "none")
                 + f"   ({tracking_uri}; browse with: mlflow ui --backend-store-uri {tracking_uri})")
    run_dir = _latest_run_dir(pipeline_root)
    if run_dir:
        lines.append(f"  artifacts {run_dir}")
        for label, rel in (("processed data", "preprocess/processed"), ("validation report", "validate/report"),
                           ("GX Data Docs", "validate/data_docs/data_docs/index.html"),
                           ("model", "finetune/model"), ("training curves", "finetune/curves"),
                           ("predictions", "evaluate/predictions"),
                           ("training curves PNG", f"finetune/model/{CURVES_PNG}"),
                           ("ROC curve", f"evaluate/predictions/{ROC_PNG}"),
                           ("reliability diagram", f"evaluate/predictions/{RELIABILITY_PNG}"),
                           ("baseline metrics", "baseline/test_metrics"), ("gate decision", "gate/report")):
            if os.path.exists(os.path.join(run_dir, rel)):
                lines.append(f"           {label:<19} {os.path.join(run_dir, rel)}")
    lines.append(f"  log      {log_path}")
    return "\n".join(lines)


def _failure_excerpt(log_path: str, lines: int = 25) -> str:
    """The end of the failed task's own output (its traceback), without kfp's JSON dumps."""
    with open(log_path) as fh:
        text = _ANSI.sub("", fh.read())
    tb = text.rfind("Traceback (most recent call last)")
    tail = text[tb:] if tb >= 0 else text
    kept = [ln for ln in tail.splitlines() if ln.strip()][:lines * 4]
    return "\n".join("    " + ln for ln in kept[-lines:])


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
    params = coerce_params(pipeline_func, params)
    preflight(pipeline_func, params, check_inputs=False)
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
    """KFP cron has six fields, seconds first (``0 0 2 * * *`` = daily at 02:00). The field count is
    KFP's rule; croniter checks each field's values and ranges (``0 0 25 * * *`` has no hour 25)."""
    from croniter import croniter

    fields = cron.split()
    if len(fields) != 6:
        raise ParameterError(
            f"--cron {cron!r} has {len(fields)} fields; KFP cron needs six, seconds first "
            "(e.g. '0 0 2 * * *' for daily at 02:00)"
        )
    if not croniter.is_valid(cron, second_at_beginning=True):
        raise ParameterError(f"--cron {cron!r} is not a valid cron expression (six fields: second minute hour "
                             "day-of-month month day-of-week, e.g. '0 0 2 * * *')")
    return cron


def schedule(pipeline_func: Any, *, host: str, experiment: str, cron: str, job_name: str,
             params: Mapping[str, Any], service_account: str | None = None) -> int:
    """Create a recurring run: at most one run at a time, no catch-up of missed schedules."""
    validate_cron(cron)
    params = coerce_params(pipeline_func, params)
    preflight(pipeline_func, params, check_inputs=False)
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
