"""The Katib Experiment of ``cdanet tune --katib-manifest``, checked offline.

No cluster can run here and ``kubernetes_validate`` only warns on custom resources, so
:func:`webhook_problems` re-states the rules of Katib's validating webhook
(``pkg/webhook/v1beta1/experiment/validator`` in kubeflow/katib) and of its hyperopt TPE service;
the trial Job (a core resource) is validated strictly against the Kubernetes 1.32 schema, its
command line is parsed by the real ``cdanet`` parser, and one trial runs on tiny data.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cdanet import katib
from cdanet.cli import build_config, build_parser, main
from cdanet.config import ConfigError, tiny_config
from cdanet.tuning import SearchSpace, default_space

K8S_VERSION = "1.32.0"
PLACEHOLDER = re.compile(r"\$\{trialParameters\..+?\}")
NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
TPE_SETTINGS = {"gamma": float, "prior_weight": float, "n_EI_candidates": int, "random_state": int}
DISTRIBUTIONS = {"uniform", "logUniform", "normal", "logNormal"}


def webhook_problems(exp: dict[str, Any]) -> list[str]:
    """What Katib's admission webhook (and the TPE service's setting check) would reject."""
    out: list[str] = []
    spec = exp["spec"]
    if (exp.get("apiVersion"), exp.get("kind")) != ("kubeflow.org/v1beta1", "Experiment"):
        out.append("not a kubeflow.org/v1beta1 Experiment")
    if not NAME.match(exp["metadata"]["name"]):
        out.append("metadata.name")
    mx, par, failed = spec.get("maxTrialCount"), spec.get("parallelTrialCount"), spec.get("maxFailedTrialCount")
    if not (mx > 0 and par > 0 and failed >= 0 and par <= mx and failed <= mx):
        out.append("trial counts")
    obj = spec["objective"]
    if obj.get("type") not in ("minimize", "maximize") or not obj.get("objectiveMetricName"):
        out.append("objective")
    algo = spec["algorithm"]
    if algo.get("algorithmName") != "tpe":
        out.append("algorithm")
    for s in algo.get("algorithmSettings", []):
        try:
            value = TPE_SETTINGS[s["name"]](s["value"])
        except (KeyError, ValueError):
            out.append(f"algorithm setting {s}")
            continue
        if s["name"] == "random_state" and value < 0:
            out.append("random_state < 0")
    if spec["metricsCollectorSpec"]["collector"]["kind"] != "StdOut":
        out.append("metrics collector")
    names = set()
    if not spec.get("parameters"):
        out.append("no parameters")
    for p in spec.get("parameters", []):
        names.add(p["name"])
        fs, kind = p.get("feasibleSpace") or {}, p.get("parameterType")
        if kind not in ("int", "double", "categorical", "discrete") or not fs:
            out.append(f"parameter {p['name']}: type/feasibleSpace")
        if "distribution" in fs and fs["distribution"] not in DISTRIBUTIONS:
            out.append(f"parameter {p['name']}: distribution")
        if kind in ("int", "double"):
            number = int if kind == "int" else float
            if "list" in fs or not (number(fs["min"]) < number(fs["max"])):
                out.append(f"parameter {p['name']}: range")
        elif set(fs) & {"min", "max", "step"} or not all(isinstance(v, str) for v in fs.get("list", [])):
            out.append(f"parameter {p['name']}: categorical list")
    tt = spec["trialTemplate"]
    if not tt.get("primaryContainerName") or not tt.get("successCondition") or not tt.get("failureCondition"):
        out.append("trialTemplate: primaryContainerName, successCondition, failureCondition")
    if "trialSpec" not in tt or "configMap" in tt:
        out.append("trialTemplate: exactly one source")
    text = json.dumps(tt["trialSpec"])
    refs: set[str] = set()
    seen: set[str] = set()
    for tp in tt.get("trialParameters", []):
        n, r = tp.get("name", ""), tp.get("reference", "")
        if not n or not r or "{" in n or "}" in n or n in seen or r in refs or r not in names:
            out.append(f"trialParameter {tp}")
        seen.add(n)
        refs.add(r)
        if ref(n) not in text:
            out.append(f"trialParameter {n} not used in the template")
        text = text.replace(ref(n), "test-value")
    if PLACEHOLDER.search(text):
        out.append(f"placeholders without a trialParameter: {PLACEHOLDER.findall(text)}")
    job = tt["trialSpec"]
    if job.get("metadata", {}).get("name") or job.get("metadata", {}).get("namespace"):
        out.append("trialSpec metadata.name/namespace must be omitted")
    containers = [c["name"] for c in job["spec"]["template"]["spec"]["containers"]]
    if tt.get("primaryContainerName") not in containers:
        out.append("primary container not in the Job")
    return out


def ref(name: str) -> str:
    return "${trialParameters." + name + "}"  # Katib's TrialTemplateParamReplaceFormat


def sample(p: dict[str, Any]) -> str:
    """A value Katib could assign: the upper bound, or the last choice."""
    fs = p["feasibleSpace"]
    return fs["list"][-1] if "list" in fs else fs["max"]


def substituted(exp: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The trial Job with every placeholder replaced as Katib would, and the values used per parameter."""
    values = {p["name"]: sample(p) for p in exp["spec"]["parameters"]}
    text = json.dumps(exp["spec"]["trialTemplate"]["trialSpec"])
    for tp in exp["spec"]["trialTemplate"]["trialParameters"]:
        text = text.replace(ref(tp["name"]), values[tp["reference"]])
    return json.loads(text), values


