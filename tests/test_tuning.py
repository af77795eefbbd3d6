"""Hyperparameter search (``cdanet tune``): spaces, the study on tiny data, and the pipeline taking its winner.

The studies run on a copy of the tiny processed data whose test split is deleted: a search that
read it would fail.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import re
import shlex
import shutil
from unittest import mock

import optuna
import pytest
import yaml
from helpers import configure, configure_as_compiled

import pipeline as P
from cdanet import orchestration, steps
from cdanet.cli import main
from cdanet.config import ConfigError, ExperimentConfig, tiny_config
from cdanet.params import HYPERPARAMETERS
from cdanet.tuning import (
    STAGE_STEP_STRIDE,
    CategoricalParam,
    FloatParam,
    IntParam,
    SearchSpace,
    SpaceError,
    default_space,
    run_study,
    study_name_for,
    tuned_overrides,
    validation_auc,
)

FIXED = ["train.num_threads=1"]  # a fixed thread count: the re-scored AUC must match the study's exactly


@pytest.fixture(scope="module")
def no_test_dir(processed_dir, tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("tune") / "processed")
    shutil.copytree(processed_dir, root)
    removed = glob.glob(os.path.join(root, "*", "test*.parquet"))
    assert len(removed) == 2
    for path in removed:
        os.remove(path)
    return root


def _tune(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--log-level", "WARNING", "tune", *argv])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def study(no_test_dir, tmp_path_factory):
    """``cdanet tune`` on CDAnet, tiny profile, three trials; then resumed to four."""
    output = str(tmp_path_factory.mktemp("study"))
    argv = ["--processed", no_test_dir, "--output", output, "--profile", "tiny", "--model", "cdanet",
            *(a for f in FIXED for a in ("--set", f))]
    code, printed = _tune([*argv, "--trials", "3"])
    assert code == 0, printed
    rows_after_3 = _rows(output)
    code, resumed = _tune([*argv, "--trials", "4"])
    assert code == 0, resumed
    return output, printed, rows_after_3, resumed


def _rows(output: str) -> list[dict[str, str]]:
    with open(os.path.join(output, "trials.csv")) as fh:
        return list(csv.DictReader(fh))


# ---- spaces ---------------------------------------------------------------------------------------


def test_space_yaml_form_round_trips_and_default_spaces_are_valid(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "train.learning_rate: {type: float, low: 1e-4, high: 1e-2, log: true}\n"  # 1e-4 is a YAML string
        "model.num_experts: {type: int, low: 1, high: 4}\n"
        "train.embedding_update: [lazy, dense]\n"
        "model.dropout: {type: float, low: 0.0, high: 0.4, step: 0.1}\n"
    )
    space = SearchSpace.load(str(path))
    assert dict(space.params) == {
        "train.learning_rate": FloatParam(1e-4, 1e-2, log=True),
        "model.num_experts": IntParam(1, 4),
        "train.embedding_update": CategoricalParam(("lazy", "dense")),
        "model.dropout": FloatParam(0.0, 0.4, step=0.1),
    }
    assert SearchSpace.from_dict(yaml.safe_load(yaml.safe_dump(space.to_dict(), sort_keys=False))) == space
    space.validate(tiny_config())
    for model in ("cdanet", "mlp", "ddtcdr", "ple"):
        for profile, make in (("tiny", tiny_config), ("paper", None)):
            cfg = make("amazon", None, model) if make else ExperimentConfig().with_overrides({"model.name": model})
            keys = default_space(model, profile).validate(cfg).keys
            assert {"train.learning_rate", "model.dropout", "model.d", "train.batch_size"} <= set(keys)
            assert ({"model.alpha", "model.beta"} <= set(keys)) == (model == "cdanet")


@pytest.mark.parametrize(
    ("spec", "fixed", "message"),
    [
        ({"model.nope": {"type": "float", "low": 0, "high": 1}}, [], r"model\.nope: unknown config key"),
        ({"model.d": {"type": "float", "low": 4, "high": 64}}, [], r"model\.d: is an integer field; use type int"),
        ({"train.learning_rate": {"type": "float", "low": 0.1, "high": 0.01}}, [], "low must be < high"),
        ({"model.alpha": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, [], "log needs low > 0"),
        ({"model.dropout": {"type": "float", "low": 0.0, "high": 1.0}}, [],
         r"value 1\.0 gives an invalid config \(model\.dropout must be < 1, got 1\.0\)"),
        ({"train.batch_size": {"type": "categorical", "choices": [64, "big"]}}, [],
         r"is an integer field; choices \['big'\] are not"),
        ({"train.batch_size": {"type": "categorical", "choices": []}}, [], "choices is empty"),
        ({"model.alpha": {"type": "uniform", "low": 0, "high": 1}}, [], "type must be one of"),
        ({"model.alpha": {"type": "float", "low": 0.01, "hgh": 0.1}}, [], r"unknown field\(s\) \['hgh'\]"),
        ({"model.alpha": {"type": "float", "low": 0.01, "high": 0.1}}, ["model.alpha"], "also fixed with --set"),
        ({"model.name": ["mlp", "cdanet"]}, [], "not searchable"),
        ({}, [], "expected a non-empty mapping"),
    ],
)
def test_a_bad_space_is_rejected_in_one_line(spec, fixed, message):
    with pytest.raises(SpaceError, match=message) as info:
        SearchSpace.from_dict(spec).validate(tiny_config(), fixed)
    assert "\n" not in str(info.value) and str(info.value).startswith("invalid search space: ")


def test_the_cli_rejects_a_bad_space_before_reading_data(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("model.dropout: {type: float, low: 0.0, high: 1.5}\ntrain.nope: [1, 2]\n")
    out = tmp_path / "out"
    code = main(["tune", "--processed", str(tmp_path / "missing"), "--output", str(out), "--profile", "tiny",
                 "--space", str(space)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith("cdanet tune: invalid search space: model.dropout: value 1.5 gives an invalid config")
    assert "train.nope: unknown config key" in err
    assert not out.exists()


# ---- the study ----------------------------------------------------------------------------------


def test_the_study_runs_the_trials_and_reports_the_best_validation_trial(study, no_test_dir):
    output, printed, rows, _ = study
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    assert {r["state"] for r in rows} == {"COMPLETE"}
    values = [float(r["value"]) for r in rows]
    assert len(set(values)) == 3 and all(0.0 < v < 1.0 for v in values)
    winner = max(rows, key=lambda r: float(r["value"]))
    assert f"best trial #{winner['number']}: validation AUC {float(winner['value']):.4f}" in printed

    stored = optuna.load_study(study_name="cdanet-amazon-movie-cdanet",
                               storage=f"sqlite:///{os.path.join(output, 'study.db')}")
    assert stored.best_trial.number == int(winner["number"])
    # Each validation of each stage was reported, stage 2 offset from stage 1 (tiny: 2 epochs per stage).
    assert sorted(stored.trials[0].intermediate_values) == [0, 1, STAGE_STEP_STRIDE, STAGE_STEP_STRIDE + 1]


def test_best_config_round_trips_with_the_winning_params_and_its_validation_auc(study, no_test_dir):
    output, _, rows, _ = study
    winner = max(rows, key=lambda r: float(r["value"]))
    with open(os.path.join(output, "best_config.json")) as fh:
        best = ExperimentConfig.from_dict(json.load(fh)).validate()
    flat = {f"{s}.{k}": v for s in ("model", "train") for k, v in best.to_dict()[s].items()}
    params = {k.removeprefix("params_"): json.loads(v) for k, v in winner.items() if k.startswith("params_")}
    assert set(params) == set(default_space("cdanet", "tiny").keys)
    assert {k: flat[k] for k in params} == params
    assert (best.model.name, best.train.num_threads, best.train.max_epochs) == ("cdanet", 1, 2)  # profile + --set
    # The trial's value is the validation AUC of exactly that config (training is deterministic on CPU).
    value, stages = validation_auc(best, no_test_dir)
    assert value == pytest.approx(float(winner["value"]), abs=1e-12)
    assert set(stages) == {"pretrain", "finetune"}


def test_a_study_resumes_and_refuses_a_different_space(study, no_test_dir):
    output, _, first, resumed = study
    rows = _rows(output)
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[:3] == first  # the first three trials were kept, not re-run
    assert "study: 4 trials (4 complete); 1 run now" in resumed
    base = tiny_config().with_overrides(FIXED)
    with pytest.raises(ConfigError, match="was run with a different space"):
        run_study(base, no_test_dir, output, default_space("mlp", "tiny"), n_trials=5, fixed=FIXED)
    assert len(_rows(output)) == 4


class _PruneAfterSecondReport(optuna.pruners.BasePruner):
    """Prunes every trial but the first at its second validation."""

    def prune(self, study, trial) -> bool:
        return trial.number > 0 and len(trial.intermediate_values) >= 2


def test_pruned_trials_stop_training_and_never_win(no_test_dir, tmp_path):
    base = tiny_config("amazon", None, "mlp").with_overrides([*FIXED, "train.max_epochs=4", "train.patience=4"])
    space = SearchSpace.of({"train.learning_rate": FloatParam(1e-3, 3e-2, log=True)})
    result = run_study(base, no_test_dir, str(tmp_path), space, n_trials=3, fixed=FIXED,
                       pruner=_PruneAfterSecondReport())
    trials = optuna.load_study(study_name=study_name_for(base), storage=result.storage_url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "PRUNED"]
    assert [len(t.intermediate_values) for t in trials] == [4, 2, 2]  # pruned after 2 of 4 epochs
    assert result.best_number == 0 and result.counts == {"COMPLETE": 1, "PRUNED": 2}
    assert [r["state"] for r in _rows(str(tmp_path))] == ["COMPLETE", "PRUNED", "PRUNED"]


# ---- the pipeline takes the winner ---------------------------------------------------------------


def _configure(tmp_path, **overrides) -> steps.PipelineConfig:
    """The paper profile with the pipeline's defaults (every other hyperparameter unset), 7 epochs and
    seed 3 (the tuned study's differ)."""
    unset = {name: None for name in HYPERPARAMETERS}
    return configure(tmp_path, **{**unset, "profile": "paper", "max_epochs": 7, "seed": 3, **overrides})


def test_configure_takes_the_tuned_hyperparameters(study, tmp_path):
    output, _, _, _ = study
    path = os.path.join(output, "best_config.json")
    best = ExperimentConfig.from_dict(json.load(open(path)))
    cfg = _configure(tmp_path, tuned_config_uri=path, extra_overrides=["model.dropout=0.3"]).experiment
    flat = {f"{s}.{k}": v for s in ("model", "train") for k, v in cfg.to_dict()[s].items()}
    expected = {**tuned_overrides(best), "model.dropout": 0.3}  # extra_overrides still win
    assert {k: flat[k] for k in expected} == expected
    assert (cfg.model.alpha, cfg.model.d) == (best.model.alpha, best.model.d)
    assert (cfg.train.max_epochs, cfg.train.seed, cfg.train.num_threads) == (7, 3, 0)  # the pipeline's, not the study's
    untuned = _configure(tmp_path).experiment
    assert (untuned.model.alpha, untuned.model.d) == (0.01, 64)
    # A hyperparameter the run sets beats the tuned config's (and extra_overrides beat both).
    mine = _configure(tmp_path, tuned_config_uri=path, batch_size=512, learning_rate=0.0042).experiment
    assert (mine.train.batch_size, mine.train.learning_rate, mine.model.d) == (512, 0.0042, best.model.d)


def test_configure_rejects_a_tuned_config_of_another_run(study, tmp_path):
    output, _, _, _ = study
    path = os.path.join(output, "best_config.json")
    with pytest.raises(steps.PipelineParameterError, match="was tuned for amazon/movie, this run trains amazon/book"):
        _configure(tmp_path, tuned_config_uri=path, target_domain="book")
    mlp = tmp_path / "mlp.json"
    mlp.write_text(tiny_config("amazon", None, "mlp").to_json())
    with pytest.raises(steps.PipelineParameterError, match="holds model 'mlp'"):
        _configure(tmp_path, tuned_config_uri=str(mlp))
    with pytest.raises(steps.PipelineParameterError, match="cannot read the tuned config"):
        _configure(tmp_path, tuned_config_uri=str(tmp_path / "missing.json"))


def test_the_pipeline_parameter_reaches_the_configure_step(study, tmp_path):
    # `python pipeline.py run ... tuned_config_uri=<best_config.json>`: parsed, known to the pipeline,
    # wired to the configure task, and applied by the configure component.
    output, _, _, _ = study
    path = os.path.join(output, "best_config.json")
    params = orchestration.parse_params([f"tuned_config_uri={path}"])
    orchestration._check_params(P.create_pipeline(), params)
    spec = next(yaml.safe_load_all(open(P.compile_pipeline(str(tmp_path / "p.yaml")))))
    root = spec["root"]["inputDefinitions"]["parameters"]["tuned_config_uri"]
    assert root["defaultValue"] == "" and root["isOptional"] is True
    task = spec["root"]["dag"]["tasks"]["configure"]["inputs"]["parameters"]["tuned_config_uri"]
    assert task == {"componentInputParameter": "tuned_config_uri"}

    frozen_all = configure_as_compiled(tmp_path, profile="paper", max_epochs=3, seed=0, min_auc=0.5, **params)
    best = json.load(open(path))
    frozen = frozen_all["experiment"]
    assert frozen["model"] == {**best["model"]} and frozen["train"]["learning_rate"] == best["train"]["learning_rate"]
    assert frozen["train"]["batch_size"] == best["train"]["batch_size"]


# ---- the README's commands, in tiny form -------------------------------------------------------


def _readme_blocks(language: str) -> list[str]:
    with open(os.path.join(os.path.dirname(P.__file__), "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    section = text.split("## Hyperparameter search\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def _commands(block: str) -> list[list[str]]:
    joined = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


@pytest.mark.slow  # four more CDAnet trials and a pipeline compile: ~10 s
def test_the_documented_commands_run_in_tiny_form(no_test_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (space_yaml,) = _readme_blocks("yaml")
    (tmp_path / "space.yaml").write_text(space_yaml)
    SearchSpace.load("space.yaml").validate(ExperimentConfig().with_overrides(["train.max_epochs=10"]))
    search, cluster = (_commands(b) for b in _readme_blocks("bash"))
    tiny = ["--profile", "tiny", "--set", "train.num_threads=1"]
    ran = []
    for argv in search + cluster:
        argv = [a.replace("processed/amazon", no_test_dir) if a.endswith("processed/amazon") else a for a in argv]
        tiny_sizes = {"50": "2", "train.max_epochs=10": "train.max_epochs=1"}  # --trials 50 -> 2
        argv = [tiny_sizes.get(a, a) for a in argv]
        if argv[:2] == ["cdanet", "tune"]:
            code, printed = _tune([*argv[2:], *tiny])
            assert code == 0, printed
        elif argv[:3] == ["python", "pipeline.py", "run"]:
            with mock.patch.object(orchestration, "run_local", autospec=True, return_value=0) as run_local:
                assert P.main(argv[2:]) == 0
            assert run_local.call_args.kwargs["params"] == {"tuned_config_uri": "tune/amazon/best_config.json"}
            configure_as_compiled(tmp_path, **run_local.call_args.kwargs["params"])
        else:
            assert argv[0] == "kubectl", argv  # needs a cluster; the manifest is checked in test_katib.py
            continue
        ran.append(argv[:3])
    assert len(ran) == 4
    assert len(_rows("tune/amazon")) == 2 and len(_rows("tune/amazon-short")) == 2
    assert json.load(open("tune/amazon-short/best_config.json"))["train"]["max_epochs"] == 1
    with open("tune/amazon-short/trials.csv") as fh:
        header = next(csv.reader(fh))
    assert header[4:] == sorted(f"params_{k}" for k in SearchSpace.load("space.yaml").keys)
    assert yaml.safe_load(open("katib.yaml"))["spec"]["parallelTrialCount"] == 2
