"""Great Expectations suites on processed data: clean data passes, each corruption is named."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from collections.abc import Callable
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdanet.contract import DomainSchema, FieldKind, split_files
from cdanet.validation import (
    DataValidationError,
    ExpectationOutcome,
    ValidationConfig,
    ValidationReport,
    validate_processed,
)

DOMAIN = "book"  # has every field kind: categorical ids, categorical, multi_hot, dense_vector


def _field_of(schema: DomainSchema, kind: FieldKind) -> str:
    return next(f.name for f in schema.fields if f.kind is kind)


def _rewrite_split(root: str, split: str, edit: Callable[[pa.Table], pa.Table]) -> None:
    """Replace the shards of one split of ``DOMAIN`` by a single file holding ``edit(table)``."""
    files = split_files(os.path.join(root, DOMAIN), split)
    table = pa.concat_tables([pq.read_table(f) for f in files])
    for f in files:
        os.remove(f)
    pq.write_table(edit(table), os.path.join(root, DOMAIN, f"{split}.parquet"))


def _set_cell(table: pa.Table, column: str, row: int, value: object) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    i = table.schema.get_field_index(column)
    field = table.schema.field(i).with_nullable(True)
    return table.set_column(i, field, pa.array(values, field.type))


@pytest.fixture
def corrupted_root(processed_dir: str, tmp_path) -> str:
    root = str(tmp_path / "processed")
    shutil.copytree(processed_dir, root)
    return root


def _failed(report: ValidationReport) -> set[tuple[str, str, str | None]]:
    return {(o.split, o.expectation, o.column) for o in report.failures}


def test_clean_data_passes_and_writes_reports(processed_dir: str, tmp_path) -> None:
    report_dir = tmp_path / "report"
    report = validate_processed(processed_dir, ["movie", "book"], str(report_dir))

    assert report.success, [o.describe() for o in report.failures]
    report.raise_for_failures()  # must not raise
    cells = {(o.domain, o.split) for o in report.results}
    assert cells == {(d, s) for d in ("movie", "book") for s in ("train", "validation", "test")}
    # Time-leakage expectations exist for the two later splits of each domain, bounded by the
    # previous split's max timestamp.
    leakage = [o for o in report.results if o.expectation == "expect_column_min_to_be_between"]
    assert sorted((o.domain, o.split) for o in leakage) == sorted(
        (d, s) for d in ("movie", "book") for s in ("validation", "test")
    )
    # Every list field got its derived-column checks.
    checked = {(o.domain, o.column) for o in report.results}
    assert ("book", "category.max") in checked and ("book", "title.all_finite") in checked

    assert report.html_path == str(report_dir / "validation.html")
    page = (report_dir / "validation.html").read_text()
    assert "PASSED" in page and "<style>" in page and "category.max" in page
    assert report.data_docs_index is not None and os.path.exists(report.data_docs_index)
    assert glob.glob(str(report_dir / "data_docs" / "validations" / "**" / "*.html"), recursive=True)
    saved = json.loads((report_dir / "validation.json").read_text())
    assert saved["success"] is True and len(saved["results"]) == len(report.results)


class Corruption(NamedTuple):
    split: str  # the split that is edited
    edit: Callable[[pa.Table], pa.Table]
    expectation: str  # the only expectation that must fail, on ``split`` ...
    column: str | None  # ... and this column (None: a table-level expectation)


def _label_two(schema: DomainSchema) -> Corruption:
    label = schema.label_column
    return Corruption("train", lambda t: _set_cell(t, label, 3, 2), "expect_column_values_to_be_in_set", label)


def _categorical_out_of_vocab(schema: DomainSchema) -> Corruption:
    name = _field_of(schema, FieldKind.CATEGORICAL)
    vocab = schema.field(name).vocab_size
    return Corruption("validation", lambda t: _set_cell(t, name, 0, vocab), "expect_column_values_to_be_between", name)


def _multi_hot_out_of_vocab(schema: DomainSchema) -> Corruption:
    name = _field_of(schema, FieldKind.MULTI_HOT)
    vocab = schema.field(name).vocab_size
    return Corruption(
        "test", lambda t: _set_cell(t, name, 1, [1, vocab + 5]), "expect_column_values_to_be_between", f"{name}.max"
    )


def _nan_in_vector(schema: DomainSchema) -> Corruption:
    spec = schema.field(_field_of(schema, FieldKind.DENSE_VECTOR))
    vector = [float("nan")] + [0.5] * (spec.dim - 1)
    return Corruption(
        "train", lambda t: _set_cell(t, spec.name, 7, vector), "expect_column_values_to_be_in_set", f"{spec.name}.all_finite"
    )


def _short_vector(schema: DomainSchema) -> Corruption:
    spec = schema.field(_field_of(schema, FieldKind.DENSE_VECTOR))
    vector = [0.5] * (spec.dim - 1)
    return Corruption(
        "validation", lambda t: _set_cell(t, spec.name, 2, vector), "expect_column_values_to_be_in_set", f"{spec.name}.length"
    )


def _too_few_rows(schema: DomainSchema) -> Corruption:
    def edit(t: pa.Table) -> pa.Table:
        labels = t.column(schema.label_column).to_pylist()
        pos = [i for i, v in enumerate(labels) if v == 1][:2]
        neg = [i for i, v in enumerate(labels) if v == 0][:3]
        return t.take(sorted(pos + neg))  # keeps the positive rate (0.4) within bounds

    return Corruption("test", edit, "expect_table_row_count_to_be_between", None)


def _null_raw_id(schema: DomainSchema) -> Corruption:
    col = schema.user_id_column
    return Corruption("test", lambda t: _set_cell(t, col, 4, None), "expect_column_values_to_not_be_null", col)


def _float_labels(schema: DomainSchema) -> Corruption:
    col = schema.label_column

    def edit(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index(col)
        return t.set_column(i, pa.field(col, pa.float64()), t.column(col).cast(pa.float64()))

    return Corruption("validation", edit, "expect_column_values_to_be_in_type_list", col)


def _train_after_validation(schema: DomainSchema) -> Corruption:
    ts = schema.timestamp_column
    # Year 2096: after every validation row. The leak is caught on the validation split, whose
    # lower bound is the train split's max timestamp.
    return Corruption("train", lambda t: _set_cell(t, ts, 0, 4_000_000_000), "expect_column_min_to_be_between", ts)


# Applied together (each to its own split/column) so one GX run checks them all; ``too_few_rows``
# comes first so that the later edits of the test split land on rows it keeps.
CORRUPTIONS: dict[str, Callable[[DomainSchema], Corruption]] = {
    "too_few_rows": _too_few_rows,
    "label_two": _label_two,
    "categorical_out_of_vocab": _categorical_out_of_vocab,
    "multi_hot_out_of_vocab": _multi_hot_out_of_vocab,
    "nan_in_vector": _nan_in_vector,
    "wrong_vector_length": _short_vector,
    "train_after_validation": _train_after_validation,
    "null_raw_id": _null_raw_id,
    "float_labels": _float_labels,
}


def test_each_corruption_fails_exactly_its_expectation(corrupted_root: str, tmp_path) -> None:
    schema = DomainSchema.load(os.path.join(corrupted_root, DOMAIN))
    cases = {name: make(schema) for name, make in CORRUPTIONS.items()}
    for c in cases.values():
        _rewrite_split(corrupted_root, c.split, c.edit)
    # The leak is caught on the split AFTER the edited one: validation's min timestamp is bounded
    # by the train split's max.
    expected = {
        name: ("validation" if name == "train_after_validation" else c.split, c.expectation, c.column)
        for name, c in cases.items()
    }
    assert len(set(expected.values())) == len(expected), "each corruption must target its own expectation"

    config = ValidationConfig(min_rows={"train": 100, "validation": 50, "test": 50})
    report = validate_processed(corrupted_root, [DOMAIN], str(tmp_path / "report"), config)

    failed = _failed(report)
    missed = sorted(name for name, key in expected.items() if key not in failed)
    assert not missed, f"corruptions not flagged: {missed}"
    assert failed == set(expected.values()), f"unexpected failures: {failed - set(expected.values())}"

    with pytest.raises(DataValidationError, match=f"{len(expected)} of {len(report.results)} expectation") as err:
        report.raise_for_failures()
    message = str(err.value)
    for f in report.failures:
        assert f.describe() in message
    for split, expectation, column in expected.values():
        assert f"{DOMAIN}/{split}: {expectation}" + (f" column {column!r}" if column else "") in message

    by_key = {(o.split, o.expectation, o.column): o for o in report.failures}
    assert by_key[expected["label_two"]].observed.startswith("1 of ")
    assert "[2]" in by_key[expected["label_two"]].observed  # the offending value is shown
    assert by_key[expected["too_few_rows"]].observed == "5"
    leak = by_key[expected["train_after_validation"]]
    assert "4000000000" in leak.expected and "no time leakage" in leak.expected
    assert by_key[expected["float_labels"]].observed == "float64"

    page = open(report.html_path).read()
    assert f"FAILED: {len(expected)} of {len(report.results)}" in page
    assert page.count('<tr class="fail">') >= 2 * len(expected)  # failures table + per-split tables


def test_missing_column_fails_the_column_set(corrupted_root: str, tmp_path) -> None:
    schema = DomainSchema.load(os.path.join(corrupted_root, DOMAIN))
    dense = _field_of(schema, FieldKind.DENSE_VECTOR)
    _rewrite_split(corrupted_root, "test", lambda t: t.drop_columns([dense]))

    report = validate_processed(corrupted_root, [DOMAIN], str(tmp_path / "report"))

    failed = _failed(report)
    assert ("test", "expect_table_columns_to_match_set", None) in failed
    assert all(split == "test" for split, _, _ in failed)
    assert {col for _, _, col in failed} >= {dense, f"{dense}.length", f"{dense}.all_finite"}
    column_set = next(o for o in report.failures if o.expectation == "expect_table_columns_to_match_set")
    assert dense in column_set.observed  # named among the missing columns


def test_unreadable_parquet_names_the_file(corrupted_root: str, tmp_path) -> None:
    path = split_files(os.path.join(corrupted_root, DOMAIN), "validation")[0]
    with open(path, "wb") as fh:
        fh.write(b"not a parquet file")
    with pytest.raises(DataValidationError, match=re.escape(path)):
        validate_processed(corrupted_root, [DOMAIN], str(tmp_path / "report"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"positive_rate_bounds": (0.7, 0.2)}, "positive_rate_bounds"),
        ({"positive_rate_bounds": (-0.1, 0.5)}, "positive_rate_bounds"),
        ({"min_rows": {"training": 10}}, "unknown split"),
        ({"min_rows": {"train": -1}}, ">= 0"),
    ],
)
def test_invalid_config_is_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ValidationConfig(**kwargs)


def test_outcome_description_names_everything() -> None:
    o = ExpectationOutcome("movie", "test", "expect_column_values_to_be_in_set", "label", False, "3 of 9", "label is 0 or 1")
    assert o.describe() == (
        "movie/test: expect_column_values_to_be_in_set column 'label' (expected label is 0 or 1): observed 3 of 9"
    )
