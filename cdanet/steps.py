"""What each pipeline step does, with plain paths and values.

The Kubeflow components (``components/``) only unwrap artifacts and call these functions, so every
step is testable without kfp, and the same code runs under ``kfp.local`` and in a cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from cdanet import __version__, params
from cdanet.atomic import write_json, write_text
from cdanet.config import DATASETS, PROFILES, ConfigError, ExperimentConfig
from cdanet.contract import STATS_FILENAME

if TYPE_CHECKING:
    from cdanet.champion import ChampionScore
    from cdanet.gate import GateDecision


class PipelineParameterError(ConfigError):
    """An invalid pipeline parameter, rejected by the first step before any work starts."""


# ---- configure ------------------------------------------------------------------------------------
@dataclass
class PipelineConfig:
    """Everything later steps need, frozen by the first step as a JSON artifact."""

    experiment: ExperimentConfig
    min_auc: float
    tolerance: float
    raw_uri: str
    glove_uri: str
    #: Defaulted so a config artifact frozen before the baseline check still loads (as "at least as good").
    baseline_margin: float = 0.0
    #: The registered model's name (:func:`model_name_for`); empty in artifacts frozen before it existed.
    model_name: str = ""

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["experiment"] = self.experiment.to_dict()
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str) -> PipelineConfig:
        with open(path) as fh:
            d = json.load(fh)
        d["experiment"] = ExperimentConfig.from_dict(d["experiment"]).validate()
        return cls(**d)

    def summary(self) -> dict[str, Any]:
        e = self.experiment
        return {"dataset": e.dataset, "source_domain": e.source_domain, "target_domain": e.target_domain,
                "alpha": e.model.alpha, "beta": e.model.beta, "num_experts": e.model.num_experts,
                "min_auc": self.min_auc, "tolerance": self.tolerance, "baseline_margin": self.baseline_margin}


def model_name_for(dataset: str, target_domain: str) -> str:
    """The default registered-model name, one per dataset and target (a movie model is never gated
    against an ad champion): ``cdanet-<dataset>-<target>``, the target defaulting to the sparse domain."""
    return f"cdanet-{dataset}-{target_domain or DATASETS[dataset][0]}"


def _uri_exists(uri: str) -> bool:
    if "://" not in uri:
        return os.path.exists(uri)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(uri)


def configure(
    *, dataset: str, target_domain: str, raw_uri: str, glove_uri: str, profile: str, extra_overrides: Sequence[str],
    min_auc: float, tolerance: float, baseline_margin: float, tuned_config_uri: str = "", model_name: str = "",
    check_inputs: bool = True,
    alpha: float | None = None, beta: float | None = None, num_experts: int | None = None,
    latent_dim: int | None = None, max_epochs: int | None = None, batch_size: int | None = None,
    learning_rate: float | None = None, seed: int | None = None,
) -> PipelineConfig:
    """Resolve the run's config once and validate every parameter before any work starts.

    The hyperparameters (``alpha`` ... ``seed``, :data:`cdanet.params.HYPERPARAMETERS`) are unset when
    ``None`` or the pipeline's default ``-1``: then the profile (or the tuned config) decides. The
    config is :func:`cdanet.params.resolve`: the ``profile`` for ``dataset`` and ``target_domain``
    (empty: the dataset's sparse domain), then the tuned config, then the set hyperparameters, then
    ``extra_overrides``.

    ``tuned_config_uri``: a ``best_config.json`` of ``cdanet tune`` (path or Beam filesystem URI). Its
    hyperparameters (:func:`cdanet.tuning.tuned_overrides`: the model section and the optimisation keys
    of ``train``) replace the profile's; a hyperparameter the run sets and ``extra_overrides`` still win,
    and ``max_epochs``, ``seed`` and the runtime settings are never taken from it. Its dataset and target
    domain must be the run's.

    A value of the wrong type raises at once, in one line (:class:`PipelineParameterError`, a
    :class:`ConfigError`); every other problem is listed in one error, on one line.
    ``check_inputs=False`` skips the checks that read ``raw_uri``, ``glove_uri`` and
    ``tuned_config_uri`` (a submitting machine checks the values before a cluster run).
    """
    problems: list[str] = []
    if dataset not in DATASETS:
        raise PipelineParameterError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    if target_domain and target_domain not in DATASETS[dataset]:
        raise PipelineParameterError(
            f"unknown target_domain {target_domain!r} for dataset {dataset!r}; expected one of {DATASETS[dataset]}"
        )
    if profile not in PROFILES:
        raise PipelineParameterError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    hyperparameters = dict(alpha=alpha, beta=beta, num_experts=num_experts, latent_dim=latent_dim,
                           max_epochs=max_epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    try:
        params.explicit(hyperparameters)  # a wrong type fails first, whatever else is wrong
    except ConfigError as e:
        raise PipelineParameterError(str(e)) from e
    base = PROFILES[profile](dataset, target_domain or None, "cdanet")
    tuned: dict[str, Any] = {}
    if tuned_config_uri and check_inputs:
        from cdanet.tuning import load_tuned_config, tuned_overrides

        try:
            best = load_tuned_config(tuned_config_uri)
        except ConfigError as e:
            problems.append(f"tuned_config_uri: {e}")
        else:
            if (best.dataset, best.target_domain) != (base.dataset, base.target_domain):
                problems.append(f"tuned_config_uri {tuned_config_uri!r} was tuned for {best.dataset}/{best.target_domain}, "
                                f"this run trains {base.dataset}/{base.target_domain}")
            elif best.model.name != "cdanet" or best.model.ablation != "none":
                problems.append(f"tuned_config_uri {tuned_config_uri!r} holds model {best.model.name!r} "
                                f"(ablation {best.model.ablation!r}); the training pipeline trains full CDAnet")
            else:
                tuned = tuned_overrides(best)
    try:
        cfg = params.resolve(base, hyperparameters, list(extra_overrides), tuned)
    except ConfigError as e:
        raise PipelineParameterError(f"extra_overrides: {e}") from e
    try:
        cfg.validate()
    except ConfigError as e:  # "invalid config:" and one "- problem" line each
        lines = [ln.strip().removeprefix("- ") for ln in str(e).splitlines() if ln.strip()]
        problems += lines[1:] if len(lines) > 1 and lines[0].endswith(":") else [" ".join(lines)]
    else:
        if cfg.model.name != "cdanet" or cfg.model.ablation != "none":
            problems.append("the training pipeline trains full CDAnet; run baselines and ablations with "
                            "`cdanet train` or the experiments pipeline")
    if not 0.0 <= min_auc <= 1.0:
        problems.append(f"min_auc must be in [0, 1], got {min_auc}")
    if tolerance < 0:
        problems.append(f"tolerance must be >= 0, got {tolerance}")
    if not (math.isfinite(baseline_margin) and -1.0 <= baseline_margin <= 1.0):
        problems.append(f"baseline_margin must be in [-1, 1], got {baseline_margin}")
    if not raw_uri:
        problems.append("raw_uri is empty: give the folder of raw files")
    elif check_inputs and not _uri_exists(raw_uri):
        problems.append(f"raw_uri {raw_uri!r} does not exist or is not readable")
    if dataset == "amazon" and not glove_uri:
        problems.append("glove_uri is empty: the amazon dataset needs a GloVe file for title vectors")
    elif check_inputs and glove_uri and not _uri_exists(glove_uri):
        problems.append(f"glove_uri {glove_uri!r} does not exist or is not readable")
    if problems:
        raise PipelineParameterError("invalid pipeline parameters: " + "; ".join(" ".join(p.split()) for p in problems))
    return PipelineConfig(cfg, min_auc, tolerance, raw_uri, glove_uri, baseline_margin,
                          model_name or model_name_for(dataset, target_domain))


# ---- preprocess ---------------------------------------------------------------------------------------
@dataclass
class StepOutput:
    metrics: dict[str, float] = field(default_factory=dict)
    markdown: str = ""


def parse_data_until(value: str) -> int | None:
    """The run's scheduled time as unix seconds; None for a manual run (unresolved/empty placeholder)."""
    value = (value or "").strip()
    if not value or value.startswith("{{"):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise PipelineParameterError(f"data_until {value!r} is not an ISO-8601 time") from e
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())


