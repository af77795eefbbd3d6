"""The experiments pipeline: compiled spec (ParallelFor, Collected, condition, GPU), components, local run."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import yaml

import experiments_pipeline as E
from cdanet.studies import StudySpec, plan_study, unique_runs
from cdanet.studies.pipeline_steps import resolve_spec
from cdanet.studies.plan import Run
from cdanet.synthetic import write_synthetic_processed
from components.studies import plan_runs

SMALL_SPEC = {
    "targets": ["movie"],
    "table2": {"models": ["mlp"]},
    "fig5": {"models": ["mlp"], "train_fractions": [0.5, 1.0]},
    "overrides": ["train.max_epochs=1", "train.finetune_max_epochs=1", "train.num_threads=1"],
    "table4": {"k": 2, "users": 2},
}


def compiled(tmp_path, **kwargs) -> dict:
    path = E.compile_experiments_pipeline(str(tmp_path / "e.yaml"), **kwargs)
    with open(path) as fh:
        return next(yaml.safe_load_all(fh))


def executor_of(spec: dict, component: str) -> dict:
    return spec["deploymentSpec"]["executors"][spec["components"][component]["executorLabel"]]


def test_fan_out_over_planned_runs_and_collect(tmp_path):
    spec = compiled(tmp_path, parallelism=3)
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"importer", "plan-runs", "for-loop-1", "aggregate-studies", "condition-2"}
    loop = root["for-loop-1"]
    assert loop["taskInfo"]["name"] == "runs"
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--plan-runs-Output"
    assert loop["iteratorPolicy"]["parallelismLimit"] == 3
    assert set(loop["dependentTasks"]) == {"importer", "plan-runs"}
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert [t["componentRef"]["name"] for t in body.values()] == ["comp-train-run"]
    records = root["aggregate-studies"]["inputs"]["parameters"]["records"]
    assert records["taskOutputParameter"]["producerTask"] == "for-loop-1"  # dsl.Collected over the loop
    table4 = root["condition-2"]
    assert table4["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--table4'] == true"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["studies"]["defaultValue"] == ["table2", "table5", "fig5", "fig6"]
    assert params["tiny"]["defaultValue"] is False and params["spec"]["parameterType"] == "STRUCT"


def test_gpu_only_on_training_tasks(tmp_path):
    cpu = compiled(tmp_path)
    gpu = compiled(tmp_path, use_gpu=True)
    assert "accelerator" not in executor_of(cpu, "comp-train-run")["container"]["resources"]
    for comp in ("comp-train-run", "comp-translated-semantics"):
        acc = executor_of(gpu, comp)["container"]["resources"]["accelerator"]
        assert acc["resourceType"] == "nvidia.com/gpu" and int(acc["resourceCount"]) == 1
    for comp in ("comp-plan-runs", "comp-aggregate-studies"):
        assert "accelerator" not in executor_of(gpu, comp)["container"]["resources"]
    with pytest.raises(ValueError, match="parallelism"):
        E.create_experiments_pipeline(parallelism=0)


def test_plan_component_returns_the_distinct_runs_of_the_spec():
    runs = plan_runs.python_func(spec=SMALL_SPEC, tiny=True, studies=["table2", "fig5", "table2"])
    parsed = [Run.from_json(r) for r in runs]
    expected = unique_runs([plan_study(s, resolve_spec(SMALL_SPEC, True)) for s in ("table2", "fig5")])
    assert [r.run_id for r in parsed] == [r.run_id for r in expected]
    assert len(parsed) == 2  # mlp at ratio 1.0 is shared by Table 2 and Fig. 5
    with pytest.raises(ValueError, match="unknown study 'table4'"):
        plan_runs.python_func(spec={}, tiny=True, studies=["table4"])


def test_resolve_spec_merges_over_defaults_or_tiny():
    tiny = resolve_spec({"fig6": {"alpha": [0.5]}}, tiny=True)
    assert tiny.profile == "tiny" and tiny.fig6.alpha == [0.5] and tiny.fig6.num_experts == [1, 2]
    full = resolve_spec({"dataset": "taobao", "table2": {"grid": {"mlp": {"model.dropout": [0.0, 0.1]}}}}, tiny=False)
    assert full.dataset == "taobao" and full.target_domains == ["ad", "rec"] and full.seeds == [0, 1, 2]
    assert full.table2.models == StudySpec().table2.models and full.table2.grid == {"mlp": {"model.dropout": [0.0, 0.1]}}



def test_struct_parameter_doubles_become_ints():
    """KFP hands ``dict`` parameters over as protobuf Structs: every number is a double."""
    as_struct = {"seeds": [0.0, 1.0], "table4": {"k": 3.0},
                 "table2": {"models": ["cdanet"], "grid": {"cdanet": {"model.num_experts": [1.0, 2.0]}}}}
    as_written = {"seeds": [0, 1], "table4": {"k": 3},
                  "table2": {"models": ["cdanet"], "grid": {"cdanet": {"model.num_experts": [1, 2]}}}}
    spec = resolve_spec(as_struct, tiny=True)
    assert spec.seeds == [0, 1] and type(spec.table4.k) is int
    plan = plan_study("table2", spec)
    assert {type(r.config["model"]["num_experts"]) for r in plan.runs.values()} == {int}
    assert list(plan.runs) == list(plan_study("table2", resolve_spec(as_written, tiny=True)).runs)


@pytest.mark.slow
def test_runs_locally_on_tiny_data(tmp_path):
    processed = str(tmp_path / "processed")
    write_synthetic_processed(processed, "amazon", n_users=80, rows_per_domain={"movie": 600, "book": 1200}, seed=0)
    outputs = E.run_local(processed, str(tmp_path / "work"),
                          {"tiny": True, "studies": ["table2", "fig5"], "spec": SMALL_SPEC}, out=lambda _: None)
    by_name = {os.path.basename(p): p for p in outputs}
    assert set(by_name) == {"results", "tables", "figures", "table", "neighbours"}
    results = pd.read_csv(by_name["results"])
    assert len(results) == 1 + 2 and (results["status"] == "ok").all()
    assert sorted(results.loc[results["study"] == "fig5", "value"]) == [0.5, 1.0]
    tables = open(by_name["tables"]).read()
    assert "| Model | movie |" in tables and "### Fig. 5: sparsity (amazon)" in tables
    html = open(by_name["figures"]).read()
    assert html.count("data:image/png;base64,") == 1
    neighbours = pd.read_csv(by_name["neighbours"])
    assert (neighbours.groupby(["user_id", "item_id"]).size() == 2).all()
    assert "| User ID | movie item |" in open(by_name["table"]).read()
    # Metrics artifacts keep their values in the task's executor output (what the UI shows).
    with open(os.path.join(os.path.dirname(by_name["results"]), "executor_output.json")) as fh:
        metrics = json.load(fh)["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["runs"] == 2 and metrics["failed_runs"] == 0
    assert metrics["table2_mlp_movie_auc"] == pytest.approx(results.loc[results["study"] == "table2", "test_auc"].iloc[0])
