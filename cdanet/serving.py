"""The served model: the MLflow pyfunc that scores its target domain's raw rows (or vocabulary indices).

The registered artifact (:mod:`cdanet.registry` logs it) is an ``mlflow.pyfunc`` model logged as
**models-from-code**: nothing in it is pickled. It holds

* ``model_code.py`` (:data:`MODEL_CODE`): three lines that build :class:`CDAnetPyfunc`;
* ``code/cdanet/``: the modules of this package that loading and scoring import
  (:func:`serving_code_modules`, found from the source, shipped with ``code_paths``), so the model
  loads where ``cdanet`` is not installed; its requirements are only mlflow, torch, numpy, pandas
  and pyarrow;
* ``artifacts/model_dir/``: the model directory (:mod:`cdanet.artifacts`): config and schemas as
  JSON, vocabularies as text files, weights as a tensor-only ``state_dict`` read with
  ``torch.load(weights_only=True)``.

The gate reads a champion with :func:`load_logged_model`: the data of the logged model, scored by
the *installed* library's code, never code or pickles from the artifact store.

Serving contract (also the logged signature and input example), for a model whose directory
carries the vocabularies of its target domain (every model trained on preprocessed data):
``input_encoding = "raw"``, a pandas DataFrame with one column per feature field of the model's
TARGET domain holding the RAW values, encoded here with the model's own vocabularies:

====================================  =====================================  =======================
field kind                            column values                          MLflow signature type
====================================  =====================================  =======================
``categorical_id`` / ``categorical``  raw value (user id, item id, brand)    ``string``
``multi_hot``                         list of raw values                     ``Array(string)``
``dense_vector``                      list of ``dim`` floats                 ``Array(double)``
====================================  =====================================  =======================

A value the vocabulary does not hold (a new user or item, a missing value) becomes the OOV index 0,
as in preprocessing; in a multi-hot list that index is the padding, so unknown list values drop
out. The output is the click probability of every row, float32 ``[N]`` in [0, 1]. Over HTTP
(``mlflow models serve``)::

    curl -s localhost:5000/invocations -H 'Content-Type: application/json' \\
      -d '{"dataframe_records": [{"user_id": "A1X", "item_id": "0439", "writer": "Rowling",
                                  "category": ["Books", "Fantasy"], "title": [0.1, ...]}]}'
    {"predictions": [0.62]}

A model directory WITHOUT vocabularies (trained on data written without them, e.g. the synthetic
test data) cannot encode raw values: it is logged with ``input_encoding = "indices"`` and takes the
processed parquet's columns (int64 indices, lists of indices, dense vectors; ``long``,
``Array(long)``, ``Array(double)``), as :func:`features_frame` builds them.

List cells may be Python lists or numpy arrays (what ``pyarrow``'s ``to_pandas`` yields). Dense
vectors are declared ``Array(double)`` because the input example is stored as JSON, whose numbers
read back as doubles; float32 vectors pass the signature and are scored in float32. Columns
outside the signature (label, timestamp) are ignored with a warning from MLflow.
"""

from __future__ import annotations

import ast
import importlib.metadata
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import yaml

import cdanet
from cdanet.artifacts import load_model_dir
from cdanet.contract import (
    ITEM_FIELD,
    USER_FIELD,
    DomainSchema,
    FieldKind,
    FieldSpec,
    SchemaError,
    Vocabulary,
    encode_values,
    read_split,
)
from cdanet.data import table_to_batch

__all__ = [
    "INPUT_INDICES",
    "INPUT_RAW",
    "MODEL_CODE",
    "MODEL_DIR_ARTIFACT",
    "CDAnetPyfunc",
    "champion_storage_uri",
    "copy_serving_code",
    "example_frame",
    "features_frame",
    "load_logged_model",
    "raw_frame",
    "read_rows",
    "requirement_pins",
    "save_served_model",
    "serving_code_modules",
]

MODEL_DIR_ARTIFACT = "model_dir"  # key of the model directory in the pyfunc's artifacts
INPUT_RAW = "raw"  # the model encodes raw values with its own vocabularies
INPUT_INDICES = "indices"  # the model takes vocabulary indices (a model directory without vocabularies)