def preprocess(config_path: str, raw_uri: str, glove_uri: str, output_dir: str, data_until: str,
               window_days: int, beam_args: Sequence[str]) -> StepOutput:
    from cdanet.preprocessing import PreprocessOptions, run_preprocessing

    cfg = PipelineConfig.load(config_path).experiment
    options = PreprocessOptions(max_timestamp=parse_data_until(data_until), window_days=window_days or None)
    stats = run_preprocessing(cfg.dataset, raw_uri, output_dir, glove_path=glove_uri or None,
                              options=options, beam_args=list(beam_args))
    metrics: dict[str, float] = {}
    lines = ["| domain | train | validation | test | users | items | positive rate |", "|---|---|---|---|---|---|---|"]
    for domain, s in stats.items():
        rows = s.get("rows", {})
        for split in ("train", "validation", "test"):
            metrics[f"{domain}_{split}_rows"] = float(rows.get(split, 0))
        lines.append(
            f"| {domain} | {rows.get('train', 0)} | {rows.get('validation', 0)} | {rows.get('test', 0)} | "
            f"{s.get('users', '')} | {s.get('items', '')} | {s.get('positive_rate', '')} |"
        )
    return StepOutput(metrics, "# Processed data\n\n" + "\n".join(lines) + "\n")


# ---- the MLflow run of the pipeline run (cdanet.tracking) ---------------------------------------------
def _experiment_name(pc: PipelineConfig) -> str:
    return pc.model_name or model_name_for(pc.experiment.dataset, pc.experiment.target_domain)