def generate(tmp_path, *argv: str) -> dict[str, Any]:
    path = tmp_path / "katib.yaml"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["tune", "--katib-manifest", str(path), *argv])
    assert code == 0
    assert f"kubectl apply -f {path}" in out.getvalue()
    with open(path) as fh:
        docs = list(yaml.safe_load_all(fh))
    assert len(docs) == 1
    return docs[0]


CUSTOM_SPACE = (
    "model.num_experts: {type: int, low: 1, high: 8, log: true}\n"
    "model.dropout: {type: float, low: 0.0, high: 0.4, step: 0.1}\n"
    "train.embedding_update: [dense, lazy]\n"
    "train.mixed_precision: [false, true]\n"
)


@pytest.mark.parametrize("custom", [False, True], ids=["default-space", "custom-space"])
def test_the_manifest_passes_katibs_webhook_rules_and_its_job_is_valid(tmp_path, custom):
    argv = ["--processed", "/data/processed/amazon", "--profile", "paper", "--model", "cdanet", "--trials", "30",
            "--katib-parallel", "3", "--seed", "7", "--set", "train.max_epochs=10", "--image", "registry.example/cdanet:1"]
    if custom:
        (tmp_path / "space.yaml").write_text(CUSTOM_SPACE)
        argv += ["--space", str(tmp_path / "space.yaml"), "--katib-gpu"]
    exp = generate(tmp_path, *argv)
    assert webhook_problems(exp) == []
    spec = exp["spec"]
    assert (exp["metadata"]["name"], exp["metadata"]["namespace"]) == ("cdanet-amazon-movie-cdanet", "cdanet")
    assert spec["objective"] == {"type": "maximize", "objectiveMetricName": "val_auc",
                                 "metricStrategies": [{"name": "val_auc", "value": "latest"}]}
    assert spec["algorithm"] == {"algorithmName": "tpe", "algorithmSettings": [{"name": "random_state", "value": "7"}]}
    assert (spec["maxTrialCount"], spec["parallelTrialCount"], spec["maxFailedTrialCount"]) == (30, 3, 3)
    params = {p["name"]: p for p in spec["parameters"]}
    if custom:
        assert params["model-num_experts"] == {"name": "model-num_experts", "parameterType": "int",
                                               "feasibleSpace": {"min": "1", "max": "8", "distribution": "logUniform"}}
        assert params["model-dropout"]["feasibleSpace"] == {"min": "0.0", "max": "0.4", "step": "0.1"}
        assert params["train-mixed_precision"]["feasibleSpace"] == {"list": ["false", "true"]}
    else:
        assert set(params) == {katib.parameter_name(k) for k in default_space("cdanet").keys}
        assert params["train-learning_rate"]["feasibleSpace"]["distribution"] == "logUniform"

    job, values = substituted(exp)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/cdanet:1"
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "cdanet-processed-data", "readOnly": True}
    assert ("nvidia.com/gpu" in container["resources"]["limits"]) == custom

    # The trial's command line is one the real CLI accepts, and it sets each drawn value.
    assert container["command"][:2] == ["cdanet", "tune-trial"]
    args = build_parser().parse_args(container["command"][1:])
    cfg = build_config(args)
    assert (args.command, args.processed, cfg.train.max_epochs) == ("tune-trial", "/data/processed/amazon", 10)
    flat = {f"{s}.{k}": v for s in ("model", "train") for k, v in cfg.to_dict()[s].items()}
    space = SearchSpace.from_dict(yaml.safe_load(CUSTOM_SPACE)) if custom else default_space("cdanet")
    for key in space.keys:
        raw = values[katib.parameter_name(key)]
        assert flat[key] == (raw if key == "train.embedding_update" else json.loads(raw)), key


