"""A trained model as a self-describing directory.

Layout (everything needed to rebuild the model without the training code's state)::

    <model_dir>/config.json            ExperimentConfig.to_dict()
    <model_dir>/schemas/<domain>.json  DomainSchema of every domain the model embeds
    <model_dir>/weights.pt             state_dict only: torch.load(..., weights_only=True) works
    <model_dir>/model.json             kind, class, domains, schema fingerprints, versions, extra
    <model_dir>/history.json           per-epoch training history of the stage that produced it
    <model_dir>/vocab/<domain>/<field>.txt  the vocabularies the indices were encoded with (when known)

The vocabularies are copied from the processed data the model was trained on, in the format of
:mod:`cdanet.contract.vocab` (line i = raw value of index i, line 0 = OOV marker), so the model
can later score data that was preprocessed with other vocabularies
(:func:`cdanet.contract.remap_table`) and a serving caller can encode raw values
(:attr:`LoadedModel.vocabularies`). Data written without vocabularies (the synthetic test data)
gives a model directory without them; ``model.json["vocab_fingerprints"]`` lists the domains that
have them.

Writes are atomic: the directory is assembled under a temporary name next to ``path`` and renamed
into place, so a crash leaves either the previous model or nothing at ``path``, never half a model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import cdanet
from cdanet.config import ExperimentConfig
from cdanet.contract import (
    VOCAB_DIR,
    DomainSchema,
    SchemaError,
    Vocabulary,
    domain_dir,
    load_vocabularies,
    read_vocabularies,
    vocab_fingerprint,
    write_vocabularies,
)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
SCHEMAS_DIR = "schemas"
HISTORY_FILE = "history.json"

logger = logging.getLogger(__name__)

KIND_TRANSLATION = "translation"
KIND_AUGMENTATION = "augmentation"


class ModelDirError(ValueError):
    """A model directory is missing files or was written by an incompatible version."""


@dataclass
class LoadedModel:
    """A model rebuilt from a model directory, in eval mode.

    ``vocabularies[domain][field]`` holds the raw values by index (``[0]`` is the OOV marker) of
    every categorical field of the domains saved with vocabularies; empty for model directories
    written without them.
    """

    model: nn.Module
    cfg: ExperimentConfig
    schemas: dict[str, DomainSchema]
    meta: dict[str, Any]
    vocabularies: dict[str, dict[str, Vocabulary]] = field(default_factory=dict)


def model_kind(model: nn.Module, cfg: ExperimentConfig) -> str:
    """``"translation"`` (stage 1), ``"augmentation"`` (stage 2) or the baseline's name."""
    from cdanet.models import AugmentationNetwork, TranslationNetwork

    if isinstance(model, TranslationNetwork):
        return KIND_TRANSLATION
    if isinstance(model, AugmentationNetwork):
        return KIND_AUGMENTATION
    return cfg.model.name


def _build(kind: str, cfg: ExperimentConfig, schemas: dict[str, DomainSchema]) -> nn.Module:
    from cdanet.models import AugmentationNetwork, build_model

    if kind == KIND_AUGMENTATION:
        # from_translation() and fresh() build the same parameters; only their values differ.
        return AugmentationNetwork.fresh(cfg, schemas)
    if kind == KIND_TRANSLATION and cfg.model.name != "cdanet":
        raise ModelDirError(f"model kind {kind!r} needs config model.name 'cdanet', got {cfg.model.name!r}")
    return build_model(cfg, schemas)


def save_model_dir(
    model: nn.Module,
    cfg: ExperimentConfig,
    schemas: Mapping[str, DomainSchema],
    path: str,
    extra: dict[str, Any] | None = None,
    *,
    history: Sequence[Mapping[str, Any]] | None = None,
    processed_root: str | None = None,
) -> str:
    """Write ``model`` as a model directory at ``path`` (replacing one that is there); return ``path``.

    ``schemas`` must hold every domain the model was built with; ``extra`` (JSON-serialisable)
    lands under ``model.json["extra"]`` (e.g. the training stage's best epoch and validation AUC);
    ``history`` (the stage's per-epoch entries) is written as ``history.json`` (``[]`` when absent).
    ``processed_root``: the processed data the model was trained on; the vocabularies of every
    domain that has them are checked against ``schemas`` and copied to ``vocab/<domain>/``.
    """
    path = os.path.abspath(path)
    kind = model_kind(model, cfg)
    domains = sorted(set(getattr(model, "train_domains", ())) | set(getattr(model, "eval_domains", ())) | set(cfg.domains))
    missing = [d for d in domains if d not in schemas]
    if missing:
        raise SchemaError(f"save_model_dir: no schema given for domain(s) {missing} of the model")
    vocabs = {} if processed_root is None else _training_vocabularies(processed_root, {d: schemas[d] for d in domains})
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "class": type(model).__name__,
        "model_name": cfg.model.name,
        "ablation": cfg.model.ablation,
        "train_domains": list(getattr(model, "train_domains", ())),
        "eval_domains": list(getattr(model, "eval_domains", ())),
        "domains": domains,
        "schema_fingerprints": {d: schemas[d].fingerprint() for d in domains},
        "vocab_fingerprints": {d: vocab_fingerprint(v) for d, v in vocabs.items()},
        "library_version": cdanet.__version__,
        "torch_version": torch.__version__,
        "extra": dict(extra or {}),
    }
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        with open(os.path.join(tmp, CONFIG_FILE), "w") as fh:
            fh.write(cfg.to_json())
        os.makedirs(os.path.join(tmp, SCHEMAS_DIR))
        for d in domains:
            with open(os.path.join(tmp, SCHEMAS_DIR, f"{d}.json"), "w") as fh:
                fh.write(schemas[d].to_json())
        for d, v in vocabs.items():
            write_vocabularies(os.path.join(tmp, VOCAB_DIR, d), v)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, os.path.join(tmp, WEIGHTS_FILE))
        with open(os.path.join(tmp, HISTORY_FILE), "w") as fh:
            json.dump([dict(h) for h in history or ()], fh, indent=2)
        with open(os.path.join(tmp, MODEL_FILE), "w") as fh:
            json.dump(meta, fh, indent=2, sort_keys=True)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _training_vocabularies(
    processed_root: str, schemas: Mapping[str, DomainSchema]
) -> dict[str, dict[str, Vocabulary]]:
    """The vocabularies under ``processed_root`` of the domains that have them, checked against ``schemas``."""
    out: dict[str, dict[str, Vocabulary]] = {}
    for d, schema in schemas.items():
        on_disk = DomainSchema.load(domain_dir(processed_root, d))
        # Vocabularies of another preprocessing run would silently relabel every index.
        schema.check_compatible(on_disk, f"the processed data at {domain_dir(processed_root, d)}")
        vocabs = load_vocabularies(processed_root, schema)
        if vocabs is None:
            logger.info("save_model_dir: %s has no vocabularies of domain %r; the model directory will not carry "
                        "them", processed_root, d)
        else:
            out[d] = vocabs
    return out


