"""Pipeline parameters, the first step's validation, and the cluster verbs without a cluster."""

from __future__ import annotations

import pytest
from helpers import configure

import pipeline as P
from cdanet import orchestration, steps


def test_configure_uses_paper_defaults_per_dataset(tmp_path):
    amazon = configure(tmp_path)
    assert (amazon.experiment.target_domain, amazon.experiment.model.alpha) == ("movie", 0.01)
    taobao = configure(tmp_path, dataset="taobao", glove_uri="")
    assert (taobao.experiment.target_domain, taobao.experiment.model.alpha) == ("ad", 0.03)
    assert taobao.experiment.model.tower_layers == 3
    both = configure(tmp_path, target_domain="book", alpha=0.05)
    assert (both.experiment.source_domain, both.experiment.model.alpha) == ("movie", 0.05)


def test_config_artifact_round_trip(tmp_path):
    cfg = configure(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    assert steps.PipelineConfig.load(str(path)) == cfg
    assert cfg.baseline_margin == 0.005 and cfg.summary()["baseline_margin"] == 0.005


def test_config_frozen_before_the_baseline_check_still_loads(tmp_path):
    import json

    old = json.loads(configure(tmp_path).to_json())
    del old["baseline_margin"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    assert steps.PipelineConfig.load(str(path)).baseline_margin == 0.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(dataset="criteo"), "unknown dataset 'criteo'"),
        (dict(target_domain="music"), "unknown target_domain 'music'"),
        (dict(alpha=-0.1), "model.alpha must be >= 0"),
        (dict(min_auc=1.5), r"min_auc must be in \[0, 1\]"),
        (dict(tolerance=-0.01), "tolerance must be >= 0"),
        (dict(baseline_margin=1.5), r"baseline_margin must be in \[-1, 1\]"),
        (dict(raw_uri="/nonexistent/raw"), "raw_uri '/nonexistent/raw' does not exist"),
        (dict(glove_uri=""), "needs a GloVe file"),
        (dict(extra_overrides=["model.ablation=no_orth"]), "trains full CDAnet"),
        (dict(num_experts=0), r"K \(num_experts\) must be >= 1"),
    ],
)
def test_invalid_parameters_fail_the_first_step(tmp_path, overrides, message):
    with pytest.raises(steps.PipelineParameterError, match=message):
        configure(tmp_path, **overrides)


def test_parse_data_until():
    assert steps.parse_data_until("") is None
    assert steps.parse_data_until("{{$.pipeline_job_schedule_time_utc}}") is None  # manual / local run
    assert steps.parse_data_until("2026-11-28T02:00:00Z") == 1795831200
    with pytest.raises(steps.PipelineParameterError, match="ISO-8601"):
        steps.parse_data_until("yesterday")


def test_parse_params_and_unknown_parameters():
    params = orchestration.parse_params(["max_epochs=5", "alpha=0.02", "model_name=cdanet-prod",
                                         'extra_overrides=["model.dropout=0.1"]'])
    assert params == {"max_epochs": 5, "alpha": 0.02, "model_name": "cdanet-prod",
                      "extra_overrides": ["model.dropout=0.1"]}
    with pytest.raises(SystemExit, match="not of the form key=value"):
        orchestration.parse_params(["max_epochs"])
    with pytest.raises(SystemExit, match=r"unknown pipeline parameter\(s\) \['max_epoch'\]"):
        orchestration._check_params(P.create_pipeline(), {"max_epoch": 3})


def test_cron_must_have_six_fields():
    assert orchestration.validate_cron("0 0 2 * * *") == "0 0 2 * * *"
    with pytest.raises(SystemExit, match="six, seconds first"):
        orchestration.validate_cron("0 2 * * *")


@pytest.mark.parametrize("verb", ["submit", "schedule"])
def test_cluster_verbs_fail_clearly_without_a_cluster(verb, capsys):
    code = P.main([verb, "--host", "http://127.0.0.1:1", "max_epochs=1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot reach Kubeflow Pipelines at http://127.0.0.1:1" in err
