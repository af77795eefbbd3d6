"""Pipeline parameters, the first step's validation, and the cluster verbs without a cluster."""

from __future__ import annotations

import re

import pytest
from helpers import compiled_spec, configure, configure_as_compiled

import pipeline as P
from cdanet import orchestration, steps
from cdanet.config import PROFILES, ConfigError
from cdanet.params import HYPERPARAMETERS


def test_configure_uses_paper_defaults_per_dataset(tmp_path):
    amazon = configure(tmp_path)
    assert (amazon.experiment.target_domain, amazon.experiment.model.alpha) == ("movie", 0.01)
    taobao = configure(tmp_path, dataset="taobao", glove_uri="")
    assert (taobao.experiment.target_domain, taobao.experiment.model.alpha) == ("ad", 0.03)
    assert taobao.experiment.model.tower_layers == 3
    both = configure(tmp_path, target_domain="book", alpha=0.05)
    assert (both.experiment.source_domain, both.experiment.model.alpha) == ("movie", 0.05)


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("dataset, target", [("amazon", ""), ("taobao", "rec")])
def test_a_cluster_run_with_the_pipeline_defaults_gets_exactly_the_profile(tmp_path, profile, dataset, target):
    # The compiled pipeline's defaults leave every hyperparameter to the profile (once mixed: tiny ran
    # d=64, batch 2048, 30 epochs on a cluster, because the defaults repeated the paper's values).
    frozen = configure_as_compiled(tmp_path, dataset=dataset, target_domain=target, profile=profile,
                                   glove_uri="" if dataset == "taobao" else str(tmp_path / "glove.txt"))
    assert frozen["experiment"] == PROFILES[profile](dataset, target or None, "cdanet").to_dict()


def test_every_hyperparameter_defaults_to_unset_in_the_compiled_pipeline():
    root = compiled_spec()["root"]["inputDefinitions"]["parameters"]
    assert {name: root[name]["defaultValue"] for name in HYPERPARAMETERS} == {name: -1 for name in HYPERPARAMETERS}
    configure_inputs = compiled_spec()["root"]["dag"]["tasks"]["configure"]["inputs"]["parameters"]
    assert all(configure_inputs[name] == {"componentInputParameter": name} for name in HYPERPARAMETERS)


def test_an_explicit_parameter_overrides_the_profile_and_extra_overrides_override_it(tmp_path):
    frozen = configure_as_compiled(tmp_path, profile="tiny", batch_size=32, alpha=0, latent_dim=16)["experiment"]
    tiny = PROFILES["tiny"]("amazon", None, "cdanet").to_dict()
    assert (frozen["train"]["batch_size"], frozen["model"]["alpha"], frozen["model"]["d"]) == (32, 0.0, 16)
    assert isinstance(frozen["model"]["alpha"], float)  # an int given for a float setting is stored as one
    assert {k: v for k, v in frozen["train"].items() if k != "batch_size"} == {
        k: v for k, v in tiny["train"].items() if k != "batch_size"}
    last = configure_as_compiled(tmp_path, profile="tiny", batch_size=32,
                                 extra_overrides=["train.batch_size=16"])["experiment"]
    assert last["train"]["batch_size"] == 16


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(batch_size=2.5), r"batch_size \(train.batch_size\): expected int, got 2.5"),
        (dict(latent_dim="abc"), r"latent_dim \(model.d\): expected int, got 'abc'"),
        (dict(seed=True), r"seed \(train.seed\): expected int, got True"),
        (dict(alpha="0.1"), r"alpha \(model.alpha\): expected float, got '0.1'"),
        (dict(extra_overrides=["train.batch_size=2.5"]), "extra_overrides: train.batch_size: expected int, got 2.5"),
        (dict(extra_overrides=["train.progress=1"]), "extra_overrides: train.progress: expected bool, got 1"),
        (dict(extra_overrides=['model.tower_layers_by_domain={"movie": "deep"}']),
         "extra_overrides: model.tower_layers_by_domain: expected a mapping of str to int, got {'movie': 'deep'}"),
        (dict(extra_overrides=["train.device=tpu"]),
         r"extra_overrides: train.device: expected one of \['auto', 'cpu', 'cuda'\], got 'tpu'"),
        # a wrong type is reported alone, in one line, even when other parameters are also invalid
        (dict(batch_size=2.5, min_auc=3.0), r"batch_size \(train.batch_size\): expected int, got 2.5"),
    ],
)
def test_a_wrong_type_fails_the_first_step_in_one_line(tmp_path, params, message):
    with pytest.raises(ConfigError) as e:
        configure_as_compiled(tmp_path, **params)
    assert isinstance(e.value, steps.PipelineParameterError)
    assert "\n" not in str(e.value) and re.fullmatch(message, str(e.value)), str(e.value)
    assert not (tmp_path / "config.json").exists()


