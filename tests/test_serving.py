"""The served model: models-from-code without pickle, raw input through its own vocabularies, self-contained.

The model is a real CDAnet (stage 1 + stage 2) trained for one epoch on the tiny synthetic data,
with ``book`` as the target (every field kind: categorical, multi-hot, dense), on a copy of that
data given vocabularies (the synthetic writer has none; preprocessing always writes them). The
"fresh environment" tests run MLflow in a virtual environment that sees the installed packages
but neither this checkout nor the editable ``cdanet`` install (:func:`isolated_env`), so the model
can only load through the code it ships.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from mlflow.models import infer_signature

from benchmarks.bench_serving import add_vocabularies
from cdanet.config import tiny_config
from cdanet.contract import SchemaError, load_schemas
from cdanet.data import table_to_batch
from cdanet.gate import GateConfig, decide
from cdanet.registry import CHAMPION_ALIAS, register_candidate
from cdanet.serving import (
    INPUT_RAW,
    CDAnetPyfunc,
    example_frame,
    load_logged_model,
    raw_frame,
    read_rows,
    save_served_model,
    serving_code_modules,
)
from cdanet.training import run_experiment

REPO = Path(__file__).resolve().parents[1]
TARGET = "book"
NAME = "cdanet-book"
RUNTIME = {"mlflow", "torch", "numpy", "pandas", "pyarrow"}


@pytest.fixture(scope="module")
def processed(processed_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("processed_vocab") / "processed")
    shutil.copytree(processed_dir, root)
    add_vocabularies(root)
    return root


@pytest.fixture(scope="module")
def model_dir(processed: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    cfg = tiny_config("amazon", target_domain=TARGET).with_overrides(
        ["train.max_epochs=1", "train.num_threads=1", "train.batch_size=256"]
    ).validate()
    return run_experiment(cfg, processed, str(tmp_path_factory.mktemp("experiment"))).model_dir


@pytest.fixture(scope="module")
def saved(model_dir: str, processed: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The served model saved as the registry saves it (raw example rows, inferred signature)."""
    scorer = CDAnetPyfunc.from_model_dir(model_dir)
    example = example_frame(scorer.schema, read_rows(processed, scorer.schema, "test", limit=5),
                            scorer.vocabularies[TARGET])
    signature = infer_signature(example, np.zeros(len(example), dtype=np.float32))
    path = str(tmp_path_factory.mktemp("served") / "model")
    return save_served_model(path, model_dir, signature=signature, input_example=example)


def _test_table(processed: str) -> pa.Table:
    scorer_schema = load_schemas(processed, (TARGET,))[TARGET]
    return read_rows(processed, scorer_schema, "test")


def _torch_scores(model_dir: str, table: pa.Table) -> np.ndarray:
    scorer = CDAnetPyfunc.from_model_dir(model_dir)
    with torch.inference_mode():
        return torch.sigmoid(scorer.model({TARGET: table_to_batch(scorer.schema, table)})[TARGET]).numpy()


# ---- the artifact ------------------------------------------------------------------------------


