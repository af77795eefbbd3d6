"""The old import path of the feature schema: re-exports :mod:`cdanet.contract` for unswitched modules.

New code imports :mod:`cdanet.contract`. Still imported from here by cdanet.registry, cdanet.steps,
cdanet.layers, cdanet.models and cdanet.training.experiment (modules under other changes at the time
of the move); delete this file once none does.
"""

from cdanet.contract.layout import SCHEMA_FILENAME, SPLITS, STATS_FILENAME, split_files
from cdanet.contract.schema import (
    CATEGORICAL_KINDS,
    OOV_INDEX,
    SCHEMA_VERSION,
    USER_FIELD,
    DomainSchema,
    FieldKind,
    FieldSpec,
    SchemaError,
    load_schemas,
)

__all__ = [
    "CATEGORICAL_KINDS", "OOV_INDEX", "SCHEMA_FILENAME", "SCHEMA_VERSION", "SPLITS", "STATS_FILENAME", "USER_FIELD",
    "DomainSchema", "FieldKind", "FieldSpec", "SchemaError", "load_schemas", "split_files",
]
