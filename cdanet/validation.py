"""Great Expectations suites on the processed data: the gate between preprocessing and training.

One suite per (domain, split) is built from the domain's :class:`~cdanet.contract.DomainSchema`
and run on the split's parquet files (all shards together). What each suite expects:

* the exact set of columns of the feature contract (feature fields, label, timestamp, raw ids),
  with integer / string / list types;
* no null ids: raw user/item ids are non-null, non-empty strings; categorical indices are non-null;
* categorical indices within ``[0, vocab_size)``; for multi-hot lists every element is in range;
* dense vectors of exactly ``dim`` finite values;
* label in {0, 1} with a positive rate within :attr:`ValidationConfig.positive_rate_bounds`;
* at least :attr:`ValidationConfig.min_rows` rows per split;
* no time leakage: ``max(train.timestamp) <= min(validation.timestamp)`` and
  ``max(validation.timestamp) <= min(test.timestamp)`` (paper Sec. 5.1.3 splits chronologically).

GX has no expectations over list-valued cells, so list fields are summarised row by row into
*derived columns* that GX then checks with ordinary column expectations. Derived columns are named
``<field>.<stat>``; the dot cannot occur in a schema field name, so they never collide with data:

=============================  =======================================================================
``<multi_hot>.min`` / ``.max``  smallest / largest non-null element of the row (0 for an empty or null
                                list); their dtype is the list's element type
``<multi_hot>.null_elements``   number of null elements in the row
``<dense>.length``              number of elements (0 for a null row)
``<dense>.all_finite``          every element is non-null and finite
``<dense>.max_abs``             largest absolute element; its dtype is the list's element type
=============================  =======================================================================

Unlike TFX's ExampleValidator, which only flags anomalies, a failing suite must stop the run:
:meth:`ValidationReport.raise_for_failures` raises :class:`DataValidationError` listing every
failed expectation. Results land in GX Data Docs under ``<report_dir>/data_docs/`` and in one
self-contained ``<report_dir>/validation.html`` (a Kubeflow HTML artifact shows a single file).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from great_expectations.data_context.types.base import ProgressBarsConfig

from cdanet import pages
from cdanet.atomic import write_text
from cdanet.contract import SPLITS, DataError, DomainSchema, FieldKind, FieldSpec, load_schemas, read_split

logger = logging.getLogger(__name__)

__all__ = [
    "DataValidationError",
    "ExpectationOutcome",
    "ValidationConfig",
    "ValidationReport",
    "validate_processed",
]

SUMMARY_HTML = "validation.html"
SUMMARY_JSON = "validation.json"
DATA_DOCS_DIR = "data_docs"
_DATA_DOCS_SITE = "cdanet_data_docs"

#: pandas dtype names GX accepts for integer columns (preprocessing writes int64; narrower is fine).
_INTEGER_TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
_FLOAT_TYPES = ["float16", "float32", "float64"]

E = gx.expectations


class DataValidationError(ValueError):
    """Processed data failed validation (or could not be read); the run must stop before training."""


@dataclass(frozen=True)
class ValidationConfig:
    """Thresholds of the data suites.

    ``positive_rate_bounds`` is inclusive and applies to every split; the defaults accept both the
    Amazon datasets (about 20% positives) and Taobao (about 5%), and reject a broken labelling step
    (all or almost no clicks). ``min_rows`` maps split -> minimum row count; AUC on fewer than a
    hundred rows is too noisy to gate a model on. ``allow_extra_columns`` tolerates columns outside
    the feature contract (they are never read by the model).
    """

    positive_rate_bounds: tuple[float, float] = (0.005, 0.6)
    min_rows: Mapping[str, int] = field(
        default_factory=lambda: {"train": 1000, "validation": 100, "test": 100}
    )
    allow_extra_columns: bool = False

    def __post_init__(self) -> None:
        lo, hi = self.positive_rate_bounds
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(
                f"positive_rate_bounds must satisfy 0 <= low <= high <= 1, got {self.positive_rate_bounds}"
            )
        unknown = sorted(set(self.min_rows) - set(SPLITS))
        if unknown:
            raise ValueError(f"min_rows names unknown split(s) {unknown}; expected a subset of {SPLITS}")
        negative = {s: n for s, n in self.min_rows.items() if int(n) < 0}
        if negative:
            raise ValueError(f"min_rows must be >= 0, got {negative}")


@dataclass(frozen=True)
class ExpectationOutcome:
    """The result of one expectation on one (domain, split).

    ``column`` is ``None`` for table-level expectations; ``observed`` is a human-readable summary
    of what GX measured (the observed value, or the count and examples of unexpected rows);
    ``expected`` states what the expectation demanded.
    """

    domain: str
    split: str
    expectation: str
    column: str | None
    success: bool
    observed: str
    expected: str = ""

    def describe(self) -> str:
        where = f"{self.domain}/{self.split}"
        col = f" column {self.column!r}" if self.column else ""
        return f"{where}: {self.expectation}{col} (expected {self.expected}): observed {self.observed}"


@dataclass
class ValidationReport:
    """Every expectation outcome of a :func:`validate_processed` call, plus where the HTML went."""

    success: bool
    results: list[ExpectationOutcome]
    html_path: str
    data_docs_index: str | None = None

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if not r.success]

    def raise_for_failures(self) -> None:
        """Raise :class:`DataValidationError` listing every failed expectation; no-op on success."""
        failures = self.failures
        if failures:
            lines = "\n  - ".join(f.describe() for f in failures)
            raise DataValidationError(
                f"data validation failed: {len(failures)} of {len(self.results)} expectation(s) failed "
                f"(report: {self.html_path}):\n  - {lines}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "html_path": self.html_path,
            "data_docs_index": self.data_docs_index,
            "results": [asdict(r) for r in self.results],
        }


# ---- reading and derived columns ----------------------------------------------------------------


def _read_split(processed_root: str, domain: str, split: str) -> tuple[pa.Table, list[str]]:
    # By name, not schema: a shard that breaks the schema is reported by the expectations, not raised.
    try:
        rows = read_split(processed_root, domain, split)
    except DataError as e:
        raise DataValidationError(str(e)) from e
    return rows.table, list(rows.files)


def _is_numeric_list(dtype: pa.DataType) -> bool:
    is_list = pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype)
    return is_list and (pa.types.is_integer(dtype.value_type) or pa.types.is_floating(dtype.value_type))


def _per_row(
    parents: np.ndarray, values: pa.Array, n: int, agg: str, fill: np.generic
) -> np.ndarray:
    """``agg`` ("min"/"max") of ``values`` grouped by row index ``parents``; ``fill`` for rows without values."""
    grouped = pa.table({"row": parents, "v": values}).group_by("row").aggregate([("v", agg)])
    rows = grouped.column("row").to_numpy()
    agg_values = grouped.column(f"v_{agg}")
    dtype = values.type.to_pandas_dtype()
    out = np.full(n, fill, dtype=dtype)
    present = agg_values.is_valid().to_numpy(zero_copy_only=False)  # rows whose elements are all null
    out[rows[present]] = agg_values.filter(agg_values.is_valid()).to_numpy(zero_copy_only=False)
    return out


def _derived_columns(spec: FieldSpec, col: pa.ChunkedArray) -> dict[str, np.ndarray]:
    """The row-wise summaries of a list field that GX checks (see the module docstring)."""
    arr = col.combine_chunks()
    n = len(arr)
    flat = pc.list_flatten(arr)  # null lists contribute no elements
    parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    valid = flat.is_valid().to_numpy(zero_copy_only=False)
    zero = np.zeros((), dtype=flat.type.to_pandas_dtype())[()]
    if spec.kind is FieldKind.MULTI_HOT:
        return {
            f"{spec.name}.min": _per_row(parents, flat, n, "min", zero),
            f"{spec.name}.max": _per_row(parents, flat, n, "max", zero),
            f"{spec.name}.null_elements": np.bincount(parents[~valid], minlength=n).astype(np.int64),
        }
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = flat.to_numpy(zero_copy_only=False)
    finite = valid & np.isfinite(values.astype(np.float64, copy=False))
    return {
        f"{spec.name}.length": lengths,
        f"{spec.name}.all_finite": np.bincount(parents[~finite], minlength=n) == 0,
        f"{spec.name}.max_abs": _per_row(parents, pc.abs(flat), n, "max", zero),
    }


def _frame(schema: DomainSchema, table: pa.Table) -> pd.DataFrame:
    """The dataframe GX sees: the split's columns plus the derived columns of list fields.

    List columns stay arrow-backed (``pd.ArrowDtype``, zero copy): GX only checks their type and
    nulls, and converting millions of vectors to Python objects would dominate the run time.
    """
    data: dict[str, Any] = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_nested(col.type):
            data[name] = pd.Series(pd.arrays.ArrowExtensionArray(col))
        else:
            data[name] = col.to_pandas()
    for spec in schema.fields:
        if spec.kind in (FieldKind.MULTI_HOT, FieldKind.DENSE_VECTOR) and spec.name in table.column_names:
            col = table.column(spec.name)
            # A non-list or non-numeric column fails the type expectation on the column itself; its
            # derived columns are then absent and their expectations fail with "column not found".
            if _is_numeric_list(col.type):
                for name, values in _derived_columns(spec, col).items():
                    if name in data:
                        raise DataValidationError(
                            f"column {name!r} of domain {schema.domain!r} clashes with a derived validation column"
                        )
                    data[name] = values
    return pd.DataFrame(data)


def _timestamp_range(schema: DomainSchema, table: pa.Table) -> tuple[int, int] | None:
    """(min, max) of the timestamp column, or None when it is absent, non-integer or empty."""
    if schema.timestamp_column not in table.column_names:
        return None
    col = table.column(schema.timestamp_column)
    if not pa.types.is_integer(col.type) or table.num_rows == col.null_count:
        return None
    mm = pc.min_max(col)
    return int(mm["min"].as_py()), int(mm["max"].as_py())


# ---- suites -------------------------------------------------------------------------------------


def _expected_columns(schema: DomainSchema) -> list[str]:
    cols = list(schema.field_names) + list(schema.meta_columns)
    for spec in schema.fields:
        if spec.kind is FieldKind.MULTI_HOT:
            cols += [f"{spec.name}.min", f"{spec.name}.max", f"{spec.name}.null_elements"]
        elif spec.kind is FieldKind.DENSE_VECTOR:
            cols += [f"{spec.name}.length", f"{spec.name}.all_finite", f"{spec.name}.max_abs"]
    return cols


def _field_expectations(spec: FieldSpec) -> list[Any]:
    name, top = spec.name, spec.vocab_size - 1
    if spec.kind is FieldKind.MULTI_HOT:
        return [
            E.ExpectColumnValuesToBeOfType(column=name, type_="list", description="a list per row"),
            E.ExpectColumnValuesToNotBeNull(column=name, description="no null lists (empty lists are fine)"),
            E.ExpectColumnValuesToBeInSet(
                column=f"{name}.null_elements", value_set=[0], description=f"no null ids inside {name} lists"
            ),
            E.ExpectColumnValuesToBeInTypeList(
                column=f"{name}.max", type_list=_INTEGER_TYPES, description=f"{name} lists hold integer indices"
            ),
            E.ExpectColumnValuesToBeBetween(
                column=f"{name}.min", min_value=0, description=f"every {name} index >= 0"
            ),
            E.ExpectColumnValuesToBeBetween(
                column=f"{name}.max", max_value=top, description=f"every {name} index < vocab_size {spec.vocab_size}"
            ),
        ]
    if spec.kind is FieldKind.DENSE_VECTOR:
        return [
            E.ExpectColumnValuesToBeOfType(column=name, type_="list", description="a list per row"),
            E.ExpectColumnValuesToNotBeNull(column=name, description="no null vectors"),
            E.ExpectColumnValuesToBeInTypeList(
                column=f"{name}.max_abs", type_list=_FLOAT_TYPES, description=f"{name} holds floats"
            ),
            E.ExpectColumnValuesToBeInSet(
                column=f"{name}.length", value_set=[spec.dim], description=f"{name} vectors have dim {spec.dim}"
            ),
            E.ExpectColumnValuesToBeInSet(
                column=f"{name}.all_finite", value_set=[True], description=f"{name} values are finite (no NaN/inf/null)"
            ),
        ]
    return [
        E.ExpectColumnValuesToBeInTypeList(column=name, type_list=_INTEGER_TYPES, description="integer indices"),
        E.ExpectColumnValuesToNotBeNull(column=name, description="no null ids"),
        E.ExpectColumnValuesToBeBetween(
            column=name, min_value=0, max_value=top, description=f"index in [0, {spec.vocab_size}) (vocab_size)"
        ),
    ]


def _suite_expectations(
    schema: DomainSchema,
    split: str,
    config: ValidationConfig,
    previous: tuple[str, tuple[int, int]] | None,
) -> list[Any]:
    """The expectations of one (domain, split); ``previous`` is (split, timestamp range) of the split before."""
    lo, hi = config.positive_rate_bounds
    columns = _expected_columns(schema)
    min_rows = int(config.min_rows.get(split, 1))
    exact = not config.allow_extra_columns
    out: list[Any] = [
        E.ExpectTableColumnsToMatchSet(
            column_set=columns,
            exact_match=exact,
            description=f"{'exactly' if exact else 'at least'} the columns of the feature contract "
            f"(plus derived columns): {columns}",
        ),
        E.ExpectTableRowCountToBeBetween(min_value=min_rows, description=f"at least {min_rows} rows"),
    ]
    for spec in schema.fields:
        out += _field_expectations(spec)
    label, ts = schema.label_column, schema.timestamp_column
    out += [
        E.ExpectColumnValuesToBeInTypeList(column=label, type_list=_INTEGER_TYPES, description="integer labels"),
        E.ExpectColumnValuesToNotBeNull(column=label, description="no null labels"),
        E.ExpectColumnValuesToBeInSet(column=label, value_set=[0, 1], description="label is 0 or 1"),
        E.ExpectColumnMeanToBeBetween(
            column=label, min_value=lo, max_value=hi, description=f"positive rate in [{lo}, {hi}]"
        ),
        E.ExpectColumnValuesToBeInTypeList(column=ts, type_list=_INTEGER_TYPES, description="integer unix seconds"),
        E.ExpectColumnValuesToNotBeNull(column=ts, description="no null timestamps"),
    ]
    for col in (schema.user_id_column, schema.item_id_column):
        out += [
            E.ExpectColumnValuesToBeOfType(column=col, type_="str", description="string ids"),
            E.ExpectColumnValuesToNotBeNull(column=col, description="no null ids"),
            E.ExpectColumnValueLengthsToBeBetween(column=col, min_value=1, description="no empty ids"),
        ]
    if previous is not None:
        prev_split, (_, prev_max) = previous
        # Chronological split: nothing in this split may predate the end of the previous one.
        out.append(E.ExpectColumnMinToBeBetween(
            column=ts,
            min_value=prev_max,
            description=f"min {ts} >= max {ts} of the {prev_split} split ({prev_max}): no time leakage",
        ))
    return out


# ---- outcomes -----------------------------------------------------------------------------------


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(_jsonable(value), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    return value


def _observed(result: Any) -> str:
    info = result.exception_info or {}
    if info.get("raised_exception"):
        message = str(info.get("exception_message") or "unknown error").strip().splitlines()[0]
        return f"error: {_short(message, 300)}"
    r = result.result or {}
    if "unexpected_count" in r:
        n_bad, n = int(r.get("unexpected_count") or 0), int(r.get("element_count") or 0)
        text = f"{n_bad} of {n} row(s) unexpected"
        examples = r.get("partial_unexpected_list") or []
        if examples:
            text += f", e.g. {_short(examples[:5])}"
        return text
    observed = r.get("observed_value")
    details = (r.get("details") or {}).get("mismatched")
    if details:
        return f"{_short(observed)}; mismatched: {_short(details)}"
    return _short(observed)


def _expected(cfg: Any) -> str:
    if cfg.description:
        return str(cfg.description)
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "column")}
    return f"{cfg.type}({_short(kwargs, 120)})"


def _outcomes(domain: str, split: str, suite_result: Any) -> list[ExpectationOutcome]:
    out = []
    for r in suite_result.results:
        cfg = r.expectation_config
        out.append(ExpectationOutcome(
            domain=domain,
            split=split,
            expectation=cfg.type,
            column=cfg.kwargs.get("column"),
            success=bool(r.success),
            observed=_observed(r),
            expected=_expected(cfg),
        ))
    return out


# ---- entry point --------------------------------------------------------------------------------


def _context(data_docs_dir: str) -> Any:
    # Pipeline workers have no network: opt out of GX usage statistics (unless the caller chose).
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    ctx = gx.get_context(mode="ephemeral")
    # The ephemeral context ships a default site in a fresh temp dir; ours is the only one wanted.
    for site in list(ctx.get_site_names()):
        ctx.delete_data_docs_site(site)
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ctx.add_data_docs_site(
        site_name=_DATA_DOCS_SITE,
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": data_docs_dir},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    return ctx


def validate_processed(
    processed_root: str,
    domains: Sequence[str],
    report_dir: str,
    config: ValidationConfig | None = None,
) -> ValidationReport:
    """Run the data suites on every split of ``domains`` under ``processed_root``.

    Writes GX Data Docs to ``<report_dir>/data_docs/``, a self-contained summary to
    ``<report_dir>/validation.html`` and every outcome to ``<report_dir>/validation.json``. Returns
    the report without raising on failed expectations (call
    :meth:`ValidationReport.raise_for_failures` to stop the run); raises
    :class:`DataValidationError` / ``FileNotFoundError`` / :class:`~cdanet.contract.SchemaError`
    when a schema, split or parquet file is missing or unreadable.
    """
    config = config if config is not None else ValidationConfig()
    if not domains:
        raise ValueError("validate_processed needs at least one domain")
    report_dir = os.path.abspath(report_dir)
    docs_dir = os.path.join(report_dir, DATA_DOCS_DIR)
    os.makedirs(report_dir, exist_ok=True)
    schemas = load_schemas(processed_root, domains)

    ctx = _context(docs_dir)
    source = ctx.data_sources.add_pandas("processed")
    results: list[ExpectationOutcome] = []
    sources: dict[tuple[str, str], list[str]] = {}
    for domain in domains:
        schema = schemas[domain]
        tables = {}
        for split in SPLITS:
            tables[split], sources[(domain, split)] = _read_split(processed_root, domain, split)
        previous: tuple[str, tuple[int, int]] | None = None
        for split in SPLITS:
            table = tables[split]
            name = f"{domain}-{split}"
            batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
            suite = ctx.suites.add(gx.ExpectationSuite(
                name=name,
                expectations=_suite_expectations(schema, split, config, previous),
                meta={"notes": f"cdanet processed data, dataset {schema.dataset!r}, domain {domain!r}, split {split!r}"},
            ))
            vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
            checkpoint = ctx.checkpoints.add(
                gx.Checkpoint(name=name, validation_definitions=[vd], actions=[], result_format="SUMMARY")
            )
            run = checkpoint.run(batch_parameters={"dataframe": _frame(schema, table)})
            for suite_result in run.run_results.values():
                results.extend(_outcomes(domain, split, suite_result))
            ts_range = _timestamp_range(schema, table)
            # Without a usable timestamp range the leakage check of the next split is skipped;
            # the type/null expectations on this split's timestamp already fail in that case.
            previous = (split, ts_range) if ts_range is not None else None
    ctx.build_data_docs(site_names=[_DATA_DOCS_SITE])
    index = os.path.join(docs_dir, "index.html")

    report = ValidationReport(
        success=all(r.success for r in results),
        results=results,
        html_path=os.path.join(report_dir, SUMMARY_HTML),
        data_docs_index=index if os.path.exists(index) else None,
    )
    write_text(report.html_path, render_html(report, schemas, sources))
    write_text(os.path.join(report_dir, SUMMARY_JSON), json.dumps(report.to_dict(), indent=2))
    failed = len(report.failures)
    logger.info("data validation: %d expectation(s), %d failed; report %s", len(results), failed, report.html_path)
    return report


# ---- HTML ---------------------------------------------------------------------------------------


def _fields_line(schema: DomainSchema) -> str:
    return ", ".join(
        f"{f.name} ({f.kind.value}" + (f", vocab {f.vocab_size}" if f.vocab_size else "")
        + (f", dim {f.dim}" if f.dim else "") + ")"
        for f in schema.fields
    )


def render_html(
    report: ValidationReport,
    schemas: Mapping[str, DomainSchema],
    sources: Mapping[tuple[str, str], Sequence[str]],
) -> str:
    """The one-file summary: verdict, every failure first, then every outcome per domain and split.

    The page is ``cdanet/templates/validation.html.j2``; this gathers what it shows.
    """
    def outcomes_of(domain: str, split: str) -> list[ExpectationOutcome]:
        return [o for o in report.results if o.domain == domain and o.split == split]

    summary = []
    for (domain, split), files in sources.items():
        mine = outcomes_of(domain, split)
        summary.append({"domain": domain, "split": split, "expectations": len(mine),
                        "failed": sum(not o.success for o in mine),
                        "files": [os.path.basename(f) for f in files]})
    domains = [
        {"name": domain, "dataset": schema.dataset, "fields": _fields_line(schema),
         "splits": [(split, mine) for split in SPLITS if (mine := outcomes_of(domain, split))]}
        for domain, schema in schemas.items()
    ]
    return pages.render(
        "validation.html.j2",
        success=report.success,
        n_results=len(report.results),
        failures=report.failures,
        summary=summary,
        domains=domains,
        data_docs_index=report.data_docs_index,
    )