def _tracked(config_path: str, tracking_uri: str, pipeline_run_id: str) -> Any:
    """THE MLflow run of this pipeline run with the resolved config as params, or a None context
    (tracking off: no URI, no run id); see :mod:`cdanet.tracking`."""
    from cdanet import tracking

    if not tracking.resolve_uri(tracking_uri) or not tracking.usable_run_id(pipeline_run_id):
        return contextlib.nullcontext(None)
    return tracking.pipeline_run(tracking_uri, _experiment_name(PipelineConfig.load(config_path)), pipeline_run_id,
                                 config=tracking.config_params(config_path))


def _history_logger(run: Any, stage: str) -> Callable[[dict[str, Any]], None] | None:
    """Live per-validation metrics (step = the stage's global step); rank 0 only under data parallelism."""
    if run is None:
        return None

    def log(entry: dict[str, Any]) -> None:
        from cdanet.training import distributed

        ctx = distributed.current()
        if ctx is None or ctx.is_main:
            run.log_history_entry(stage, entry)

    return log


# ---- validate -----------------------------------------------------------------------------------------
#: Where the Great Expectations Data Docs go without ``data_docs_dir``: next to the validate step's HTML report.
DATA_DOCS_DIR = "gx_data_docs"


def validate(config_path: str, processed_dir: str, report_path: str, *, data_docs_dir: str | None = None,
             tracking_uri: str = "", pipeline_run_id: str = "") -> None:
    """Run the GX suites; write the HTML report, then raise if any expectation failed.

    ``data_docs_dir`` (the component's directory artifact) receives the GX Data Docs site
    (``data_docs/index.html``) and the summary's ``validation.html`` / ``validation.json``; default: a
    ``gx_data_docs`` folder beside ``report_path``.

    With tracking (:mod:`cdanet.tracking`), the run's MLflow run gets the resolved config as params,
    the processed splits as dataset inputs and the report folder as ``validation/`` (the GX Data Docs at
    ``validation/data_docs/index.html``), before a failure raises.
    """
    from cdanet.validation import validate_processed

    cfg = PipelineConfig.load(config_path).experiment
    report_dir = data_docs_dir or os.path.join(os.path.dirname(os.path.abspath(report_path)), DATA_DOCS_DIR)
    with _tracked(config_path, tracking_uri, pipeline_run_id) as run:
        report = validate_processed(processed_dir, cfg.domains, report_dir)
        shutil.copyfile(report.html_path, report_path)
        if run is not None:
            run.log_datasets(processed_dir, cfg.domains, data_fingerprint(processed_dir, cfg.domains))
            run.log_artifact(report_dir, "validation")  # data_docs/index.html, validation.html/.json
        report.raise_for_failures()