#: The models-from-code file logged with every model: MLflow runs it at load time instead of
#: unpickling a ``python_model.pkl``; ``cdanet`` resolves to the ``code/`` shipped beside it.
MODEL_CODE = '''"""CDAnet served model (MLflow models-from-code): the pyfunc class comes from the shipped code/cdanet."""
import mlflow
from cdanet.serving import CDAnetPyfunc

mlflow.models.set_model(CDAnetPyfunc())
'''

#: The root of the serving code: what ``model_code.py`` imports.
_SERVING_ROOT = "cdanet.serving"


# ---- the serving representation -----------------------------------------------------------------


def features_frame(table: pa.Table, schema: DomainSchema) -> pd.DataFrame:
    """Processed rows as vocabulary indices: the feature columns of ``schema`` (``input_encoding="indices"``).

    Categorical fields stay int64; multi-hot and dense fields become Python lists per row (JSON
    and MLflow's signature enforcement both handle lists; see the module docstring).
    """
    data: dict[str, Any] = {}
    for spec in schema.fields:
        col = _feature_column(table, schema, spec.name)
        if not spec.accepts(col.type):
            raise SchemaError(
                f"rows to score: column {spec.name!r} has type {col.type}, expected {spec.arrow_type()} "
                f"for a {spec.kind.value} field of domain {schema.domain!r}"
            )
        data[spec.name] = col.to_pylist() if spec.kind in (FieldKind.MULTI_HOT, FieldKind.DENSE_VECTOR) else col.to_numpy()
    return pd.DataFrame(data)


def raw_frame(table: pa.Table, schema: DomainSchema, vocabularies: Mapping[str, Vocabulary]) -> pd.DataFrame:
    """Processed rows decoded back into raw values with ``vocabularies`` (``input_encoding="raw"``).

    Categorical fields become their raw strings, multi-hot lists lists of raw strings (OOV and
    padding indices dropped), dense vectors lists of floats: what a caller holding raw rows sends.
    User and item ids come from the rows' raw id columns when the table has them (so an id the
    vocabulary lacks keeps its raw value); another OOV index becomes the vocabulary's OOV marker
    (line 0), which encodes back to OOV.
    """
    frame = features_frame(table, schema)
    raw_ids = {USER_FIELD: schema.user_id_column, ITEM_FIELD: schema.item_id_column}
    for spec in schema.fields:
        if not spec.is_categorical:
            continue
        vocab = np.asarray(vocabularies[spec.name], dtype=object)
        if spec.kind is FieldKind.MULTI_HOT:
            frame[spec.name] = [[str(vocab[i]) for i in cell if 0 < i < len(vocab)] for cell in frame[spec.name]]
        elif raw_ids.get(spec.name) in table.column_names:
            frame[spec.name] = [str(v) for v in table.column(raw_ids[spec.name]).to_pylist()]
        else:
            idx = np.asarray(frame[spec.name], dtype=np.int64)
            frame[spec.name] = [str(vocab[i]) if 0 <= i < len(vocab) else str(vocab[0]) for i in idx]
    return frame


