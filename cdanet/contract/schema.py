"""The feature schema: one typed :class:`DomainSchema` per domain, and the checks it implies.

Preprocessing writes a :class:`DomainSchema` as ``schema.json`` next to the parquet splits of a
domain (:mod:`cdanet.contract.layout`); the model library, validation and serving read it. Two
domains have two different schemas (heterogeneous inputs, paper Sec. 3): nothing in the library may
assume the domains share a field.

Column encodings in the parquet files:

* ``categorical_id`` / ``categorical``: ``int64`` index in ``[0, vocab_size)``; index 0 is OOV.
* ``multi_hot``: ``list<int64>`` of indices in ``[0, vocab_size)``; index 0 is OOV/padding and is
  ignored when pooling; an empty list pools to a zero vector.
* ``dense_vector``: ``list<float32>`` (or fixed-size list) of exactly ``dim`` finite values.
* label ``int64`` in {0, 1}; timestamp ``int64`` unix seconds; raw user/item ids ``string`` (kept
  for auditing and for joining predictions back to the source data, never fed to the model).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import pyarrow as pa

from cdanet.atomic import write_text
from cdanet.contract.layout import SCHEMA_FILENAME, domain_dir

SCHEMA_VERSION = 1
OOV_INDEX = 0
#: The categorical_id field that names the user in every domain's schema (the user link and the
#: user profiles of cdanet.models read it). Preprocessing's tables carry the raw ids under the same names.
USER_FIELD = "user_id"
#: The categorical_id field that names the item in every domain's schema.
ITEM_FIELD = "item_id"
#: The user-attribute fields of Taobao's ad domain (Tianchi 56 ``user_profile.csv``), in schema order.
USER_PROFILE_FIELDS: tuple[str, ...] = ("cms_segid", "cms_group_id", "gender", "age_level", "pvalue_level",
                                        "shopping_level", "occupation", "new_user_class_level")


class SchemaError(ValueError):
    """A schema is invalid, or does not match the data or checkpoint it is used with."""


class DataError(SchemaError):
    """Processed data that violates the feature contract (values, not types)."""


class FieldKind(str, Enum):
    """How a feature field is encoded and embedded (paper Sec. 5.1.1)."""

    CATEGORICAL_ID = "categorical_id"  # high-cardinality id (user id, item id) -> embedding
    CATEGORICAL = "categorical"  # low-cardinality one-hot field (genre, brand) -> embedding
    MULTI_HOT = "multi_hot"  # list of ids -> pooled embedding bag
    DENSE_VECTOR = "dense_vector"  # fixed-length float vector (GloVe title vector) -> linear


CATEGORICAL_KINDS = frozenset({FieldKind.CATEGORICAL_ID, FieldKind.CATEGORICAL, FieldKind.MULTI_HOT})


@dataclass(frozen=True)
class FieldSpec:
    """One input field of a domain.

    ``vocab_size`` counts every index including the OOV index 0 (categorical kinds only);
    ``dim`` is the vector length (dense vectors only); ``max_len`` bounds a multi-hot list
    (longer lists are truncated when loaded).
    """

    name: str
    kind: FieldKind
    vocab_size: int = 0
    dim: int = 0
    max_len: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", FieldKind(self.kind))
        if not self.name or not self.name.replace("_", "").isalnum():
            raise SchemaError(f"field name {self.name!r} must be a non-empty identifier")
        if self.kind in CATEGORICAL_KINDS:
            if self.vocab_size < 2:
                raise SchemaError(
                    f"field {self.name!r} ({self.kind.value}) needs vocab_size >= 2 "
                    f"(OOV index 0 plus at least one value), got {self.vocab_size}"
                )
            if self.dim:
                raise SchemaError(f"field {self.name!r} ({self.kind.value}) must not set dim")
        if self.kind is FieldKind.MULTI_HOT and self.max_len < 1:
            raise SchemaError(f"multi_hot field {self.name!r} needs max_len >= 1, got {self.max_len}")
        if self.kind is FieldKind.DENSE_VECTOR:
            if self.dim < 1:
                raise SchemaError(f"dense_vector field {self.name!r} needs dim >= 1, got {self.dim}")
            if self.vocab_size:
                raise SchemaError(f"dense_vector field {self.name!r} must not set vocab_size")

    @property
    def is_categorical(self) -> bool:
        return self.kind in CATEGORICAL_KINDS

    def arrow_type(self) -> pa.DataType:
        """The parquet/arrow type that preprocessing writes for this field."""
        if self.kind is FieldKind.MULTI_HOT:
            return pa.list_(pa.int64())
        if self.kind is FieldKind.DENSE_VECTOR:
            return pa.list_(pa.float32())
        return pa.int64()

    def accepts(self, dtype: pa.DataType) -> bool:
        """Whether a column of ``dtype`` can be read as this field (tolerates list flavours)."""
        if self.kind is FieldKind.MULTI_HOT:
            return _is_list(dtype) and pa.types.is_integer(dtype.value_type)
        if self.kind is FieldKind.DENSE_VECTOR:
            return _is_list(dtype) and pa.types.is_floating(dtype.value_type)
        return pa.types.is_integer(dtype)

    def check_indices(self, values: np.ndarray, source: str) -> None:
        """Raise :class:`DataError` naming ``source`` if an index in ``values`` is outside ``[0, vocab_size)``."""
        bad = (values < 0) | (values >= self.vocab_size)
        if bad.any():
            first = int(values[np.argmax(bad)])
            raise DataError(
                f"{source}: column {self.name!r} has {int(bad.sum())} index(es) outside [0, {self.vocab_size}) "
                f"(vocab_size of the schema), e.g. {first}; the schema and the parquet files are out of sync"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        return d


def _is_list(dtype: pa.DataType) -> bool:
    return pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype)


@dataclass(frozen=True)
class DomainSchema:
    """The inputs of one domain: its feature fields plus label, timestamp and raw id columns."""

    dataset: str
    domain: str
    fields: tuple[FieldSpec, ...]
    label_column: str = "label"
    timestamp_column: str = "timestamp"
    user_id_column: str = "user_id_raw"
    item_id_column: str = "item_id_raw"
    schema_version: int = SCHEMA_VERSION
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        if not self.fields:
            raise SchemaError(f"domain {self.domain!r} has no feature fields")
        names = [f.name for f in self.fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SchemaError(f"domain {self.domain!r} has duplicate fields: {dupes}")
        reserved = set(self.meta_columns)
        clash = sorted(reserved.intersection(names))
        if clash:
            raise SchemaError(f"domain {self.domain!r}: fields {clash} clash with label/timestamp/id columns")
        if self.schema_version != SCHEMA_VERSION:
            raise SchemaError(
                f"schema_version {self.schema_version} of domain {self.domain!r} is not supported "
                f"(this library reads version {SCHEMA_VERSION})"
            )

    # ---- lookup -------------------------------------------------------------------------------
    @property
    def meta_columns(self) -> tuple[str, str, str, str]:
        return (self.label_column, self.timestamp_column, self.user_id_column, self.item_id_column)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise SchemaError(f"domain {self.domain!r} has no field {name!r}; fields: {list(self.field_names)}")

    def arrow_schema(self) -> pa.Schema:
        """The arrow schema of a processed split: feature fields, then label/timestamp/raw ids."""
        cols = [pa.field(f.name, f.arrow_type(), nullable=False) for f in self.fields]
        cols += [
            pa.field(self.label_column, pa.int64(), nullable=False),
            pa.field(self.timestamp_column, pa.int64(), nullable=False),
            pa.field(self.user_id_column, pa.string(), nullable=False),
            pa.field(self.item_id_column, pa.string(), nullable=False),
        ]
        return pa.schema(cols)

    # ---- checks -------------------------------------------------------------------------------
    def check_feature_columns(self, actual: pa.Schema, source: str) -> None:
        """Raise :class:`SchemaError` naming ``source`` if a feature column of ``actual`` is missing or mistyped.

        The label, timestamp and raw id columns are not required (rows to score need only features).
        """
        problems = [
            f"missing feature column {f.name!r} ({f.kind.value}, expected {f.arrow_type()})"
            if f.name not in actual.names
            else f"column {f.name!r} has type {actual.field(f.name).type}, expected {f.arrow_type()}"
            for f in self.fields
            if f.name not in actual.names or not f.accepts(actual.field(f.name).type)
        ]
        if problems:
            raise SchemaError(f"{source} does not match the features of domain {self.domain!r}: " + "; ".join(problems))

    def check_arrow_schema(self, actual: pa.Schema, source: str) -> None:
        """Raise :class:`SchemaError` naming ``source`` if ``actual`` cannot be read with this schema."""
        problems: list[str] = []
        for f in self.fields:
            if f.name not in actual.names:
                problems.append(f"missing feature column {f.name!r} ({f.kind.value}, expected {f.arrow_type()})")
            elif not f.accepts(actual.field(f.name).type):
                problems.append(
                    f"column {f.name!r} has type {actual.field(f.name).type}, "
                    f"expected {f.arrow_type()} for a {f.kind.value} field"
                )
        expected_meta = {
            self.label_column: pa.types.is_integer,
            self.timestamp_column: pa.types.is_integer,
            self.user_id_column: lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
            self.item_id_column: lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
        }
        for name, ok in expected_meta.items():
            if name not in actual.names:
                problems.append(f"missing column {name!r}")
            elif not ok(actual.field(name).type):
                problems.append(f"column {name!r} has unexpected type {actual.field(name).type}")
        if problems:
            raise SchemaError(
                f"{source} does not match the schema of domain {self.domain!r} "
                f"(dataset {self.dataset!r}): " + "; ".join(problems)
            )

    # ---- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "dataset": self.dataset,
            "domain": self.domain,
            "label_column": self.label_column,
            "timestamp_column": self.timestamp_column,
            "user_id_column": self.user_id_column,
            "item_id_column": self.item_id_column,
            "fields": [f.to_dict() for f in self.fields],
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> DomainSchema:
        try:
            fields = tuple(FieldSpec(**f) for f in d["fields"])
            kwargs = {k: d[k] for k in (
                "dataset", "domain", "label_column", "timestamp_column", "user_id_column",
                "item_id_column", "schema_version") if k in d}
            return cls(fields=fields, metadata=dict(d.get("metadata", {})), **kwargs)
        except SchemaError as e:
            raise SchemaError(f"{source}: {e}") from e
        except (KeyError, TypeError, ValueError) as e:
            raise SchemaError(
                f"{source} is not a valid domain schema ({type(e).__name__}: {e}); expected a JSON object "
                "with 'dataset', 'domain' and 'fields' (list of {name, kind, vocab_size|dim, max_len})"
            ) from e

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def fingerprint(self) -> str:
        """A stable hash of everything that determines tensor shapes (not metadata)."""
        d = self.to_dict()
        d.pop("metadata")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def save(self, domain_dir: str) -> str:
        os.makedirs(domain_dir, exist_ok=True)
        return write_text(os.path.join(domain_dir, SCHEMA_FILENAME), self.to_json())

    @classmethod
    def load(cls, domain_dir: str) -> DomainSchema:
        path = domain_dir if domain_dir.endswith(".json") else os.path.join(domain_dir, SCHEMA_FILENAME)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"no feature schema at {path}: expected the {SCHEMA_FILENAME} that preprocessing writes "
                f"next to the parquet splits (<processed_root>/<domain>/{SCHEMA_FILENAME})"
            )
        try:
            with open(path) as fh:
                d = json.load(fh)
        except json.JSONDecodeError as e:
            raise SchemaError(f"{path} is not valid JSON: {e}") from e
        return cls.from_dict(d, source=path)

    def check_compatible(self, other: DomainSchema, what: str) -> None:
        """Raise if ``other`` (e.g. the schema stored in a checkpoint) would give different shapes."""
        if self.fingerprint() != other.fingerprint():
            mine = {f.name: f.to_dict() for f in self.fields}
            theirs = {f.name: f.to_dict() for f in other.fields}
            diff = sorted(
                n for n in set(mine) | set(theirs) if mine.get(n) != theirs.get(n)
            )
            raise SchemaError(
                f"schema of domain {self.domain!r} does not match {what}: fields differ: {diff}"
            )


def load_schemas(processed_root: str, domains: Iterable[str]) -> dict[str, DomainSchema]:
    """Read the schema of each domain under ``processed_root``; check the folder names match."""
    schemas = {}
    for domain in domains:
        schema = DomainSchema.load(domain_dir(processed_root, domain))
        if schema.domain != domain:
            raise SchemaError(
                f"{os.path.join(domain_dir(processed_root, domain), SCHEMA_FILENAME)} describes domain "
                f"{schema.domain!r}, not {domain!r}"
            )
        schemas[domain] = schema
    return schemas


def non_null_column(table: pa.Table, name: str, source: str) -> pa.Array:
    """Column ``name`` of ``table`` as one array; :class:`DataError` naming ``source`` if it holds a null."""
    col = table.column(name).combine_chunks()
    if col.null_count:
        raise DataError(
            f"{source}: column {name!r} has {col.null_count} null value(s); the feature contract "
            "requires every row to carry a value (use OOV index 0 / an empty list instead)"
        )
    return col