# ---- training -----------------------------------------------------------------------------------------
def checkpoint_dir(checkpoint_root: str, run_id: str, task: str) -> str | None:
    """``<checkpoint_root>/<run_id>/<task>``: the same folder for every attempt of one task of one run
    (a KFP retry keeps the run id), a fresh one for every run; None without a root (no checkpoints).

    A run id that is an unresolved placeholder or holds a path separator is refused, so two runs can
    never share (and resume from) one folder."""
    if not checkpoint_root:
        return None
    run_id = (run_id or "").strip()
    if not run_id or run_id.startswith("{{") or "/" in run_id or run_id in (".", ".."):
        raise PipelineParameterError(
            f"run_id {run_id!r}: expected the pipeline run's id to key the checkpoints under {checkpoint_root!r}"
        )
    return os.path.join(checkpoint_root, run_id, task)


def _train_metrics(result: Any, prefix: str) -> dict[str, float]:
    return {f"{prefix}_best_epoch": float(result.best_epoch), f"{prefix}_best_val_auc": float(result.best_val_auc),
            f"{prefix}_epochs": float(len(result.history)),
            f"{prefix}_resumed_from_epoch": float(getattr(result, "resumed_from_epoch", 0))}


def pretrain(config_path: str, processed_dir: str, model_dir: str,
             checkpoint_dir: str | None = None, *, tracking_uri: str = "", pipeline_run_id: str = "") -> dict[str, float]:
    """Stage 1; with ``checkpoint_dir`` an epoch checkpoint is written there after every epoch and an
    existing one of the same run is resumed (:func:`cdanet.training.trainer.train_model`).

    With tracking (:mod:`cdanet.tracking`), every validation's history entry goes to the pipeline
    run's MLflow run as it happens (``<stage>/<key>`` at the stage's global step), and the stage's
    summary metrics at the end."""
    from cdanet.training import pretrain as run_pretrain
    from cdanet.training.experiment import _stage1_name

    cfg = PipelineConfig.load(config_path).experiment
    with _tracked(config_path, tracking_uri, pipeline_run_id) as run:
        result = run_pretrain(cfg, processed_dir, model_dir, checkpoint_dir=checkpoint_dir,
                              on_epoch_end=_history_logger(run, _stage1_name(cfg)))
        metrics = _train_metrics(result, "stage1")
        if run is not None:
            run.log_metrics(metrics)
    _drop_checkpoints(checkpoint_dir)
    return metrics


def _drop_checkpoints(checkpoint_dir: str | None) -> None:
    """A finished task's checkpoints (its model is saved): removed, with the run's folder once empty,
    so a PVC or a local workdir does not fill up run after run."""
    if not checkpoint_dir:
        return
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(checkpoint_dir))


#: The training curves as a PNG, written into the fine-tuned model's folder (the HTML artifact embeds it).
CURVES_PNG = "training_curves.png"


def finetune(config_path: str, processed_dir: str, pretrained_dir: str, model_dir: str,
             curves_path: str, checkpoint_dir: str | None = None, *, tracking_uri: str = "",
             pipeline_run_id: str = "") -> dict[str, float]:
    """Stage 2; ``checkpoint_dir`` and tracking as in :func:`pretrain`; with tracking, the training
    curves (``figures/training_curves.png``) and both stages' histories (``history/``) too."""
    from cdanet.figures import write_curves_html
    from cdanet.training import finetune as run_finetune

    cfg = PipelineConfig.load(config_path).experiment
    with _tracked(config_path, tracking_uri, pipeline_run_id) as run:
        result = run_finetune(cfg, processed_dir, pretrained_dir, model_dir, checkpoint_dir=checkpoint_dir,
                              on_epoch_end=_history_logger(run, "finetune"))
        _drop_checkpoints(checkpoint_dir)
        stage1 = _read_history(pretrained_dir)
        curves_png = os.path.join(model_dir, CURVES_PNG)
        write_curves_html({"stage 1 (translation)": stage1, "stage 2 (augmentation)": result.history},
                          cfg.target_domain, curves_path, curves_png)
        metrics = _train_metrics(result, "stage2")
        if run is not None:
            run.log_metrics(metrics)
            run.log_artifact(curves_png, "figures")
            run.client.log_dict(run.run_id, {"stage1": stage1, "finetune": result.history}, "history/history.json")
    return metrics


