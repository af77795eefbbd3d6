"""cdanet.artifacts: model directory round trips, fingerprints and atomic writes."""

from __future__ import annotations

import json
import os

import pytest
import torch

from cdanet.artifacts import ModelDirError, load_model_dir, save_model_dir
from cdanet.config import tiny_config
from cdanet.contract import DomainSchema, FieldSpec, SchemaError
from cdanet.data import load_split
from cdanet.evaluation import predict_scores
from cdanet.models import AugmentationNetwork, build_model


def _models(schemas: dict[str, DomainSchema]) -> dict[str, tuple[torch.nn.Module, object]]:
    torch.manual_seed(0)
    cdanet_cfg = tiny_config(model="cdanet")
    translation = build_model(cdanet_cfg, schemas)
    star_cfg = tiny_config(model="star")
    return {
        "translation": (translation, cdanet_cfg),
        "augmentation": (AugmentationNetwork.from_translation(translation, cdanet_cfg), cdanet_cfg),
        "star": (build_model(star_cfg, schemas), star_cfg),
    }


@pytest.mark.parametrize("kind", ["translation", "augmentation", "star"])
def test_round_trip_reproduces_scores(processed_dir, processed_schemas, tmp_path, kind) -> None:
    model, cfg = _models(processed_schemas)[kind]
    path = save_model_dir(model, cfg, processed_schemas, str(tmp_path / "m"), extra={"best_epoch": 3},
                          history=[{"epoch": 1, "train_loss": 0.5}])
    assert sorted(os.listdir(path)) == ["config.json", "history.json", "model.json", "schemas", "weights.pt"]
    state = torch.load(os.path.join(path, "weights.pt"), weights_only=True)
    assert state.keys() == model.state_dict().keys()

    loaded = load_model_dir(path, expected_schemas=processed_schemas)
    assert type(loaded.model) is type(model) and not loaded.model.training
    assert loaded.meta["kind"] == kind and loaded.meta["extra"] == {"best_epoch": 3}
    assert loaded.meta["schema_fingerprints"]["movie"] == processed_schemas["movie"].fingerprint()
    assert loaded.cfg == cfg and loaded.schemas == processed_schemas
    test = load_split(processed_dir, processed_schemas["movie"], "test")
    assert (predict_scores(loaded.model, test) == predict_scores(model, test)).all()


def test_schema_mismatch_and_tampering_are_detected(processed_schemas, tmp_path) -> None:
    model, cfg = _models(processed_schemas)["star"]
    path = save_model_dir(model, cfg, processed_schemas, str(tmp_path / "m"))
    movie = processed_schemas["movie"]
    grown = DomainSchema(movie.dataset, movie.domain, tuple(
        FieldSpec(f.name, f.kind, vocab_size=f.vocab_size + 1) if f.name == "genre" else f for f in movie.fields))
    with pytest.raises(SchemaError, match=r"domain 'movie' does not match the schema stored with the model.*\['genre'\]"):
        load_model_dir(path, expected_schemas={**processed_schemas, "movie": grown})

    schema_file = os.path.join(path, "schemas", "movie.json")
    d = json.load(open(schema_file))
    d["fields"][0]["vocab_size"] += 1
    json.dump(d, open(schema_file, "w"))
    with pytest.raises(SchemaError, match=r"movie\.json does not match the fingerprint"):
        load_model_dir(path)


def test_missing_files_are_named(processed_schemas, tmp_path) -> None:
    with pytest.raises(ModelDirError, match="no model directory"):
        load_model_dir(str(tmp_path / "nowhere"))
    model, cfg = _models(processed_schemas)["star"]
    path = save_model_dir(model, cfg, processed_schemas, str(tmp_path / "m"))
    os.remove(os.path.join(path, "weights.pt"))
    with pytest.raises(ModelDirError, match=r"weights\.pt is missing"):
        load_model_dir(path)


def test_failed_save_leaves_nothing_and_overwrite_replaces(processed_schemas, tmp_path) -> None:
    model, cfg = _models(processed_schemas)["star"]
    target = tmp_path / "m"
    with pytest.raises(TypeError):
        save_model_dir(model, cfg, processed_schemas, str(target), extra={"bad": object()})  # not JSON
    assert os.listdir(tmp_path) == []  # neither the model nor a temp dir

    save_model_dir(model, cfg, processed_schemas, str(target), extra={"v": 1})
    with pytest.raises(TypeError):
        save_model_dir(model, cfg, processed_schemas, str(target), extra={"bad": object()})
    assert load_model_dir(str(target)).meta["extra"] == {"v": 1}  # the previous model is intact
    save_model_dir(model, cfg, processed_schemas, str(target), extra={"v": 2})
    assert load_model_dir(str(target)).meta["extra"] == {"v": 2}
    assert os.listdir(tmp_path) == ["m"]
