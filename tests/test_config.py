"""Typed config: the paper's defaults, profiles, overrides and validation."""

from __future__ import annotations

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
        ({"model.name": "deepfm"}, "unknown model name 'deepfm'"),
        ({"target_domain": "music"}, "unknown target_domain 'music'"),
        ({"source_domain": "movie"}, "both 'movie'"),
        ({"dataset": "criteo"}, "unknown dataset 'criteo'"),
        ({"model.ablation": "no_orth", "model.name": "mlp"}, "only applies to model 'cdanet'"),
        ({"model.ablation": "no_everything"}, "unknown ablation"),
        ({"train.learning_rate": 0}, "learning_rate must be > 0"),
        ({"train.train_fraction": 1.5}, r"train_fraction must be in \(0, 1\]"),
        ({"model.ple_levels": 1}, "ple_levels must be >= 2"),
        ({"model.tower_layers_by_domain": {"music": 2}}, "unknown domains"),
    ],
)
def test_invalid_config_rejected(overrides, message):
    cfg = paper_config().with_overrides(overrides)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


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
    with pytest.raises(ConfigError, match="invalid config keys"):
        ExperimentConfig.from_dict({"model": {"widht": 3}})


def test_model_and_ablation_names_cover_the_paper():
    assert set(MODEL_NAMES) == {"mlp", "share_middle", "star", "ddtcdr", "mmoe", "ple", "cdanet"}
    assert len(ABLATIONS) == 6  # none + the five rows of Table 5
    assert paper_config().model.tower_depth("movie") == 2
    assert paper_config().with_overrides({"model.tower_layers_by_domain": {"movie": 3}}).model.tower_depth("movie") == 3