def _read_history(model_dir: str) -> list[dict]:
    path = os.path.join(model_dir, "history.json")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return json.load(fh)


# ---- evaluate -----------------------------------------------------------------------------------------
#: Written into the evaluate step's predictions folder next to predictions.parquet.
RELIABILITY_PNG = "reliability.png"
ROC_PNG = "roc.png"
CALIBRATION_JSON = "calibration.json"
#: Equal-mass bins of the reliability diagrams.
RELIABILITY_BINS = 10
_MODEL_LABELS = {"": "candidate", "stage1_": "stage-1 translation network"}


@dataclass
class EvaluationOutput:
    metrics: dict[str, float]
    target_auc: float
    fpr: list[float]
    tpr: list[float]
    thresholds: list[float]
    confusion_matrix: list[list[int]]
    target_logloss: float = math.nan
    target_base_rate_logloss: float = math.nan
    #: ``{<prefix><domain>: Calibration.to_dict()}``, e.g. ``movie`` (candidate), ``stage1_book``.
    calibration: dict[str, dict] = field(default_factory=dict)


def evaluate(model_dir: str, processed_dir: str, predictions_dir: str, threshold: float | None = None,
             pretrained_dir: str | None = None, calibration_html: str | None = None,
             n_bins: int = RELIABILITY_BINS, *, config_path: str = "", tracking_uri: str = "",
             pipeline_run_id: str = "") -> EvaluationOutput:
    """Score the test split (:func:`_evaluate`); with ``config_path`` and tracking
    (:mod:`cdanet.tracking`) the pipeline run's MLflow run gets the test metrics and ``evaluation/``
    (``roc.png``, ``reliability.png``, ``calibration.json``)."""
    if not config_path:
        return _evaluate(model_dir, processed_dir, predictions_dir, threshold, pretrained_dir, calibration_html, n_bins)
    with _tracked(config_path, tracking_uri, pipeline_run_id) as run:
        out = _evaluate(model_dir, processed_dir, predictions_dir, threshold, pretrained_dir, calibration_html, n_bins)
        if run is not None:
            run.log_metrics(out.metrics)
            for name in (ROC_PNG, RELIABILITY_PNG, CALIBRATION_JSON):
                run.log_artifact(os.path.join(predictions_dir, name), "evaluation")
    return out