def _feature_column(table: pa.Table, schema: DomainSchema, name: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise SchemaError(
            f"rows to score lack feature column {name!r} ({schema.field(name).kind.value}) of domain {schema.domain!r}"
        )
    return table.column(name)


def _missing_columns(frame: pd.DataFrame, schema: DomainSchema) -> None:
    missing = [f.name for f in schema.fields if f.name not in frame.columns]
    if missing:
        raise SchemaError(
            f"input lacks feature column(s) {missing} of domain {schema.domain!r}; expected columns "
            f"{list(schema.field_names)} (see cdanet.serving for the values of each field kind)"
        )


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


#: Reads one input column of a field into its arrow array (the processed parquet's type).
_ColumnEncoder = Callable[[pd.Series, FieldSpec], pa.Array]


def _encode_frame(
    frame: pd.DataFrame,
    schema: DomainSchema,
    encoders: Mapping[FieldKind, _ColumnEncoder],
    expected: Callable[[FieldSpec], str],
) -> pa.Table:
    """The feature columns of ``frame``, each read by its kind's encoder, as an arrow table of ``schema``.

    A missing column, or a column its encoder cannot read, is a one-line :class:`SchemaError`
    naming the column and ``expected(spec)``, what the encoding takes for that field.
    """
    _missing_columns(frame, schema)
    arrays = {}
    for spec in schema.fields:
        values = frame[spec.name]
        try:
            arrays[spec.name] = encoders[spec.kind](values, spec)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise SchemaError(f"input column {spec.name!r} cannot be read as {expected(spec)}: {e}") from e
    return pa.table(arrays)


def _index_categorical(values: pd.Series, spec: FieldSpec) -> pa.Array:
    return pa.array(values, pa.int64())


def _index_multi_hot(values: pd.Series, spec: FieldSpec) -> pa.Array:
    return pa.array([None if _is_missing(v) else np.asarray(v, np.int64) for v in values], pa.list_(pa.int64()))


def _dense(values: pd.Series, spec: FieldSpec) -> pa.Array:
    # Cells may be lists or numpy arrays, of float64 after signature enforcement.
    return pa.array([None if _is_missing(v) else np.asarray(v, np.float32) for v in values], pa.list_(pa.float32()))


_INDEX_ENCODERS: dict[FieldKind, _ColumnEncoder] = {
    FieldKind.CATEGORICAL_ID: _index_categorical, FieldKind.CATEGORICAL: _index_categorical,
    FieldKind.MULTI_HOT: _index_multi_hot, FieldKind.DENSE_VECTOR: _dense,
}


def _frame_to_table(frame: pd.DataFrame, schema: DomainSchema) -> pa.Table:
    """A DataFrame of vocabulary indices -> an arrow table in the processed parquet layout."""
    return _encode_frame(frame, schema, _INDEX_ENCODERS, lambda spec: f"{spec.arrow_type()} ({spec.kind.value})")


_RAW_CELL = {FieldKind.CATEGORICAL_ID: "a string", FieldKind.CATEGORICAL: "a string",
             FieldKind.MULTI_HOT: "a list of strings", FieldKind.DENSE_VECTOR: "a list of floats"}


def _raw_to_table(frame: pd.DataFrame, schema: DomainSchema, vocabularies: Mapping[str, Vocabulary]) -> pa.Table:
    """A DataFrame of raw values -> indices under ``vocabularies`` (unknown or missing -> OOV 0)."""

    def categorical(values: pd.Series, spec: FieldSpec) -> pa.Array:
        return pa.array(encode_values(vocabularies[spec.name], [_raw_text(v) for v in values]))

    def multi_hot(values: pd.Series, spec: FieldSpec) -> pa.Array:
        if any(isinstance(v, (str, bytes)) for v in values):
            raise TypeError("got a string where a list of values belongs")
        cells = [[] if _is_missing(v) else [_raw_text(x) for x in v] for v in values]
        flat = encode_values(vocabularies[spec.name], [x for cell in cells for x in cell])
        offsets = np.concatenate([[0], np.cumsum([len(c) for c in cells])]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int64()))

    encoders = {FieldKind.CATEGORICAL_ID: categorical, FieldKind.CATEGORICAL: categorical,
                FieldKind.MULTI_HOT: multi_hot, FieldKind.DENSE_VECTOR: _dense}
    return _encode_frame(frame, schema, encoders,
                         lambda spec: f"raw {spec.kind.value} values ({_RAW_CELL[spec.kind]} per row)")


def _raw_text(value: Any) -> str | None:
    """A raw cell as the vocabulary's text: ids sent as JSON numbers (``123``) match ``"123"``."""
    if _is_missing(value):
        return None
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8")
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


# ---- the pyfunc ---------------------------------------------------------------------------------