def test_run_local_leaves_the_profile_to_the_configure_step(tmp_path):
    # kfp.local gets only what the command line gave: no hyperparameter filled in from the profile.
    class Stop(Exception):
        pass

    seen = {}

    class Pipeline:
        component_spec = P.create_pipeline().component_spec

        def __call__(self, **arguments):
            seen.update(arguments)
            raise Stop

    (tmp_path / "raw").mkdir()
    (tmp_path / "glove.txt").write_text("movie 0.1 0.2\n")
    code = orchestration.run_local(Pipeline(), raw_dir=str(tmp_path / "raw"), glove=str(tmp_path / "glove.txt"),
                                   dataset="amazon",
                                   scale="tiny", workdir=str(tmp_path / "w"), profile="tiny",
                                   params={"max_epochs": 3, "alpha": 0}, out=lambda _: None)
    assert code == 1  # Stop, raised instead of running
    assert {k: seen[k] for k in ("profile", "max_epochs", "alpha")} == {
        "profile": "tiny", "max_epochs": 3, "alpha": 0.0}
    assert "model_name" not in seen  # the configure step names it cdanet-<dataset>-<target>, as on a cluster
    assert type(seen["alpha"]) is float  # kfp.local rejects an int for a float parameter
    assert not set(seen) & (set(HYPERPARAMETERS) - {"max_epochs", "alpha"})


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
    with pytest.raises(orchestration.ParameterError, match="not of the form key=value"):
        orchestration.parse_params(["max_epochs"])
    with pytest.raises(orchestration.ParameterError, match=r"unknown pipeline parameter\(s\) \['max_epoch'\]"):
        orchestration._check_params(P.create_pipeline(), {"max_epoch": 3})


def test_parameters_are_coerced_to_their_declared_types():
    # Before: tolerance=0 and min_auc=1 reached kfp as ints and failed its float type check; a string
    # parameter given a number (model_name=2026) became an int.
    f = P.create_pipeline()
    params = orchestration.parse_params(["tolerance=0", "min_auc=1", "alpha=-1", "max_epochs=5.0",
                                         "model_name=2026", "target_domain=book", "data_until=2026-11-28",
                                         'extra_overrides=["model.dropout=0.1"]'], f)
    assert params == {"tolerance": 0.0, "min_auc": 1.0, "alpha": -1.0, "max_epochs": 5, "model_name": "2026",
                      "target_domain": "book", "data_until": "2026-11-28", "extra_overrides": ["model.dropout=0.1"]}
    assert [type(params[k]) for k in ("tolerance", "min_auc", "alpha", "max_epochs")] == [float, float, float, int]
    for item, message in (("max_epochs=2.5", "max_epochs='2.5': expected an integer"),
                          ("alpha=abc", "alpha='abc': expected a finite number"),
                          ("alpha=nan", "alpha='nan': expected a finite number"),
                          ("extra_overrides=model.dropout=0.1", "extra_overrides='model.dropout=0.1': expected a JSON list")):
        with pytest.raises(orchestration.ParameterError) as e:
            orchestration.parse_params([item], f)
        assert message in e.value.message and "\n" not in e.value.message


@pytest.mark.parametrize("item, message", [
    ("target_domain=nonsense", "unknown target_domain 'nonsense' for dataset 'amazon'"),
    ("min_auc=2", r"min_auc must be in [0, 1], got 2.0"),
    ("tolerance=-1", "tolerance must be >= 0"),
    ("alpha=-2", "model.alpha must be >= 0"),
    ("profile=huge", "unknown profile 'huge'"),
])
def test_a_bad_parameter_is_one_line_before_anything_runs(tmp_path, capsys, item, message):
    # Before: target_domain=nonsense ran kfp.local and printed a 20-line traceback of the configure task.
    code = P.main(["run", "--workdir", str(tmp_path / "w"), item])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "w").exists()  # nothing simulated, nothing run


def test_cron_must_have_six_fields():
    assert orchestration.validate_cron("0 0 2 * * *") == "0 0 2 * * *"
    assert orchestration.validate_cron("0 0 9 ? * 2-6") == "0 0 9 ? * 2-6"  # KFP's docstring example
    with pytest.raises(SystemExit, match="six, seconds first"):
        orchestration.validate_cron("0 2 * * *")
    # Before: only the fields were counted, so an hour 25 or a day-of-week 'funday' reached KFP.
    for bad in ("0 0 25 * * *", "0 0 2 * * funday", "0 61 2 * * *"):
        with pytest.raises(orchestration.ParameterError, match="not a valid cron expression"):
            orchestration.validate_cron(bad)