def test_the_webhook_rules_catch_broken_manifests(tmp_path):
    exp = generate(tmp_path, "--processed", "/data/processed/amazon", "--profile", "tiny")
    assert webhook_problems(exp) == []
    broken = json.loads(json.dumps(exp))
    broken["metadata"]["name"] = "CDAnet_Tune"
    broken["spec"]["trialTemplate"]["trialParameters"].pop()  # its placeholder stays in the command
    broken["spec"]["algorithm"]["algorithmSettings"].append({"name": "n_startup_jobs", "value": "5"})
    broken["spec"]["parameters"][0]["feasibleSpace"]["distribution"] = "loguniform"
    problems = webhook_problems(broken)
    assert problems[0] == "metadata.name" and len(problems) == 4, problems
    assert "placeholders without a trialParameter: ['${trialParameters.model-beta}']" in problems


def test_a_trial_prints_the_metric_katib_collects(processed_dir, tmp_path):
    exp = generate(tmp_path, "--processed", processed_dir, "--profile", "tiny", "--model", "mlp",
                   "--set", "train.num_threads=1", "--katib-pvc", "")
    job, _ = substituted(exp)
    assert "volumes" not in job["spec"]["template"]["spec"]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(command[1:]) == 0
    # Katib's collector applies its default filter to every line the container writes.
    found = [(m.group(1), float(m.group(2))) for line in (out.getvalue() + err.getvalue()).splitlines()
             for m in [re.search(katib.STDOUT_METRIC_PATTERN, line)] if m]
    metrics = [v for name, v in found if name == "val_auc"]
    assert len(metrics) == 1 and 0.5 < metrics[0] < 1.0, found
    assert f"train: best validation AUC {metrics[0]:.6f}" in out.getvalue()


def test_bad_katib_settings_and_missing_output_are_usage_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="must be a DNS label"):
        katib.experiment(tiny_config(), default_space("cdanet", "tiny"), katib.KatibSettings(name="CDAnet_Tune"),
                         processed="/data", profile="tiny")
    with pytest.raises(ConfigError, match="parallel_trials and max_failed_trials must be <= max_trials"):
        katib.KatibSettings(name="t", max_trials=2, parallel_trials=3).validate()
    assert main(["tune", "--processed", str(tmp_path), "--profile", "tiny"]) == 2
    assert "--output is required (or --katib-manifest)" in capsys.readouterr().err


def test_default_image_is_the_pipelines():
    from components import DEFAULT_IMAGE

    assert katib.DEFAULT_IMAGE == DEFAULT_IMAGE
