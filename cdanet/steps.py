"""What each pipeline step does, with plain paths and values.

The Kubeflow components (``components/``) only unwrap artifacts and call these functions, so every
step is testable without kfp, and the same code runs under ``kfp.local`` and in a cluster.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from cdanet import __version__
from cdanet.atomic import write_text
from cdanet.config import DATASETS, PROFILES, ConfigError, ExperimentConfig
from cdanet.features import STATS_FILENAME


class PipelineParameterError(ValueError):
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
                "min_auc": self.min_auc, "tolerance": self.tolerance}


def _uri_exists(uri: str) -> bool:
    if "://" not in uri:
        return os.path.exists(uri)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(uri)


def configure(
    *, dataset: str, target_domain: str, raw_uri: str, glove_uri: str, profile: str, alpha: float | None,
    beta: float | None, num_experts: int, latent_dim: int, max_epochs: int, batch_size: int,
    learning_rate: float, seed: int, extra_overrides: Sequence[str], min_auc: float, tolerance: float,
    tuned_config_uri: str = "",
) -> PipelineConfig:
    """Validate every parameter; raise one error listing all problems (nothing has run yet).

    ``tuned_config_uri``: a ``best_config.json`` of ``cdanet tune`` (path or Beam filesystem URI). Its
    hyperparameters (:func:`cdanet.tuning.tuned_overrides`: the model section and the optimisation keys
    of ``train``) replace the profile's and the named parameters' values (alpha, beta, num_experts,
    latent_dim, batch_size, learning_rate); ``max_epochs``, ``seed`` and the runtime settings stay the
    pipeline's, and ``extra_overrides`` still apply last. Its dataset and target domain must be the run's.
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
    cfg = PROFILES[profile](dataset, target_domain or None, "cdanet")
    overrides: dict[str, Any] = {"model.num_experts": num_experts, "model.d": latent_dim,
                                 "train.max_epochs": max_epochs, "train.batch_size": batch_size,
                                 "train.learning_rate": learning_rate, "train.seed": seed}
    if alpha is not None:
        overrides["model.alpha"] = alpha
    if beta is not None:
        overrides["model.beta"] = beta
    tuned: dict[str, Any] = {}
    if tuned_config_uri:
        from cdanet.tuning import load_tuned_config, tuned_overrides

        try:
            best = load_tuned_config(tuned_config_uri)
        except ConfigError as e:
            problems.append(f"tuned_config_uri: {e}")
        else:
            if (best.dataset, best.target_domain) != (cfg.dataset, cfg.target_domain):
                problems.append(f"tuned_config_uri {tuned_config_uri!r} was tuned for {best.dataset}/{best.target_domain}, "
                                f"this run trains {cfg.dataset}/{cfg.target_domain}")
            elif best.model.name != "cdanet" or best.model.ablation != "none":
                problems.append(f"tuned_config_uri {tuned_config_uri!r} holds model {best.model.name!r} "
                                f"(ablation {best.model.ablation!r}); the training pipeline trains full CDAnet")
            else:
                tuned = tuned_overrides(best)
    try:
        cfg = cfg.with_overrides(overrides).with_overrides(tuned).with_overrides(list(extra_overrides)).validate()
    except ConfigError as e:
        problems.append(str(e))
    else:
        if cfg.model.name != "cdanet" or cfg.model.ablation != "none":
            problems.append("the training pipeline trains full CDAnet; run baselines and ablations with "
                            "`cdanet train` or the experiments pipeline")
    if not 0.0 <= min_auc <= 1.0:
        problems.append(f"min_auc must be in [0, 1], got {min_auc}")
    if tolerance < 0:
        problems.append(f"tolerance must be >= 0, got {tolerance}")
    if not raw_uri:
        problems.append("raw_uri is empty: give the folder of raw files")
    elif not _uri_exists(raw_uri):
        problems.append(f"raw_uri {raw_uri!r} does not exist or is not readable")
    if dataset == "amazon" and not glove_uri:
        problems.append("glove_uri is empty: the amazon dataset needs a GloVe file for title vectors")
    elif glove_uri and not _uri_exists(glove_uri):
        problems.append(f"glove_uri {glove_uri!r} does not exist or is not readable")
    if problems:
        raise PipelineParameterError("invalid pipeline parameters:\n  - " + "\n  - ".join(problems))
    return PipelineConfig(cfg, min_auc, tolerance, raw_uri, glove_uri)


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


# ---- validate -----------------------------------------------------------------------------------------
def validate(config_path: str, processed_dir: str, report_path: str) -> None:
    """Run the GX suites; write the HTML report, then raise if any expectation failed."""
    from cdanet.validation import validate_processed

    cfg = PipelineConfig.load(config_path).experiment
    report_dir = os.path.join(os.path.dirname(os.path.abspath(report_path)), "gx_data_docs")
    report = validate_processed(processed_dir, cfg.domains, report_dir)
    shutil.copyfile(report.html_path, report_path)
    report.raise_for_failures()


# ---- training -----------------------------------------------------------------------------------------
def _train_metrics(result: Any, prefix: str) -> dict[str, float]:
    return {f"{prefix}_best_epoch": float(result.best_epoch), f"{prefix}_best_val_auc": float(result.best_val_auc),
            f"{prefix}_epochs": float(len(result.history))}


def pretrain(config_path: str, processed_dir: str, model_dir: str) -> dict[str, float]:
    from cdanet.training import pretrain as run_pretrain

    cfg = PipelineConfig.load(config_path).experiment
    return _train_metrics(run_pretrain(cfg, processed_dir, model_dir), "stage1")


