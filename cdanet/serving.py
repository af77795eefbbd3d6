"""The served model: the MLflow pyfunc that scores processed feature rows of its target domain.

The registered artifact (:mod:`cdanet.registry` logs it) is an ``mlflow.pyfunc`` model
(:class:`CDAnetPyfunc`) that wraps a model directory (:mod:`cdanet.artifacts`) logged as an
artifact. It is deliberately not ``mlflow.pytorch``: MLflow 3 logs torch models in the torch.export
format, which takes tensors and loads back as a GraphModule, while this model takes processed feature
rows and needs the schema that came with it. The weights are loaded with
``torch.load(weights_only=True)``.

Serving contract (also the logged signature): a pandas DataFrame with one column per feature field
of the model's TARGET domain, as in the processed parquet; the output is the click probability of
every row, float32 ``[N]`` in [0, 1].

====================================  =========================  =======================
field kind                            column values              MLflow signature type
====================================  =========================  =======================
``categorical_id`` / ``categorical``  int64 index                ``long``
``multi_hot``                         list of int64 indices      ``Array(long)``
``dense_vector``                      list of ``dim`` floats     ``Array(double)``
====================================  =========================  =======================

List cells may be Python lists or numpy arrays (what ``pyarrow``'s ``to_pandas`` yields); both
are tested. Dense vectors are declared ``Array(double)`` because the input example is stored as
JSON, whose numbers read back as doubles, so example and signature agree; float32 vectors from
parquet pass the signature and are scored in float32. Columns outside the signature (label,
timestamp, raw ids) are ignored with a warning from MLflow, so whole processed rows can be scored.

Indices are those of the model's OWN vocabularies (the preprocessing run it was trained on). The
logged model directory carries them (``vocab/<domain>/<field>.txt``, line i = raw value of index i,
line 0 = OOV) when training saw them, so a serving caller holding raw values encodes them with::

    scorer = mlflow.pyfunc.load_model("models:/cdanet-book@champion").unwrap_python_model()
    vocab = scorer.vocabularies["book"]                       # field -> raw values by index
    frame["writer"] = cdanet.data.encode_values(vocab["writer"], raw_writers)   # unknown -> 0 (OOV)

(``cdanet.artifacts.load_model_dir(path).vocabularies`` gives the same from a model directory.)
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from cdanet.artifacts import load_model_dir
from cdanet.contract import DomainSchema, FieldKind, SchemaError, Vocabulary, read_split
from cdanet.data import table_to_batch

__all__ = ["MODEL_DIR_ARTIFACT", "CDAnetPyfunc", "example_frame", "features_frame", "read_rows"]

MODEL_DIR_ARTIFACT = "model_dir"  # key of the model directory in the pyfunc's artifacts


def features_frame(table: pa.Table, schema: DomainSchema) -> pd.DataFrame:
    """The serving representation of processed rows: the feature columns of ``schema``.

    Categorical fields stay int64; multi-hot and dense fields become Python lists per row (JSON
    and MLflow's signature enforcement both handle lists; see the module docstring).
    """
    data: dict[str, Any] = {}
    for spec in schema.fields:
        if spec.name not in table.column_names:
            raise SchemaError(
                f"rows to score lack feature column {spec.name!r} ({spec.kind.value}) of domain {schema.domain!r}"
            )
        col = table.column(spec.name)
        if not spec.accepts(col.type):
            raise SchemaError(
                f"rows to score: column {spec.name!r} has type {col.type}, expected {spec.arrow_type()} "
                f"for a {spec.kind.value} field of domain {schema.domain!r}"
            )
        data[spec.name] = col.to_pylist() if spec.kind in (FieldKind.MULTI_HOT, FieldKind.DENSE_VECTOR) else col.to_numpy()
    return pd.DataFrame(data)


def _frame_to_table(frame: pd.DataFrame, schema: DomainSchema) -> pa.Table:
    """A serving DataFrame -> an arrow table in the processed parquet layout (feature columns only)."""
    missing = [f.name for f in schema.fields if f.name not in frame.columns]
    if missing:
        raise SchemaError(
            f"input lacks feature column(s) {missing} of domain {schema.domain!r}; expected columns "
            f"{list(schema.field_names)} (see cdanet.serving for the encoding of each field kind)"
        )
    arrays = {}
    for spec in schema.fields:
        values = frame[spec.name]
        try:
            if spec.kind is FieldKind.DENSE_VECTOR:
                # Cells may be lists or numpy arrays, of float64 after signature enforcement.
                arrays[spec.name] = pa.array([None if v is None else np.asarray(v, np.float32) for v in values],
                                             pa.list_(pa.float32()))
            elif spec.kind is FieldKind.MULTI_HOT:
                arrays[spec.name] = pa.array([None if v is None else np.asarray(v, np.int64) for v in values],
                                             pa.list_(pa.int64()))
            else:
                arrays[spec.name] = pa.array(values, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise SchemaError(
                f"input column {spec.name!r} cannot be read as {spec.arrow_type()} ({spec.kind.value}): {e}"
            ) from e
    return pa.table(arrays)


class CDAnetPyfunc(mlflow.pyfunc.PythonModel):
    """Scores processed feature rows of the model's target domain to click probabilities.

    ``predict`` input: see :func:`features_frame`; output: float32 ``[N]`` probabilities
    ``sigmoid(logit)`` of the target-domain tower; for the augmentation network that is
    ``sigma(R_t^aug(z_t ⊕ z_t'))`` of paper Eq. 10-11.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        loaded = load_model_dir(context.artifacts[MODEL_DIR_ARTIFACT], map_location="cpu")
        self.model = loaded.model
        self.cfg = loaded.cfg
        self.domain = loaded.cfg.target_domain
        self.schema = loaded.schemas[self.domain]
        self.meta = loaded.meta
        # {domain: {field: raw values by index}}; empty for a model saved without vocabularies.
        self.vocabularies: dict[str, dict[str, Vocabulary]] = loaded.vocabularies
        if self.domain not in getattr(self.model, "eval_domains", (self.domain,)):
            raise SchemaError(f"the logged model does not score its target domain {self.domain!r}")

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        if not isinstance(model_input, pd.DataFrame):
            raise TypeError(f"expected a pandas DataFrame of feature rows, got {type(model_input).__name__}")
        table = _frame_to_table(model_input, self.schema)
        out = np.empty(table.num_rows, dtype=np.float32)
        step = max(1, int(self.cfg.train.eval_batch_size))
        with torch.inference_mode():
            for start in range(0, table.num_rows, step):
                batch = table_to_batch(self.schema, table.slice(start, step), source="pyfunc input")
                logits = self.model({self.domain: batch})[self.domain]
                out[start : start + len(batch)] = torch.sigmoid(logits.float()).numpy()
        return out


# ---- rows in the serving representation ---------------------------------------------------------


def read_rows(processed_root: str, schema: DomainSchema, split: str, limit: int | None = None) -> pa.Table:
    """The rows of ``split`` of ``schema.domain`` under ``processed_root`` (the first ``limit`` of them),
    each file checked against ``schema``."""
    return read_split(processed_root, schema, split, limit=limit).table


def example_frame(schema: DomainSchema, rows: pa.Table | None = None) -> pd.DataFrame:
    """The logged input example: ``rows`` in the serving representation, or schema-conformant
    placeholder rows (OOV index, short lists, zero vectors) when no processed data is at hand.

    Dense vectors become doubles so that the signature inferred from the example accepts the example
    read back from its JSON.
    """
    frame = _schema_example(schema) if rows is None else features_frame(rows, schema)
    for spec in schema.fields:
        if spec.kind is FieldKind.DENSE_VECTOR:
            frame[spec.name] = [[float(x) for x in v] for v in frame[spec.name]]
    return frame


def _schema_example(schema: DomainSchema, n: int = 2) -> pd.DataFrame:
    """Schema-conformant rows (OOV index, short lists, zero vectors) when no processed data is at hand."""
    data: dict[str, Any] = {}
    for spec in schema.fields:
        if spec.kind is FieldKind.MULTI_HOT:
            data[spec.name] = [[0] * min(2, spec.max_len) for _ in range(n)]
        elif spec.kind is FieldKind.DENSE_VECTOR:
            data[spec.name] = [[0.0] * spec.dim for _ in range(n)]
        else:
            data[spec.name] = np.zeros(n, dtype=np.int64)
    return pd.DataFrame(data)