class CDAnetPyfunc(mlflow.pyfunc.PythonModel):
    """Scores rows of the model's target domain to click probabilities.

    ``predict`` input: raw values (``input_encoding == "raw"``) or vocabulary indices (a model
    without vocabularies), see the module docstring; output: float32 ``[N]`` probabilities
    ``sigmoid(logit)`` of the target-domain tower; for the augmentation network that is
    ``sigma(R_t^aug(z_t ⊕ z_t'))`` of paper Eq. 10-11. :meth:`predict_indices` scores
    processed (index-encoded) rows whatever the input encoding: the gate's path.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self._load(context.artifacts[MODEL_DIR_ARTIFACT])

    @classmethod
    def from_model_dir(cls, path: str) -> CDAnetPyfunc:
        """The pyfunc over the model directory at ``path``, without MLflow's loader."""
        scorer = cls()
        scorer._load(path)
        return scorer

    def _load(self, path: str) -> None:
        loaded = load_model_dir(path, map_location="cpu")
        self.model = loaded.model
        self.cfg = loaded.cfg
        self.domain = loaded.cfg.target_domain
        self.schema = loaded.schemas[self.domain]
        self.meta = loaded.meta
        # {domain: {field: raw values by index}}; empty for a model saved without vocabularies.
        self.vocabularies: dict[str, dict[str, Vocabulary]] = loaded.vocabularies
        if self.domain not in getattr(self.model, "eval_domains", (self.domain,)):
            raise SchemaError(f"the logged model does not score its target domain {self.domain!r}")

    @property
    def input_encoding(self) -> str:
        """:data:`INPUT_RAW` when the model carries its target domain's vocabularies, else :data:`INPUT_INDICES`."""
        return INPUT_RAW if self.domain in self.vocabularies else INPUT_INDICES

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        frame = _check_frame(model_input)
        if self.input_encoding == INPUT_RAW:
            return self.score_table(_raw_to_table(frame, self.schema, self.vocabularies[self.domain]))
        return self.score_table(_frame_to_table(frame, self.schema))

    def predict_indices(self, model_input: pd.DataFrame) -> np.ndarray:
        """Probabilities of processed rows given as vocabulary indices (:func:`features_frame`)."""
        return self.score_table(_frame_to_table(_check_frame(model_input), self.schema))

    def score_table(self, table: pa.Table) -> np.ndarray:
        """float32 ``[N]`` probabilities of an index-encoded arrow table of the target domain."""
        out = np.empty(table.num_rows, dtype=np.float32)
        step = max(1, int(self.cfg.train.eval_batch_size))
        with torch.inference_mode():
            for start in range(0, table.num_rows, step):
                batch = table_to_batch(self.schema, table.slice(start, step), source="pyfunc input")
                logits = self.model({self.domain: batch})[self.domain]
                out[start : start + len(batch)] = torch.sigmoid(logits.float()).numpy()
        return out