def _evaluate(model_dir: str, processed_dir: str, predictions_dir: str, threshold: float | None,
              pretrained_dir: str | None, calibration_html: str | None, n_bins: int) -> EvaluationOutput:
    """Test AUC/logloss and calibration per domain; ROC and confusion matrix of the target domain.

    ``model_dir`` is the candidate (the augmentation network scores the target domain only), giving
    ``<target>_test_auc`` / ``_logloss`` / ``_ece``. With ``pretrained_dir`` (the stage-1 translation
    network, which scores both domains through its vanilla towers R_s, R_t) the source domain gets
    test metrics too: ``stage1_<domain>_test_auc`` / ``_logloss`` / ``_ece`` for both domains, its
    predictions in ``<predictions_dir>/stage1/``. Every scored domain also gets
    ``<domain>_test_base_rate_logloss`` (predicting the training split's click rate,
    ``<domain>_train_positive_rate``, for every test row: the bar any usable logloss must clear).

    The reliability diagrams are written to ``<predictions_dir>/reliability.png``, their bins to
    ``calibration.json`` next to it, and with ``calibration_html`` the same plot plus tables as HTML.
    The target's ROC curves (the candidate's, and the stage-1 network's) go to ``roc.png``.
    """
    from cdanet.contract import load_schemas
    from cdanet.evaluation import train_positive_rate
    from cdanet.figures import write_reliability, write_roc
    from cdanet.training import evaluate_model_dir

    scored = {"": evaluate_model_dir(model_dir, processed_dir, split="test", predictions_dir=predictions_dir)}
    if pretrained_dir:
        scored["stage1_"] = evaluate_model_dir(pretrained_dir, processed_dir, split="test",
                                               predictions_dir=os.path.join(predictions_dir, "stage1"))
    metrics = {
        f"{prefix}{domain}_test_{name}": float(getattr(m, name))
        for prefix, res in scored.items() for domain, m in res.domains.items() for name in ("auc", "logloss")
    }
    domains = sorted({d for res in scored.values() for d in res.domains})
    schemas = load_schemas(processed_dir, domains)
    rates = {d: train_positive_rate(processed_dir, schemas[d]) for d in domains}
    calibrations = {f"{prefix}{d}": res.calibration(d, rates[d], n_bins)
                    for prefix, res in scored.items() for d in res.domains}
    for key, cal in calibrations.items():
        metrics[f"{key}_test_ece"] = cal.ece
        domain = cal.domain
        metrics[f"{domain}_test_base_rate_logloss"] = cal.base_rate_logloss
        metrics[f"{domain}_train_positive_rate"] = cal.base_rate
    write_json(os.path.join(predictions_dir, CALIBRATION_JSON), {k: c.to_dict() for k, c in calibrations.items()})
    by_domain: dict[str, dict[str, Any]] = {}
    for prefix, res in scored.items():
        for d in res.domains:
            by_domain.setdefault(d, {})[_MODEL_LABELS[prefix]] = calibrations[f"{prefix}{d}"]
    write_reliability(by_domain, os.path.join(predictions_dir, RELIABILITY_PNG), calibration_html)

    result = scored[""]
    target = result.target_domain
    roc = result.roc(target)
    write_roc({_MODEL_LABELS[prefix]: (res.roc(target), float(res.domains[target].auc))
               for prefix, res in scored.items() if target in res.domains},
              target, os.path.join(predictions_dir, ROC_PNG))
    # Without a chosen threshold, the confusion matrix uses the target's positive rate as the cut-off.
    cm = result.confusion_matrix(target, threshold)
    return EvaluationOutput(
        metrics, float(result.domains[target].auc), roc.fpr, roc.tpr, roc.thresholds, cm,
        target_logloss=float(result.domains[target].logloss),
        target_base_rate_logloss=calibrations[target].base_rate_logloss,
        calibration={k: c.to_dict() for k, c in calibrations.items()},
    )


# ---- baseline -----------------------------------------------------------------------------------------
#: Name of the in-run baseline in reports, gate reasons and registry tags.
BASELINE_MODEL = "id-only logistic regression"


@dataclass(frozen=True)
class BaselineReport:
    """The in-run baseline's test metrics on the target domain: the artifact the gate reads."""

    model: str
    domain: str
    split: str
    auc: float
    logloss: float
    n: int
    positive_rate: float
    val_auc: float
    #: What was chosen on validation, e.g. ``{"C": 0.3}``.
    chosen: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str) -> BaselineReport:
        with open(path) as fh:
            d = json.load(fh)
        expected = sorted(f.name for f in dataclasses.fields(cls))
        if not isinstance(d, dict) or sorted(d) != expected:
            raise ValueError(f"{path} is not a baseline report: expected keys {expected}, "
                             f"got {sorted(d) if isinstance(d, dict) else type(d).__name__}")
        return cls(**d)

    def metrics(self) -> dict[str, float]:
        """For KFP ``Metrics``: ``baseline_<domain>_test_auc`` / ``_test_logloss`` / ``_val_auc``."""
        p = f"baseline_{self.domain}"
        return {f"{p}_test_auc": self.auc, f"{p}_test_logloss": self.logloss, f"{p}_val_auc": self.val_auc}


