"""One experiment end to end, and its stages as separately callable steps for the pipeline.

``run_experiment`` = load data -> stage 1 -> stage 2 -> test evaluation -> outputs; its training part,
:func:`fit_stages`, scores only the validation split (hyperparameter search uses it). The Kubeflow
pipeline runs the same work as separate steps (:func:`pretrain`, :func:`finetune`,
:func:`evaluate_model_dir`) that hand model directories to each other. Both paths seed the model
initialisation per stage, so they produce the same model for the same config.

Stage plan per config (:func:`plan_stages`):

=====================  ==========================================================================
cdanet                 pretrain (TranslationNetwork, Eq. 9) -> finetune (AugmentationNetwork, Eq. 11)
cdanet/no_translation  finetune only: ``AugmentationNetwork.fresh`` from random initialisation
cdanet/no_augmentation pretrain only: the translation network is evaluated on the target domain
baselines              pretrain only, i.e. the baseline's single training stage (``stage="train"``)
=====================  ==========================================================================
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cdanet.artifacts import KIND_TRANSLATION, LoadedModel, load_model_dir, read_model_config, save_model_dir
from cdanet.atomic import write_json
from cdanet.config import ConfigError, ExperimentConfig
from cdanet.contract import DomainSchema, load_schemas
from cdanet.data import (
    DomainData,
    history_clicks,
    linked_history,
    load_split,
    stable_seed,
    user_history,
    user_link,
    user_link_from_rows,
)
from cdanet.evaluation import EvaluationResult, evaluate
from cdanet.training.trainer import TrainResult, resolve_device, train_model

logger = logging.getLogger(__name__)

HISTORY_FILENAME = "history.json"
MODEL_DIRNAME = "model"


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` produced."""

    cfg: ExperimentConfig
    stages: dict[str, TrainResult]
    test: EvaluationResult
    output_dir: str
    model_dir: str
    predictions_path: str
    metrics_path: str

    @property
    def target_auc(self) -> float:
        return self.test[self.cfg.target_domain].auc