def _check_frame(model_input: Any) -> pd.DataFrame:
    if not isinstance(model_input, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame of feature rows, got {type(model_input).__name__}")
    return model_input


def load_logged_model(local_path: str) -> CDAnetPyfunc:
    """The model logged at ``local_path`` (a downloaded MLflow model folder), read as data only.

    Neither the logged code (``model_code.py``, ``code/``) nor any pickle in the folder is run: the
    model directory named in ``MLmodel`` (YAML, read with ``safe_load``) is loaded by this installed
    library, its weights with ``torch.load(weights_only=True)``. Versions logged before
    models-from-code (a pickled ``python_model.pkl`` beside the same ``artifacts/model_dir``) load
    the same way.
    """
    mlmodel = os.path.join(local_path, "MLmodel")
    try:
        with open(mlmodel) as fh:
            meta = yaml.safe_load(fh)
        rel = meta["flavors"]["python_function"]["artifacts"][MODEL_DIR_ARTIFACT]["path"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise SchemaError(
            f"{mlmodel}: expected an MLflow pyfunc model logged by cdanet.registry, with the artifact "
            f"{MODEL_DIR_ARTIFACT!r} under flavors.python_function.artifacts ({type(e).__name__}: {e})"
        ) from e
    root = os.path.realpath(local_path)
    model_dir = os.path.realpath(os.path.join(root, str(rel)))
    if os.path.commonpath([root, model_dir]) != root:
        raise SchemaError(f"{mlmodel}: artifact {MODEL_DIR_ARTIFACT!r} points outside the model folder ({rel!r})")
    return CDAnetPyfunc.from_model_dir(model_dir)


# ---- what the logged model ships ----------------------------------------------------------------


def serving_code_modules() -> list[str]:
    """The ``cdanet`` modules that loading and scoring the served model import, as paths relative
    to the package (``["__init__.py", "artifacts.py", "contract/__init__.py", ...]``).

    Read from the source (every ``import`` of ``cdanet`` modules, also inside functions), starting
    at this module, so the list follows the code; the package's ``__init__.py`` files on the way
    are included.
    """
    package = os.path.dirname(os.path.abspath(cdanet.__file__))

    def path_of(module: str) -> str | None:
        rel = module.split(".")[1:]
        for candidate in (os.path.join(*rel, "__init__.py") if rel else "__init__.py",
                          os.path.join(*rel) + ".py" if rel else ""):
            if candidate and os.path.isfile(os.path.join(package, candidate)):
                return candidate
        return None

    def imports(rel_path: str) -> set[str]:
        module = "cdanet." + rel_path[:-3].replace(os.sep, ".")
        module = module.removesuffix(".__init__") if rel_path.endswith("__init__.py") else module
        pkg = module if rel_path.endswith("__init__.py") else module.rpartition(".")[0]
        with open(os.path.join(package, rel_path)) as fh:
            tree = ast.parse(fh.read(), rel_path)
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                names |= {base} | {f"{base}.{a.name}" for a in node.names}
        return {n for n in names if n == "cdanet" or n.startswith("cdanet.")}

    seen: set[str] = set()
    todo = [path_of(_SERVING_ROOT)]
    while todo:
        rel = todo.pop()
        if rel is None or rel in seen:
            continue
        seen.add(rel)
        parts = rel.split(os.sep)
        for depth in range(len(parts)):  # the __init__.py of every package on the way
            init = os.path.join(*parts[:depth], "__init__.py") if depth else "__init__.py"
            if os.path.isfile(os.path.join(package, init)):
                todo.append(init)
        todo += [path_of(name) for name in imports(rel)]
    return sorted(seen)


def copy_serving_code(dest: str) -> str:
    """Copy :func:`serving_code_modules` to ``<dest>/cdanet``; return that folder (for ``code_paths``)."""
    package = os.path.dirname(os.path.abspath(cdanet.__file__))
    target = os.path.join(dest, "cdanet")
    for rel in serving_code_modules():
        os.makedirs(os.path.dirname(os.path.join(target, rel)), exist_ok=True)
        shutil.copyfile(os.path.join(package, rel), os.path.join(target, rel))
    return target


# ---- rows in the serving representation ---------------------------------------------------------


def read_rows(processed_root: str, schema: DomainSchema, split: str, limit: int | None = None) -> pa.Table:
    """The rows of ``split`` of ``schema.domain`` under ``processed_root`` (the first ``limit`` of them),
    each file checked against ``schema``."""
    return read_split(processed_root, schema, split, limit=limit).table


def example_frame(
    schema: DomainSchema, rows: pa.Table | None = None, vocabularies: Mapping[str, Vocabulary] | None = None
) -> pd.DataFrame:
    """The logged input example: ``rows`` as raw values when ``vocabularies`` are given (else as
    indices), or schema-conformant placeholder rows when no processed data is at hand.

    Dense vectors become doubles so that the signature inferred from the example accepts the example
    read back from its JSON.
    """
    if rows is None:
        frame = _schema_example(schema, vocabularies)
    elif vocabularies is not None:
        frame = raw_frame(rows, schema, vocabularies)
    else:
        frame = features_frame(rows, schema)
    for spec in schema.fields:
        if spec.kind is FieldKind.DENSE_VECTOR:
            frame[spec.name] = [[float(x) for x in v] for v in frame[spec.name]]
    return frame


def _schema_example(
    schema: DomainSchema, vocabularies: Mapping[str, Vocabulary] | None = None, n: int = 2
) -> pd.DataFrame:
    """Schema-conformant rows (first known value or OOV index, short lists, zero vectors)."""
    data: dict[str, Any] = {}
    for spec in schema.fields:
        if spec.kind is FieldKind.DENSE_VECTOR:
            data[spec.name] = [[0.0] * spec.dim for _ in range(n)]
        elif vocabularies is not None:
            value = vocabularies[spec.name][1]
            data[spec.name] = [[value] if spec.kind is FieldKind.MULTI_HOT else value for _ in range(n)]
        elif spec.kind is FieldKind.MULTI_HOT:
            data[spec.name] = [[0] * min(2, spec.max_len) for _ in range(n)]
        else:
            data[spec.name] = np.zeros(n, dtype=np.int64)
    return pd.DataFrame(data)


def requirement_pins(dists: Sequence[str] = ("mlflow", "torch", "numpy", "pandas", "pyarrow")) -> list[str]:
    """``dist==version`` of the served model's runtime, as installed here (local build tags dropped:
    PEP 440's ``torch==2.13.0`` also matches ``2.13.0+cpu``). No ``cdanet``: its code ships in the model."""
    return [f"{d}=={importlib.metadata.version(d).split('+')[0]}" for d in dists]


def save_served_model(
    path: str,
    model_dir: str,
    *,
    signature: mlflow.models.ModelSignature | None = None,
    input_example: Any = None,
    pip_requirements: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Save the model directory ``model_dir`` at ``path`` as the served MLflow model; return ``path``.

    Models-from-code (:data:`MODEL_CODE` as ``model_code.py``; no ``python_model.pkl``), the serving
    subset of ``cdanet`` (:func:`serving_code_modules`) as ``code_paths``, ``model_dir`` as the
    artifact :data:`MODEL_DIR_ARTIFACT`, requirements :func:`requirement_pins` unless given.
    ``metadata["input_encoding"]`` records whether the model takes raw values or indices.
    """
    model_dir = os.path.abspath(model_dir)
    encoding = CDAnetPyfunc.from_model_dir(model_dir).input_encoding  # a broken directory fails here
    with tempfile.TemporaryDirectory(prefix="cdanet-code-") as tmp:
        code_file = os.path.join(tmp, "model_code.py")
        with open(code_file, "w") as fh:
            fh.write(MODEL_CODE)
        package = copy_serving_code(os.path.join(tmp, "code"))
        saved_path = list(sys.path)
        try:
            mlflow.pyfunc.save_model(
                path,
                python_model=code_file,
                artifacts={MODEL_DIR_ARTIFACT: model_dir},
                code_paths=[package],
                signature=signature,
                input_example=input_example,
                pip_requirements=list(pip_requirements) if pip_requirements is not None else requirement_pins(),
                metadata={**dict(metadata or {}), "input_encoding": encoding},
            )
        finally:
            # MLflow puts the code folder on sys.path when it tries the model on its example: this
            # process keeps importing its installed cdanet, not a copy in a folder about to go.
            sys.path[:] = saved_path
    return path


# ---- the champion's artifact folder, for the KServe InferenceService ----------------------------


def champion_storage_uri(
    tracking_uri: str, model_name: str, artifacts_destination: str | None = None, alias: str = "champion"
) -> tuple[str, str]:
    """(version, storage URI) of the version behind ``models:/<model_name>@<alias>``.

    The URI is the version's artifact folder as KServe's storage initializer reads it: a proxied
    ``mlflow-artifacts:/<path>`` (the server's ``--serve-artifacts``) becomes
    ``<artifacts_destination>/<path>`` (the server's ``MLFLOW_ARTIFACTS_DESTINATION``); any other
    URI (``s3://``, ``gs://``, ``file://``) is returned as it is.
    """
    from urllib.parse import urlparse

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as e:
        raise ValueError(f"registered model {model_name!r} at {tracking_uri} has no version with alias {alias!r}: "
                         f"{str(e).splitlines()[0]}") from e
    source = str(version.source)
    if source.startswith("mlflow-artifacts:"):
        if not artifacts_destination:
            raise ValueError(
                f"version {version.version} of {model_name!r} lives in the server's proxied store ({source}); "
                "pass --artifacts-destination (the server's MLFLOW_ARTIFACTS_DESTINATION, e.g. "
                "s3://mlpipeline/mlflow-artifacts)"
            )
        source = f"{artifacts_destination.rstrip('/')}/{urlparse(source).path.lstrip('/')}"
    return str(version.version), source


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cdanet.serving storage-uri ...``: the champion's ``champion.env`` for manifests/serving."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cdanet.serving", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("storage-uri", help="print MODEL_NAME, MODEL_VERSION and STORAGE_URI of the champion")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", ""),
                   help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--model-name", required=True, help="registered model, e.g. cdanet-amazon-movie")
    p.add_argument("--alias", default="champion")
    p.add_argument("--artifacts-destination", default=None,
                   help="the MLflow server's MLFLOW_ARTIFACTS_DESTINATION, for proxied artifacts")
    args = parser.parse_args(argv)
    if not args.tracking_uri:
        parser.error("--tracking-uri is empty and MLFLOW_TRACKING_URI is not set")
    try:
        version, uri = champion_storage_uri(args.tracking_uri, args.model_name, args.artifacts_destination, args.alias)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"MODEL_NAME={args.model_name}\nMODEL_VERSION={version}\nSTORAGE_URI={uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