def baseline(config_path: str, processed_dir: str, report_path: str) -> BaselineReport:
    """Train the id-only logistic regression on the target's training split and score its test split.

    Same processed data, same split and same rows as the candidate's evaluation, so the gate can ask
    whether the deep model learnt more than a user bias plus an item bias. Its regularisation is
    chosen on the validation split (inside ``IdLogisticRegression.fit``); the test split is only scored.
    """
    from cdanet.contract import load_schemas
    from cdanet.data import load_split
    from cdanet.evaluation import compute_metrics
    from cdanet.references import IdLogisticRegression

    domain = PipelineConfig.load(config_path).experiment.target_domain
    schema = load_schemas(processed_dir, [domain])[domain]
    train, val, test = (load_split(processed_dir, schema, split) for split in ("train", "validation", "test"))
    model = IdLogisticRegression().fit(train, val)
    val_m = compute_metrics(domain, val.label.cpu().numpy(), model.predict(val))
    m = compute_metrics(domain, test.label.cpu().numpy(), model.predict(test))
    chosen = {"C": float(model.c_)} if hasattr(model, "c_") else {}
    report = BaselineReport(BASELINE_MODEL, domain, "test", m.auc, m.logloss, m.n, m.positive_rate, val_m.auc, chosen)
    write_text(report_path, report.to_json())
    return report


# ---- gate and registry ------------------------------------------------------------------------------
def _tracking_uri(uri: str) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise PipelineParameterError(
            "no MLflow tracking URI: pass mlflow_tracking_uri or provide MLFLOW_TRACKING_URI "
            "(in a cluster, from the Secret given to `pipeline.py compile --mlflow-secret`)"
        )
    return uri


@dataclass(frozen=True)
class GateOutput:
    """The gate step's two stages: the champion's score on this run's rows, then the decision."""

    #: None when the registry has no champion (the first model).
    champion: ChampionScore | None
    decision: GateDecision
    #: The champion's drift anchor scored on the same rows, when the champion is not its own anchor.
    anchor: ChampionScore | None = None

    def to_markdown(self) -> str:
        """The decision, then what the champion (and its drift anchor) was scored on."""
        scored = "no champion in the registry" if self.champion is None else self.champion.to_markdown()
        if self.anchor is not None:
            scored += f"\n\ndrift anchor: {self.anchor.to_markdown()}"
        elif self.decision.anchor_note:
            scored += f"\n\ndrift anchor not scored: {self.decision.anchor_note}"
        return f"{self.decision.to_markdown()}\n\n## Champion scoring\n\n{scored}\n"


def _against_registry(processed_dir: str, tracking_uri: str, model_name: str, domain: str, split: str,
                      judge: Callable[..., GateDecision]) -> GateOutput:
    """Score the champion, and its drift anchor when that is another version, on ``split``; then
    ``judge(champion_auc, champion_version=, anchor_version=, anchor_auc=, anchor_unavailable=)``."""
    from cdanet.champion import ChampionIncompatibleError, score_version
    from cdanet.registry import TAG_ANCHOR, get_champion, get_version

    info = get_champion(tracking_uri, model_name)
    if info is None:
        return GateOutput(None, judge(None, champion_version=None))
    champion = score_version(processed_dir, tracking_uri, info, domain, split)
    anchor, note = None, None
    # A champion without the tag (registered before the anchor existed) is its own anchor.
    anchor_version = info.tags.get(TAG_ANCHOR, info.version)
    if anchor_version != info.version:
        anchor_info = get_version(tracking_uri, model_name, anchor_version)
        if anchor_info is None:
            note = f"version {anchor_version} of {model_name!r} no longer exists"
        else:
            try:
                anchor = score_version(processed_dir, tracking_uri, anchor_info, domain, split)
            except ChampionIncompatibleError as e:
                note = f"version {anchor_version} cannot score {domain}/{split}: {str(e).split('. ')[0]}"
    decision = judge(champion.auc, champion_version=champion.version,
                     anchor_version=None if anchor is None else anchor.version,
                     anchor_auc=None if anchor is None else anchor.auc, anchor_unavailable=note)
    return GateOutput(champion, decision, anchor)