def plan_stages(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The pipeline steps this config needs, in order: a subset of ("pretrain", "finetune")."""
    if cfg.model.name != "cdanet":
        return ("pretrain",)
    if cfg.model.ablation == "no_translation":
        return ("finetune",)
    if cfg.model.ablation == "no_augmentation":
        return ("pretrain",)
    return ("pretrain", "finetune")


def _stage1_name(cfg: ExperimentConfig) -> str:
    return "pretrain" if cfg.model.name == "cdanet" else "train"


def load_domain_splits(
    cfg: ExperimentConfig, processed_root: str, schemas: dict[str, DomainSchema], split: str, domains: Iterable[str]
) -> dict[str, DomainData]:
    """Load ``split`` of ``domains``; the target's training split is subsampled by ``train.train_fraction``."""
    out = {}
    for d in domains:
        data = load_split(processed_root, schemas[d], split)
        if split == "train" and d == cfg.target_domain and cfg.train.train_fraction < 1:
            full = len(data)
            data = data.subset(cfg.train.train_fraction, stable_seed(cfg.train.seed, "train_fraction"))
            logger.info("train_fraction %.3g: %s train rows %d -> %d", cfg.train.train_fraction, d, full, len(data))
        out[d] = data
    return out


def _load_for(model: nn.Module, cfg: ExperimentConfig, processed_root: str, schemas: dict[str, DomainSchema],
              cache: dict[tuple[str, str], DomainData]) -> tuple[dict[str, DomainData], dict[str, DomainData]]:
    """Train/validation data of the domains ``model`` needs, loading each split at most once.

    Also sets the model's user profiles (``model.history_fields``) from that training data: the profile
    is a function of the training split, so a stage-2 model built from stage 1 gets the same values again.
    """
    def get(split: str, domains: Iterable[str]) -> dict[str, DomainData]:
        for d in domains:
            if (split, d) not in cache:
                cache[(split, d)] = load_domain_splits(cfg, processed_root, schemas, split, [d])[d]
        return {d: cache[(split, d)] for d in domains}
    train = get("train", model.train_domains)
    _set_histories(model, train)
    return train, get("validation", model.eval_domains)


def _build_stage1(cfg: ExperimentConfig, schemas: dict[str, DomainSchema], processed_root: str) -> nn.Module:
    from cdanet.models import build_model

    torch.manual_seed(stable_seed(cfg.train.seed, "init", _stage1_name(cfg)))
    model = build_model(cfg, schemas)
    if getattr(model, "user_link", None) is not None:
        link = user_link(processed_root, schemas[cfg.source_domain], schemas[cfg.target_domain])
        if link is None:
            logger.warning("model.shared_users: %s has no vocabularies, so no user is linked", processed_root)
        else:
            model.link_users(torch.from_numpy(link))
            logger.info("model.shared_users: %d of %d %s users linked to %s users", int((link[1:] > 0).sum()),
                        len(link) - 1, cfg.target_domain, cfg.source_domain)
    return model


def _set_histories(model: nn.Module, train: dict[str, DomainData]) -> None:
    """model.history_fields: each listed domain's user profiles from its training split; and with
    model.source_history_fields, its users' profiles over the other domain's training split (kept as
    they are when that split is not loaded: stage 2 copies them from stage 1)."""
    for dom, emb in getattr(model, "embeddings", {}).items():
        history = emb.history
        if history is None:
            continue
        k = history.values.shape[1]
        if dom in train:
            history.set_profile(*user_history(train[dom], history.field, k))
        other = next((d for d in train if d != dom), None)
        if history.source_field is not None and other is not None:
            link = torch.from_numpy(user_link_from_rows(train[dom], train[other]))
            values, counts, totals = user_history(train[other], history.source_field, k)
            clicks = history_clicks(train[other], history.source_field, values, counts)
            history.set_source_profile(*linked_history((values, counts, totals, clicks), link))
            logger.info("model.source_history_fields: %d %s users carry their profile over %s's %r",
                        int((link > 0).sum()), dom, other, history.source_field)


def _build_stage2(cfg: ExperimentConfig, schemas: dict[str, DomainSchema], translation: nn.Module | None) -> nn.Module:
    from cdanet.models import AugmentationNetwork

    # The fresh prediction tower R_t^aug (Sec. 4.3) draws from the global RNG.
    torch.manual_seed(stable_seed(cfg.train.seed, "init", "finetune"))
    if translation is None:
        return AugmentationNetwork.fresh(cfg, schemas)
    return AugmentationNetwork.from_translation(translation, cfg)


def _stage_extra(result: TrainResult) -> dict[str, Any]:
    return {"stage": result.stage, "best_epoch": result.best_epoch, "best_val_auc": result.best_val_auc,
            "stopped_early": result.stopped_early, "epochs": len(result.history)}


def fit_stages(
    cfg: ExperimentConfig,
    processed_root: str,
    checkpoint_dir: str | None = None,
    *,
    schemas: dict[str, DomainSchema] | None = None,
    data_cache: dict[tuple[str, str], DomainData] | None = None,
    on_epoch_end: Callable[[str, dict[str, Any]], None] | None = None,
) -> tuple[nn.Module, dict[str, TrainResult]]:
    """Train every stage of :func:`plan_stages` on the training split; only the validation split is scored.

    Returns the final model (its best validation weights) and each stage's :class:`TrainResult`.
    ``data_cache`` ((split, domain) -> data) lets repeated calls with the same ``train.seed`` and
    ``train.train_fraction`` share the loaded splits (hyperparameter search). ``on_epoch_end(stage,
    entry)`` is called after each validation of each stage (see :func:`train_model`).
    """
    cfg.validate()
    schemas = schemas if schemas is not None else load_schemas(processed_root, cfg.domains)
    cache = data_cache if data_cache is not None else {}
    stages: dict[str, TrainResult] = {}
    plan = plan_stages(cfg)
    model: nn.Module | None = None

    def callback(stage: str) -> Callable[[dict[str, Any]], None] | None:
        return None if on_epoch_end is None else functools.partial(on_epoch_end, stage)

    if "pretrain" in plan:
        model = _build_stage1(cfg, schemas, processed_root)
        train, val = _load_for(model, cfg, processed_root, schemas, cache)
        stage = _stage1_name(cfg)
        stages[stage] = train_model(model, train, val, cfg, stage, checkpoint_dir, on_epoch_end=callback(stage))
    if "finetune" in plan:
        model = _build_stage2(cfg, schemas, model)
        train, val = _load_for(model, cfg, processed_root, schemas, cache)
        stages["finetune"] = train_model(model, train, val, cfg, "finetune", checkpoint_dir,
                                         on_epoch_end=callback("finetune"))
    assert model is not None  # plan_stages always returns at least one stage
    return model, stages


def run_experiment(
    cfg: ExperimentConfig, processed_root: str, output_dir: str, checkpoint_dir: str | None = None
) -> ExperimentResult:
    """Train and evaluate one config; write the model, predictions, metrics and history under ``output_dir``.

    Outputs: ``model/`` (model directory of the final model), ``predictions.parquet`` (test rows of
    every domain the final model scores), ``metrics.json`` (test metrics plus each stage's best
    epoch / validation AUC) and ``history.json`` (per-epoch entries of every stage).
    """
    cfg.validate()
    schemas = load_schemas(processed_root, cfg.domains)
    model, stages = fit_stages(cfg, processed_root, checkpoint_dir, schemas=schemas)

    device = resolve_device(cfg.train.device)
    test = {d: load_split(processed_root, schemas[d], "test") for d in model.eval_domains}
    result = evaluate(model, test, split="test", batch_size=cfg.train.eval_batch_size, device=device,
                      target_domain=cfg.target_domain)
    os.makedirs(output_dir, exist_ok=True)
    predictions_path, metrics_path = result.write(output_dir)
    final_stage = list(stages.values())[-1]
    model_dir = save_model_dir(model, cfg, schemas, os.path.join(output_dir, MODEL_DIRNAME),
                               extra=_stage_extra(final_stage), history=final_stage.history,
                               processed_root=processed_root)
    write_json(metrics_path, {
        "split": "test",
        "metrics": result.to_dict(),
        "target_domain": cfg.target_domain,
        "model": cfg.model.name,
        "ablation": cfg.model.ablation,
        "stages": {name: _stage_extra(r) for name, r in stages.items()},
    })
    write_json(os.path.join(output_dir, HISTORY_FILENAME), {name: r.history for name, r in stages.items()})
    logger.info("test: %s", ", ".join(f"{d} AUC {m.auc:.4f} logloss {m.logloss:.4f}" for d, m in result.domains.items()))
    return ExperimentResult(cfg, stages, result, output_dir, model_dir, predictions_path, metrics_path)


def pretrain(
    cfg: ExperimentConfig, processed_root: str, model_dir_out: str, checkpoint_dir: str | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Pipeline step 1: train ``build_model(cfg)`` (translation network, or a baseline) and save it.
    ``on_epoch_end``: as in :func:`cdanet.training.trainer.train_model`."""
    cfg.validate()
    if "pretrain" not in plan_stages(cfg):
        raise ConfigError(f"ablation {cfg.model.ablation!r} has no stage 1; run finetune without a pretrained model")
    schemas = load_schemas(processed_root, cfg.domains)
    model = _build_stage1(cfg, schemas, processed_root)
    train, val = _load_for(model, cfg, processed_root, schemas, {})
    result = train_model(model, train, val, cfg, _stage1_name(cfg), checkpoint_dir, on_epoch_end=on_epoch_end)
    save_model_dir(model, cfg, schemas, model_dir_out, extra=_stage_extra(result), history=result.history,
                   processed_root=processed_root)
    return result


def finetune(
    cfg: ExperimentConfig,
    processed_root: str,
    pretrained_model_dir: str | None,
    model_dir_out: str,
    checkpoint_dir: str | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Pipeline step 2: train the augmentation network from a stage-1 model directory and save it.

    ``pretrained_model_dir`` must be None exactly for the ``no_translation`` ablation.
    """
    cfg.validate()
    if "finetune" not in plan_stages(cfg):
        raise ConfigError(f"model {cfg.model.name!r} (ablation {cfg.model.ablation!r}) has no stage 2")
    schemas = load_schemas(processed_root, cfg.domains)
    translation = None
    if cfg.model.ablation == "no_translation":
        if pretrained_model_dir is not None:
            raise ConfigError("ablation 'no_translation' trains from scratch; pass pretrained_model_dir=None")
    else:
        if pretrained_model_dir is None:
            raise ConfigError("finetune needs the stage-1 model directory (pretrained_model_dir)")
        loaded = load_model_dir(pretrained_model_dir, expected_schemas=schemas)
        _check_pretrained(loaded, cfg, pretrained_model_dir)
        translation = loaded.model
    model = _build_stage2(cfg, schemas, translation)
    train, val = _load_for(model, cfg, processed_root, schemas, {})
    result = train_model(model, train, val, cfg, "finetune", checkpoint_dir, on_epoch_end=on_epoch_end)
    save_model_dir(model, cfg, schemas, model_dir_out, extra=_stage_extra(result), history=result.history,
                   processed_root=processed_root)
    return result


def _check_pretrained(loaded: LoadedModel, cfg: ExperimentConfig, path: str) -> None:
    if loaded.meta["kind"] != KIND_TRANSLATION:
        raise ConfigError(f"{path} holds a {loaded.meta['kind']!r} model; stage 2 needs a translation network")
    mine, theirs = cfg.to_dict(), loaded.cfg.to_dict()
    differing = sorted(k for k in mine["model"] if mine["model"][k] != theirs["model"].get(k))
    differing += [k for k in ("dataset", "source_domain", "target_domain") if mine[k] != theirs[k]]
    if differing:
        raise ConfigError(f"{path} was trained with a different config; differing keys: {differing}")


def evaluate_model_dir(
    model_dir: str,
    processed_root: str,
    split: str = "test",
    predictions_dir: str | None = None,
    *,
    batch_size: int | None = None,
    device: str | None = None,
) -> EvaluationResult:
    """Score ``split`` of every domain the stored model scores.

    With ``predictions_dir``, ``predictions.parquet`` and ``metrics.json`` are written there.

    The processed data's schemas must match the ones stored with the model (else ``SchemaError``).
    """
    schemas = load_schemas(processed_root, read_model_config(model_dir).domains)
    loaded = load_model_dir(model_dir, expected_schemas=schemas)
    dev = resolve_device(device or loaded.cfg.train.device)
    loaded.model.to(dev)
    data = {d: load_split(processed_root, schemas[d], split) for d in loaded.model.eval_domains}
    result = evaluate(loaded.model, data, split=split, batch_size=batch_size or loaded.cfg.train.eval_batch_size,
                      device=dev, target_domain=loaded.cfg.target_domain)
    if predictions_dir is not None:
        result.write(predictions_dir)
    return result