def finetune(config_path: str, processed_dir: str, pretrained_dir: str, model_dir: str,
             curves_path: str) -> dict[str, float]:
    from cdanet.training import finetune as run_finetune

    cfg = PipelineConfig.load(config_path).experiment
    result = run_finetune(cfg, processed_dir, pretrained_dir, model_dir)
    stage1 = _read_history(pretrained_dir)
    write_curves_html({"stage 1 (translation)": stage1, "stage 2 (augmentation)": result.history},
                      cfg.target_domain, curves_path)
    return _train_metrics(result, "stage2")


def _read_history(model_dir: str) -> list[dict]:
    path = os.path.join(model_dir, "history.json")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return json.load(fh)


def write_curves_html(histories: Mapping[str, list[dict]], target: str, path: str) -> None:
    """Training loss and validation AUC of the target per epoch, one line per stage, as one HTML file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for stage, hist in histories.items():
        if not hist:
            continue
        epochs = [h["epoch"] for h in hist]
        ax_loss.plot(epochs, [h["train_loss"] for h in hist], marker="o", label=stage)
        key = f"val_auc_{target}"
        if key in hist[0]:
            ax_auc.plot(epochs, [h[key] for h in hist], marker="o", label=stage)
    ax_loss.set(title="training loss", xlabel="epoch")
    ax_auc.set(title=f"validation AUC ({target})", xlabel="epoch")
    for ax in (ax_loss, ax_auc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    png = base64.b64encode(buf.getvalue()).decode()
    write_text(path, f"<html><body><h3>CDAnet training curves</h3><img src='data:image/png;base64,{png}'/></body></html>")


# ---- evaluate -----------------------------------------------------------------------------------------
@dataclass
class EvaluationOutput:
    metrics: dict[str, float]
    target_auc: float
    fpr: list[float]
    tpr: list[float]
    thresholds: list[float]
    confusion_matrix: list[list[int]]


def evaluate(model_dir: str, processed_dir: str, predictions_dir: str, threshold: float | None = None,
             pretrained_dir: str | None = None) -> EvaluationOutput:
    """Test AUC/logloss per domain; ROC and confusion matrix of the target domain.

    ``model_dir`` is the candidate (the augmentation network scores the target domain only), giving
    ``<target>_test_auc`` / ``_logloss``. With ``pretrained_dir`` (the stage-1 translation network,
    which scores both domains through its vanilla towers R_s, R_t) the source domain gets test
    metrics too: ``stage1_<domain>_test_auc`` / ``_logloss`` for both domains, its predictions in
    ``<predictions_dir>/stage1/``.
    """
    from cdanet.training import evaluate_model_dir

    scored = {"": evaluate_model_dir(model_dir, processed_dir, split="test", predictions_dir=predictions_dir)}
    if pretrained_dir:
        scored["stage1_"] = evaluate_model_dir(pretrained_dir, processed_dir, split="test",
                                               predictions_dir=os.path.join(predictions_dir, "stage1"))
    metrics = {
        f"{prefix}{domain}_test_{name}": float(getattr(m, name))
        for prefix, res in scored.items() for domain, m in res.domains.items() for name in ("auc", "logloss")
    }
    result = scored[""]
    target = result.target_domain
    roc = result.roc(target)
    # Without a chosen threshold, the confusion matrix uses the target's positive rate as the cut-off.
    cm = result.confusion_matrix(target, threshold)
    return EvaluationOutput(metrics, float(result.domains[target].auc), roc.fpr, roc.tpr, roc.thresholds, cm)


# ---- gate and registry ------------------------------------------------------------------------------
def _tracking_uri(uri: str) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise PipelineParameterError(
            "no MLflow tracking URI: pass mlflow_tracking_uri or provide MLFLOW_TRACKING_URI "
            "(in a cluster, from the Secret given to `pipeline.py compile --mlflow-secret`)"
        )
    return uri


def gate(config_path: str, processed_dir: str, candidate_auc: float, tracking_uri: str, model_name: str):
    """Floor + non-regression against the champion, scored on this run's test split."""
    from cdanet.gate import GateConfig, decide
    from cdanet.registry import score_champion_on

    pc = PipelineConfig.load(config_path)
    domain = pc.experiment.target_domain
    champion_auc = score_champion_on(processed_dir, _tracking_uri(tracking_uri), model_name, domain, split="test")
    return decide(candidate_auc, champion_auc, GateConfig(min_auc=pc.min_auc, tolerance=pc.tolerance, domain=domain))


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
    from cdanet.gate import GateDecision
    from cdanet.registry import register_candidate

    pc = PipelineConfig.load(config_path)
    with open(decision_path) as fh:
        decision = GateDecision.from_json(fh.read())
    lineage = {"data_fingerprint": data_fingerprint(processed_dir, pc.experiment.domains),
               "pipeline_run_id": pipeline_run_id, "code_version": __version__}
    params = {**pc.summary(), "d": pc.experiment.model.d, "max_epochs": pc.experiment.train.max_epochs,
              "batch_size": pc.experiment.train.batch_size, "learning_rate": pc.experiment.train.learning_rate}
    version = register_candidate(
        model_dir, tracking_uri=_tracking_uri(tracking_uri), model_name=model_name,
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, params=params,
        decision=decision, lineage=lineage, pipeline_run_id=pipeline_run_id, processed_root=processed_dir,
    )
    state = "promoted to @champion" if decision.blessed else "recorded as rejected (champion unchanged)"
    return (f"# {model_name} version {version.version}: {state}\n\n" + decision.to_markdown() +
            f"\n\nmodel URI: `{version.model_uri}`\n")