def gate(config_path: str, processed_dir: str, candidate_auc: float, tracking_uri: str, model_name: str, *,
         candidate_logloss: float, base_rate_logloss: float, baseline_path: str) -> GateOutput:
    """Score the champion (and its drift anchor) on this run's test split of the target domain, then
    decide: floor, non-regression against that score, the in-run baseline and the base-rate logloss.

    The decision records the champion version it compared with: :func:`register` promotes only if
    that version is still the champion, and re-gates otherwise.
    """
    from cdanet.gate import GateConfig, decide

    pc = PipelineConfig.load(config_path)
    domain = pc.experiment.target_domain
    base = BaselineReport.load(baseline_path)
    if (base.domain, base.split) != (domain, "test"):
        raise ValueError(f"the baseline report {baseline_path} scores {base.domain}/{base.split}, "
                         f"not the candidate's {domain}/test")
    cfg = GateConfig(min_auc=pc.min_auc, tolerance=pc.tolerance, baseline_margin=pc.baseline_margin, domain=domain)

    def judge(champion_auc: float | None, **references: Any) -> GateDecision:
        return decide(candidate_auc, champion_auc, cfg, baseline_auc=base.auc, baseline_model=base.model,
                      baseline_logloss=base.logloss, candidate_logloss=candidate_logloss,
                      base_rate_logloss=base_rate_logloss, **references)

    return _against_registry(processed_dir, _tracking_uri(tracking_uri), model_name, domain, "test", judge)


def data_fingerprint(processed_dir: str, domains: Sequence[str]) -> str:
    """A hash of the processed data's stats files: the data lineage of a model version."""
    h = hashlib.sha256()
    for domain in sorted(domains):
        path = os.path.join(processed_dir, domain, STATS_FILENAME)
        if os.path.exists(path):
            with open(path, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()[:16]


def register(config_path: str, processed_dir: str, model_dir: str, metrics: Mapping[str, Any],
             decision_path: str, tracking_uri: str, model_name: str, pipeline_run_id: str) -> str:
    """Register the candidate (alias only when blessed); return a Markdown summary."""
    from cdanet.gate import GateDecision, decide_again
    from cdanet.registry import register_candidate

    pc = PipelineConfig.load(config_path)
    with open(decision_path) as fh:
        decision = GateDecision.from_json(fh.read())
    lineage = {"data_fingerprint": data_fingerprint(processed_dir, pc.experiment.domains),
               "pipeline_run_id": pipeline_run_id, "code_version": __version__}
    params = {**pc.summary(), "d": pc.experiment.model.d, "max_epochs": pc.experiment.train.max_epochs,
              "batch_size": pc.experiment.train.batch_size, "learning_rate": pc.experiment.train.learning_rate}
    uri = _tracking_uri(tracking_uri)

    def regate(current: str | None) -> GateDecision:
        # Under the registry's lock: the champion that replaced the one the gate saw scores the same split.
        return _against_registry(processed_dir, uri, model_name, decision.domain, decision.split,
                                 lambda auc, **refs: decide_again(decision, auc, **refs)).decision

    from cdanet.tracking import open_run

    # THE run of this pipeline run (opened by the training steps when they had a URI; else now).
    run = open_run(uri, _experiment_name(pc), pipeline_run_id)
    try:
        version = register_candidate(
            model_dir, tracking_uri=uri, model_name=model_name,
            metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, params=params,
            decision=decision, lineage=lineage, pipeline_run_id=pipeline_run_id, processed_root=processed_dir,
            regate=regate, run_id=run.run_id,
        )
    except BaseException:
        with contextlib.suppress(Exception):
            run.client.set_terminated(run.run_id, status="FAILED")
        raise
    run.client.set_terminated(run.run_id, status="FINISHED")
    final = version.decision or decision
    state = "promoted to @champion" if version.blessed else "recorded as rejected (champion unchanged)"
    if version.reused:
        note = "An earlier attempt of this pipeline run registered this version; this attempt reused it.\n\n"
    elif version.decision is not decision:
        note = "The champion changed after the gate: the candidate was re-gated against the new one.\n\n"
    else:
        note = ""
    return (f"# {model_name} version {version.version}: {state}\n\n{note}" + final.to_markdown()
            + f"\n\nmodel URI: `{version.model_uri}`\n\nMLflow run: {run.url()}\n")