def test_console_names_the_rejection_task_by_its_display_name(tmp_path):
    # Before: kfp.local's task name `register-2` reached the console for the record-rejection task.
    names = orchestration.display_names(P.create_pipeline())
    assert names["register"] == "promote" and names["register-2"] == "record-rejection"
    seen = []
    log = orchestration._TaskLog(open(tmp_path / "log", "w"), seen.append, 0.0, names)
    log.write("Task \x1b[96m'register-2'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n")
    log.write("Task 'gate' finished with status SUCCESS\n")
    assert "record-rejection" in seen[0] and "register-2" not in seen[0] and "gate" in seen[1]


@pytest.mark.parametrize("verb", ["submit", "schedule"])
def test_cluster_verbs_fail_clearly_without_a_cluster(verb, capsys):
    code = P.main([verb, "--host", "http://127.0.0.1:1", "--mlflow-secret", "mlflow-tracking", "max_epochs=1",
                   "raw_uri=/data/raw/amazon", "glove_uri=/data/raw/glove.6B.300d.txt"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot reach Kubeflow Pipelines at http://127.0.0.1:1" in err


@pytest.mark.parametrize("verb", ["submit", "schedule"])
def test_cluster_verbs_need_an_mlflow_server_before_anything_is_sent(verb, capsys):
    # Before: a run without the Secret trained for hours and failed at the gate ("no MLflow tracking URI").
    code = P.main([verb, "--host", "http://127.0.0.1:1", "raw_uri=/data/raw/amazon"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "needs an MLflow server" in err and "--mlflow-secret mlflow-tracking" in err
    assert "cannot reach" not in err  # refused before any connection
    code = P.main([verb, "--host", "http://127.0.0.1:1", "raw_uri=/data/raw/amazon",
                   "glove_uri=/data/raw/glove.6B.300d.txt", "mlflow_tracking_uri=http://mlflow.example:5000"])
    assert code == 2 and "cannot reach Kubeflow Pipelines" in capsys.readouterr().err  # an explicit URI passes


def test_checkpoint_dir_is_keyed_by_run_and_task(tmp_path):
    assert steps.checkpoint_dir("", "run-1", "pretrain") is None  # no root: no checkpoints
    assert steps.checkpoint_dir("/data/work/checkpoints", "run-1", "finetune") == "/data/work/checkpoints/run-1/finetune"
    for bad in ("", "{{$.pipeline_job_uuid}}", "../other", ".."):
        with pytest.raises(steps.PipelineParameterError, match="run_id"):
            steps.checkpoint_dir("/ckpt", bad, "pretrain")


_KILLABLE_PRETRAIN = """
import sys
from components.train import pretrain

class Path_:
    def __init__(self, path):
        self.path = path

class Metrics_(Path_):
    def log_metric(self, name, value):
        pass

config, processed, out, root = sys.argv[1:5]
pretrain.python_func(config=Path_(config), processed=Path_(processed), pretrained=Path_(out),
                     metrics=Metrics_(None), checkpoint_root=root, run_id="run-1")
"""


@pytest.mark.slow
def test_a_killed_training_task_resumes_at_its_next_epoch(tmp_path, processed_dir):
    """KFP retries a failed training task in a new pod with the same run id: the pretrain component
    (real subprocess, SIGKILLed after its first checkpoint) resumes from the last completed epoch."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    frozen = configure(tmp_path, max_epochs=5, extra_overrides=["train.patience=100"])
    config = tmp_path / "config.json"
    config.write_text(frozen.to_json())
    root = tmp_path / "ckpt"
    ckpt = root / "run-1" / "pretrain" / "pretrain.ckpt.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE_PRETRAIN, str(config), processed_dir,
                             str(tmp_path / "killed"), str(root)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the task finished before it could be killed"
    done = int(torch.load(ckpt, weights_only=False)["epoch"])
    assert 1 <= done < 5
    assert not (tmp_path / "killed" / "model.pt").exists()

    # The retry: same run id, same task, a fresh process (here: this one).
    from components.train import pretrain

    metrics: dict[str, float] = {}

    class Out:
        def __init__(self, path):
            self.path = path

        def log_metric(self, name, value):
            metrics[name] = value

    pretrain.python_func(config=Out(str(config)), processed=Out(processed_dir), pretrained=Out(str(tmp_path / "m")),
                         metrics=Out(None), checkpoint_root=str(root), run_id="run-1")
    assert metrics["stage1_resumed_from_epoch"] == done  # not epoch 0: the retry did not start over
    assert metrics["stage1_epochs"] == 5
    assert not (root / "run-1").exists()  # a finished task drops its checkpoints