def _swap_into_place(tmp: str, path: str) -> None:
    # os.replace cannot overwrite a non-empty directory: move the old one aside first.
    old = None
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)  # e.g. an output directory a pipeline runner pre-created
        else:
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=os.path.dirname(path))
            os.rmdir(old)
            os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError as e:
        raise ModelDirError(
            f"{path} is missing; a model directory holds {CONFIG_FILE}, {MODEL_FILE}, {WEIGHTS_FILE} "
            f"and {SCHEMAS_DIR}/<domain>.json as written by cdanet.artifacts.save_model_dir"
        ) from e
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{path} is not valid JSON: {e}") from e


def read_model_config(path: str) -> ExperimentConfig:
    """The config stored in the model directory ``path`` (without loading the weights)."""
    if not os.path.isdir(path):
        raise ModelDirError(f"no model directory at {path}")
    return ExperimentConfig.from_dict(_read_json(os.path.join(path, CONFIG_FILE)))


def load_model_dir(
    path: str,
    map_location: str | torch.device = "cpu",
    expected_schemas: Mapping[str, DomainSchema] | None = None,
) -> LoadedModel:
    """Rebuild the model stored at ``path`` (in eval mode) with its config and schemas.

    The stored schemas must still match the fingerprints recorded at save time, and, when
    ``expected_schemas`` (e.g. the processed data's schemas) are given, those too: a mismatch
    raises :class:`~cdanet.contract.SchemaError` naming the domain and the differing fields.
    """
    if not os.path.isdir(path):
        raise ModelDirError(f"no model directory at {path}")
    meta = _read_json(os.path.join(path, MODEL_FILE))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelDirError(
            f"{os.path.join(path, MODEL_FILE)} has format_version {meta.get('format_version')!r}; "
            f"this library reads version {FORMAT_VERSION}"
        )
    cfg = ExperimentConfig.from_dict(_read_json(os.path.join(path, CONFIG_FILE))).validate()
    schemas: dict[str, DomainSchema] = {}
    for d, fp in meta["schema_fingerprints"].items():
        schema_path = os.path.join(path, SCHEMAS_DIR, f"{d}.json")
        schema = DomainSchema.from_dict(_read_json(schema_path), source=schema_path)
        if schema.fingerprint() != fp:
            raise SchemaError(f"{schema_path} does not match the fingerprint {fp} recorded in {MODEL_FILE}")
        if expected_schemas is not None and d in expected_schemas:
            expected_schemas[d].check_compatible(schema, f"the schema stored with the model at {path}")
        schemas[d] = schema
    vocabularies: dict[str, dict[str, Vocabulary]] = {}
    for d, fp in meta.get("vocab_fingerprints", {}).items():
        if d not in schemas:
            raise ModelDirError(f"{os.path.join(path, MODEL_FILE)} lists vocabularies of domain {d!r}, which has no schema")
        vocabularies[d] = read_vocabularies(os.path.join(path, VOCAB_DIR, d), schemas[d])
        if vocab_fingerprint(vocabularies[d]) != fp:
            raise ModelDirError(
                f"{os.path.join(path, VOCAB_DIR, d)} does not match the vocabulary fingerprint {fp} recorded in {MODEL_FILE}"
            )
    model = _build(meta["kind"], cfg, schemas)
    weights_path = os.path.join(path, WEIGHTS_FILE)
    if not os.path.exists(weights_path):
        raise ModelDirError(f"{weights_path} is missing")
    state = torch.load(weights_path, map_location=map_location, weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelDirError(f"{weights_path} does not fit a {meta['class']} built from {CONFIG_FILE}: {e}") from e
    model.to(map_location)
    model.eval()
    return LoadedModel(model=model, cfg=cfg, schemas=schemas, meta=meta, vocabularies=vocabularies)