def test_saved_model_is_code_and_tensors_with_installable_requirements(saved: str) -> None:
    files = {os.path.relpath(os.path.join(d, f), saved) for d, _, fs in os.walk(saved) for f in fs}
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    assert "model_code.py" in files and "code/cdanet/serving.py" in files
    assert "artifacts/model/weights.pt" in files and "artifacts/model/vocab/book/writer.txt" in files
    # only what loading and scoring import: no pipeline steps, registry, training, Beam or GX code
    shipped = {f for f in files if f.startswith("code/cdanet/")}
    for absent in ("steps.py", "registry.py", "champion.py", "validation.py", "training/__init__.py", "cli.py"):
        assert f"code/cdanet/{absent}" not in shipped
    mlmodel = mlflow.models.Model.load(saved)
    pyfunc_conf = mlmodel.flavors["python_function"]
    assert pyfunc_conf["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in pyfunc_conf
    assert mlmodel.metadata["input_encoding"] == INPUT_RAW
    requirements = open(os.path.join(saved, "requirements.txt")).read().split()
    assert {r.split("==")[0] for r in requirements} == RUNTIME and all("==" in r for r in requirements)
    # raw signature: strings and lists of strings, dense vectors as doubles
    types = {c.name: repr(c.type) for c in mlmodel.signature.inputs.inputs}
    assert types == {"user_id": "string", "item_id": "string", "writer": "string",
                     "category": "Array(string)", "title": "Array(double)"}


def test_shipped_code_imports_only_the_model_requirements() -> None:
    """Every shipped module's imports, read from the source, are the stdlib, cdanet or the requirements."""
    package = os.path.dirname(os.path.abspath(sys.modules["cdanet"].__file__))
    allowed = RUNTIME | {"yaml", "cdanet"} | set(sys.stdlib_module_names)  # yaml: an mlflow requirement
    modules = serving_code_modules()
    assert "serving.py" in modules and "__init__.py" in modules and "models/cdanet.py" in modules
    for rel in modules:
        tree = ast.parse(open(os.path.join(package, rel)).read())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                assert name.split(".")[0] in allowed, f"{rel} imports {name}"


# ---- loading without pickle --------------------------------------------------------------------


def test_loads_with_pickle_disabled_and_scores_raw_rows_like_torch(
    saved: str, model_dir: str, processed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    pyfunc = mlflow.pyfunc.load_model(saved)
    scorer = pyfunc.unwrap_python_model()
    table = _test_table(processed)
    raw = raw_frame(table, scorer.schema, scorer.vocabularies[TARGET])
    assert isinstance(raw["user_id"][0], str) and raw["user_id"][0].startswith("U")
    scores = pyfunc.predict(raw)
    assert scores.shape == (table.num_rows,) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, _torch_scores(model_dir, table), rtol=0, atol=1e-6)
    # the gate's path: processed index rows, whatever the serving encoding
    np.testing.assert_allclose(scorer.predict_indices(table.to_pandas()), scores, rtol=0, atol=1e-6)


def test_unknown_and_missing_raw_values_are_oov(saved: str, processed: str, model_dir: str) -> None:
    pyfunc = mlflow.pyfunc.load_model(saved)
    scorer = pyfunc.unwrap_python_model()
    table = _test_table(processed).slice(0, 4)
    raw = raw_frame(table, scorer.schema, scorer.vocabularies[TARGET])
    raw["user_id"] = ["a-user-never-seen", None, "a-user-never-seen", "U9999999"]
    raw["category"] = [["never-seen", raw["category"][0][0]], [], raw["category"][2], ["never-seen"]]
    oov = table.set_column(0, "user_id", pa.array(np.zeros(4, dtype=np.int64)))
    oov = oov.set_column(3, "category", pa.array([[table.column("category")[0].as_py()[0]], [],
                                                  table.column("category")[2].as_py(), []], pa.list_(pa.int64())))
    np.testing.assert_allclose(pyfunc.predict(raw), _torch_scores(model_dir, oov), rtol=0, atol=1e-6)


def test_missing_column_is_one_line_naming_it(saved: str, processed: str) -> None:
    scorer = mlflow.pyfunc.load_model(saved).unwrap_python_model()
    raw = raw_frame(_test_table(processed).slice(0, 2), scorer.schema, scorer.vocabularies[TARGET])
    with pytest.raises(SchemaError, match=r"input lacks feature column\(s\) \['writer'\] of domain 'book'") as e:
        scorer.predict(None, raw.drop(columns=["writer"]))
    assert "\n" not in str(e.value)
    raw["category"] = ["category-1", "category-2"]  # a plain string where a list belongs
    with pytest.raises(SchemaError, match=r"input column 'category' cannot be read as raw multi_hot values "
                                          r"\(a list of strings per row\)") as e:
        scorer.predict(None, raw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("encoding, column, cells, message", [
    ("raw", "title", [["a", "b"], ["c"]],
     "input column 'title' cannot be read as raw dense_vector values (a list of floats per row): "
     "could not convert string to float: 'a'"),
    ("raw", "category", [3, 4],
     "input column 'category' cannot be read as raw multi_hot values (a list of strings per row): "
     "'int' object is not iterable"),
    ("indices", "user_id", ["U1", "U2"],
     "input column 'user_id' cannot be read as int64 (categorical_id): "),
    ("indices", "writer", [1.5, 2.0],
     "input column 'writer' cannot be read as int64 (categorical): Float value 1.500000 was truncated"),
    ("indices", "category", [["a"], ["b"]],
     "input column 'category' cannot be read as list<item: int64> (multi_hot): "
     "invalid literal for int() with base 10: 'a'"),
    ("indices", "title", [["a"], ["b"]],
     "input column 'title' cannot be read as list<item: float> (dense_vector): "
     "could not convert string to float: 'a'"),
])
def test_a_bad_cell_is_one_line_naming_the_column_and_what_its_kind_takes(
    model_dir: str, processed: str, encoding: str, column: str, cells: list, message: str
) -> None:
    """Both input encodings (raw rows for ``predict``, indices for the gate) name the column, the kind and the cause."""
    scorer = CDAnetPyfunc.from_model_dir(model_dir)
    table = _test_table(processed).slice(0, 2)
    if encoding == "raw":
        frame, score = raw_frame(table, scorer.schema, scorer.vocabularies[TARGET]), scorer.predict
    else:
        frame, score = table.to_pandas(), (lambda context, rows: scorer.predict_indices(rows))
    frame[column] = cells
    with pytest.raises(SchemaError) as e:
        score(None, frame)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
    with pytest.raises(SchemaError, match=r"input lacks feature column\(s\) \['writer'\] of domain 'book'"):
        score(None, frame.drop(columns=["writer"]))


class _Plant:
    """A pickle that, when unpickled, creates ``marker``: what an attacker would plant."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_planted_pickle_is_never_read(saved: str, tmp_path, processed: str) -> None:
    planted = str(tmp_path / "model")
    shutil.copytree(saved, planted)
    marker = str(tmp_path / "pwned")
    with open(os.path.join(planted, "python_model.pkl"), "wb") as fh:
        pickle.dump(_Plant(marker), fh)
    # MLflow's loader runs the logged code, not a python_model.pkl beside it ...
    pyfunc = mlflow.pyfunc.load_model(planted)
    assert not os.path.exists(marker)
    scorer = pyfunc.unwrap_python_model()
    assert len(pyfunc.predict(raw_frame(_test_table(processed).slice(0, 3), scorer.schema,
                                        scorer.vocabularies[TARGET]))) == 3
    # ... and weights are tensors only: a pickle in their place is refused by both loaders.
    with open(os.path.join(planted, "artifacts", "model", "weights.pt"), "wb") as fh:
        pickle.dump(_Plant(marker), fh)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_logged_model(planted)
    with pytest.raises(Exception, match="Weights only load failed"):
        mlflow.pyfunc.load_model(planted)
    assert not os.path.exists(marker)


def test_the_gate_loader_runs_no_code_from_the_artifact(saved: str, tmp_path, processed: str) -> None:
    """Whoever can write to the artifact store cannot run code in the gate: the shipped code is not imported."""
    tampered = str(tmp_path / "model")
    shutil.copytree(saved, tampered)
    marker = str(tmp_path / "pwned")
    payload = f"import os\nos.mkdir({marker!r})\n"
    for rel in ("model_code.py", "code/cdanet/__init__.py", "code/cdanet/serving.py"):
        with open(os.path.join(tampered, rel), "a") as fh:
            fh.write(payload)
    scorer = load_logged_model(tampered)
    assert not os.path.exists(marker)
    assert type(scorer) is CDAnetPyfunc  # the installed class
    table = _test_table(processed).slice(0, 3)
    assert scorer.predict_indices(table.to_pandas()).shape == (3,)


def test_model_field_outside_the_folder_is_refused(saved: str, tmp_path) -> None:
    moved = str(tmp_path / "model")
    shutil.copytree(saved, moved)
    mlmodel = os.path.join(moved, "MLmodel")
    text = open(mlmodel).read().replace("path: artifacts/model", "path: ../../elsewhere")
    open(mlmodel, "w").write(text)
    with pytest.raises(SchemaError, match="points outside the model folder"):
        load_logged_model(moved)


def test_registered_raw_model_is_gated_on_indices(model_dir: str, processed: str, tmp_path) -> None:
    """Registration logs the raw-input model; the gate scores the champion on processed rows."""
    from cdanet.champion import score_champion

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    auc = 0.6
    version = register_candidate(
        model_dir, tracking_uri=uri, model_name=NAME, metrics={"test_auc": auc}, params={},
        decision=decide(auc, None, GateConfig(min_auc=0.0, domain=TARGET)), lineage={},
        pipeline_run_id="run-1", processed_root=processed,
    )
    assert version.aliases == [CHAMPION_ALIAS]
    scored = score_champion(processed, uri, NAME, TARGET)
    table = _test_table(processed)
    from cdanet.evaluation import compute_metrics

    expected = compute_metrics(TARGET, table.column("label").to_numpy(), _torch_scores(model_dir, table)).auc
    assert scored.auc == pytest.approx(expected, abs=1e-9)


# ---- a fresh environment: the installed runtime without this project ---------------------------


def isolated_env(root: str) -> tuple[str, dict[str, str]]:
    """A virtual environment at ``root`` that sees this interpreter's installed packages but not
    ``cdanet``: its site-packages lists the runtime's site-packages as a plain path, so the editable
    install's ``.pth`` hook there never runs. Returns (its python, the environment to run it with)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root], check=True)
    python = os.path.join(root, "bin", "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "runtime.pth"), "w") as fh:
        fh.write(sysconfig.get_paths()["purelib"] + "\n")
    # `mlflow models serve` starts `uvicorn` from PATH: give the environment its own.
    with open(os.path.join(root, "bin", "uvicorn"), "w") as fh:
        fh.write(f"#!{python}\nfrom uvicorn.main import main\nmain()\n")
    os.chmod(os.path.join(root, "bin", "uvicorn"), 0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{os.path.join(root, 'bin')}{os.pathsep}{env.get('PATH', '')}", MLFLOW_DISABLE_TELEMETRY="true",
               MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false",
               OMP_NUM_THREADS="1")
    probe = subprocess.run([python, "-c", "import cdanet"], env=env, cwd=root, capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'cdanet'" in probe.stderr, "the environment sees cdanet"
    return python, env


@pytest.fixture(scope="module")
def registered(model_dir: str, processed: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store whose champion is the raw-input model; returns its tracking URI."""
    path = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{path}/mlflow.db"
    register_candidate(
        model_dir, tracking_uri=uri, model_name=NAME, metrics={"test_auc": 0.6}, params={},
        decision=decide(0.6, None, GateConfig(min_auc=0.0, domain=TARGET)), lineage={},
        pipeline_run_id="run-1", processed_root=processed,
    )
    return uri


def _raw_records(processed: str, model_dir: str, n: int) -> tuple[list[dict], np.ndarray]:
    scorer = CDAnetPyfunc.from_model_dir(model_dir)
    table = _test_table(processed).slice(0, n)
    frame = raw_frame(table, scorer.schema, scorer.vocabularies[TARGET])
    frame.loc[0, "user_id"] = "a-user-never-seen"
    expected = scorer.predict(None, frame)
    return json.loads(frame.to_json(orient="records")), expected


@pytest.mark.slow
def test_champion_loads_and_predicts_in_a_fresh_environment(
    registered: str, processed: str, model_dir: str, tmp_path
) -> None:
    python, env = isolated_env(str(tmp_path / "venv"))
    records, expected = _raw_records(processed, model_dir, 5)
    (tmp_path / "rows.json").write_text(json.dumps(records))
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({registered!r})\n"
        f"model = mlflow.pyfunc.load_model('models:/{NAME}@{CHAMPION_ALIAS}')\n"
        "import cdanet\n"
        "print(json.dumps({'cdanet': cdanet.__file__, "
        "'p': [float(x) for x in model.predict(pd.DataFrame(json.load(open('rows.json'))))]}))\n"
    )
    out = subprocess.run([python, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "/code/cdanet/" in result["cdanet"]  # the code shipped in the model, not this checkout
    np.testing.assert_allclose(result["p"], expected, rtol=0, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_raw_ids_over_http(
    registered: str, processed: str, model_dir: str, tmp_path
) -> None:
    python, env = isolated_env(str(tmp_path / "venv"))
    env["MLFLOW_TRACKING_URI"] = registered
    port = _free_port()
    # The README's command as written, for this store's model and a free port, by the environment's python.
    readme = (REPO / "README.md").read_text()
    documented = next(line for line in readme[readme.index("## Serving"):].splitlines()
                      if line.startswith("mlflow models serve"))
    args = shlex.split(documented)[1:]
    assert args[:4] == ["models", "serve", "-m", "models:/cdanet-amazon-movie@champion"] and args[-2] == "-p", args
    args[3], args[-1] = f"models:/{NAME}@{CHAMPION_ALIAS}", str(port)
    cmd = [python, "-m", "mlflow", *args, "--host", "127.0.0.1"]
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        records, expected = _raw_records(processed, model_dir, 3)
        (tmp_path / "request.json").write_text(json.dumps({"dataframe_records": records}))
        # The README's request as written, to this server's port.
        curl = next(line for line in readme[readme.index("## Serving"):].splitlines() if line.startswith("curl "))
        curl_args = [a.replace("localhost:5000", f"127.0.0.1:{port}") for a in shlex.split(curl)]
        out = subprocess.run(curl_args, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        np.testing.assert_allclose(answer["predictions"], expected, rtol=0, atol=1e-6)
        assert all(0.0 <= p <= 1.0 for p in answer["predictions"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_indices_model_keeps_the_processed_signature(processed_dir: str, tmp_path) -> None:
    """A model directory without vocabularies (trained on data written without them) takes indices."""
    cfg = tiny_config("amazon", target_domain=TARGET).with_overrides(
        ["train.max_epochs=1", "train.num_threads=1", "train.batch_size=512", "model.name=mlp"]
    ).validate()
    md = run_experiment(cfg, processed_dir, str(tmp_path / "exp")).model_dir
    scorer = CDAnetPyfunc.from_model_dir(md)
    assert scorer.input_encoding == "indices"
    table = read_rows(processed_dir, scorer.schema, "test", limit=4)
    path = save_served_model(str(tmp_path / "model"), md, input_example=example_frame(scorer.schema, table))
    assert mlflow.models.Model.load(path).metadata["input_encoding"] == "indices"
    pyfunc = mlflow.pyfunc.load_model(path)
    np.testing.assert_allclose(pyfunc.predict(pd.DataFrame(example_frame(scorer.schema, table))),
                               scorer.predict_indices(table.to_pandas()), rtol=0, atol=1e-6)


def test_a_version_logged_before_models_from_code_is_read_as_data(model_dir: str, tmp_path, processed: str) -> None:
    """Champions registered earlier are cloudpickled pyfuncs: the gate still scores them, unpickling nothing."""
    old = str(tmp_path / "old")
    mlflow.pyfunc.save_model(old, python_model=CDAnetPyfunc(), artifacts={"model_dir": model_dir})
    assert os.path.exists(os.path.join(old, "python_model.pkl"))
    marker = str(tmp_path / "pwned")
    with open(os.path.join(old, "python_model.pkl"), "wb") as fh:
        pickle.dump(_Plant(marker), fh)
    scorer = load_logged_model(old)
    assert not os.path.exists(marker)
    table = _test_table(processed)
    np.testing.assert_allclose(scorer.predict_indices(table.to_pandas()), _torch_scores(model_dir, table),
                               rtol=0, atol=1e-6)
