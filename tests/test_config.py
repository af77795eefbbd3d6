"""Typed config: the paper's defaults, profiles, overrides and validation."""

from __future__ import annotations

import json
import re

import pytest

from cdanet.config import (
    ABLATIONS,
    MODEL_NAMES,
    ConfigError,
    ExperimentConfig,
    paper_config,
    tiny_config,
)


def test_paper_defaults_amazon_and_taobao():
    a = paper_config("amazon")
    assert (a.model.d, a.model.num_experts, a.model.expert_layers) == (64, 2, 2)
    assert (a.model.alpha, a.model.beta, a.model.tower_layers) == (0.01, 0.1, 2)
    assert (a.source_domain, a.target_domain) == ("book", "movie")
    t = paper_config("taobao")
    assert (t.model.alpha, t.model.beta, t.model.tower_layers) == (0.03, 0.1, 3)
    assert (t.source_domain, t.target_domain) == ("rec", "ad")
    # either domain can be the target (the paper reports both)
    b = paper_config("amazon", target_domain="book")
    assert (b.source_domain, b.target_domain) == ("movie", "book")


def test_tiny_profile_is_small_and_valid():
    cfg = tiny_config("taobao", model="mmoe")
    assert cfg.model.d == 8 and cfg.train.max_epochs <= 2 and cfg.model.name == "mmoe"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.alpha": -0.1}, "model.alpha must be >= 0"),
        ({"model.beta": -1}, "model.beta must be >= 0"),
        ({"model.num_experts": 0}, r"K \(num_experts\) must be >= 1"),
        ({"model.name": "deepfm"}, r"model.name: expected one of \['mlp', .*\], got 'deepfm'"),
        ({"target_domain": "music"}, "unknown target_domain 'music'"),
        ({"source_domain": "movie"}, "both 'movie'"),
        ({"dataset": "criteo"}, r"dataset: expected one of \['amazon', 'taobao'\], got 'criteo'"),
        ({"model.ablation": "no_orth", "model.name": "mlp"}, "only applies to model 'cdanet'"),
        ({"model.ablation": "no_everything"}, "model.ablation: expected one of"),
        ({"train.learning_rate": 0}, "learning_rate must be > 0"),
        ({"train.train_fraction": 1.5}, r"train_fraction must be in \(0, 1\]"),
        ({"model.ple_levels": 1}, "ple_levels must be >= 2"),
        ({"model.tower_layers_by_domain": {"music": 2}}, "unknown domains"),
    ],
)
def test_invalid_config_rejected(overrides, message):
    # Values outside a fixed set fail when they enter (the override), range problems in validate().
    with pytest.raises(ConfigError, match=message):
        paper_config().with_overrides(overrides).validate()


def test_every_problem_is_reported_at_once():
    cfg = paper_config().with_overrides({"model.alpha": -1, "model.num_experts": 0})
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert "alpha" in str(e.value) and "num_experts" in str(e.value)


def test_overrides_parse_values_and_reject_unknown_keys():
    cfg = paper_config().with_overrides(["model.alpha=0.05", "train.mixed_precision=true", "model.name=ple"])
    assert cfg.model.alpha == 0.05 and cfg.train.mixed_precision is True and cfg.model.name == "ple"
    with pytest.raises(ConfigError, match="unknown config key 'model.alpah'"):
        paper_config().with_overrides(["model.alpah=1"])
    with pytest.raises(ConfigError, match="not of the form"):
        paper_config().with_overrides(["alpha"])


def test_dict_round_trip_and_unknown_keys():
    cfg = paper_config("taobao", model="star")
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"invalid config keys: unknown \['model.widht'\]"):
        ExperimentConfig.from_dict({"model": {"widht": 3}})


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=2.5", "train.batch_size: expected int, got 2.5"),
        ("train.batch_size=true", "train.batch_size: expected int, got True"),
        ("model.d=abc", "model.d: expected int, got 'abc'"),
        ("train.mixed_precision=1", "train.mixed_precision: expected bool, got 1"),
        ("train.progress=yes", "train.progress: expected bool, got 'yes'"),
        ("model.alpha=high", "model.alpha: expected float, got 'high'"),
        ("train.finetune_max_epochs=1.5", "train.finetune_max_epochs: expected int or null, got 1.5"),
        ('model.tower_layers_by_domain={"movie": 2.5}',
         "model.tower_layers_by_domain: expected a mapping of str to int, got {'movie': 2.5}"),
        ("model.history_fields=[1]", r"model.history_fields: expected a mapping of str to str, got \[1\]"),
        ("model.history_fields.movie=3", None),  # an entry of a str mapping stays the string '3'
        ("train.device=tpu", r"train.device: expected one of \['auto', 'cpu', 'cuda'\], got 'tpu'"),
    ],
)
def test_overrides_are_type_checked_in_one_line(override, message):
    if message is None:
        assert paper_config().with_overrides([override]).model.history_fields["movie"] == "3"
        return
    with pytest.raises(ConfigError) as e:
        paper_config().with_overrides([override])
    assert "\n" not in str(e.value)
    assert re.fullmatch(message, str(e.value)), str(e.value)
    # the same check guards a config read back from JSON (a tuned config, a frozen artifact)
    key, value = override.split("=", 1)
    section, name = key.split(".")[:2]
    if key.count(".") == 1:
        d = paper_config().to_dict()
        d[section][name] = json.loads(value) if value not in ("abc", "yes", "high", "tpu") else value
        with pytest.raises(ConfigError, match=r"^" + re.escape(key) + ": expected"):
            ExperimentConfig.from_dict(d)


def test_float_settings_take_ints_int_settings_integral_floats_and_optional_ones_null():
    cfg = paper_config().with_overrides({"model.alpha": 1, "train.finetune_learning_rate": None})
    assert cfg.model.alpha == 1.0 and isinstance(cfg.model.alpha, float)
    assert cfg.with_overrides(["train.finetune_learning_rate=0.0005"]).train.finetune_learning_rate == 0.0005
    # KFP hands the numbers of dict/list parameters over as doubles: an integral one is an int.
    ints = paper_config().with_overrides({"train.batch_size": 512.0, "model.tower_layers_by_domain": {"movie": 3.0}})
    assert type(ints.train.batch_size) is int and type(ints.model.tower_layers_by_domain["movie"]) is int


def test_model_and_ablation_names_cover_the_paper():
    assert set(MODEL_NAMES) == {"mlp", "share_middle", "star", "ddtcdr", "mmoe", "ple", "cdanet"}
    assert len(ABLATIONS) == 6  # none + the five rows of Table 5
    assert paper_config().model.tower_depth("movie") == 2
    assert paper_config().with_overrides({"model.tower_layers_by_domain": {"movie": 3}}).model.tower_depth("movie") == 3
