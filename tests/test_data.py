"""cdanet.data: parquet -> tensors (checks, sorting, padding) and the two-domain sampler."""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cdanet.contract import DomainSchema, FieldKind, FieldSpec, SchemaError
from cdanet.data import DataError, DomainData, TwoDomainSampler, load_split, table_to_batch

SCHEMA = DomainSchema(
    dataset="amazon",
    domain="movie",
    fields=(
        FieldSpec("user_id", FieldKind.CATEGORICAL_ID, vocab_size=5),
        FieldSpec("tags", FieldKind.MULTI_HOT, vocab_size=10, max_len=3),
        FieldSpec("title", FieldKind.DENSE_VECTOR, dim=2),
    ),
)


def _table(**overrides: object) -> pa.Table:
    cols: dict[str, object] = {
        "user_id": [1, 2, 3, 4],
        "tags": [[1, 2], [], [3, 4, 5, 6], [9]],
        "title": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]],
        "label": [1, 0, 0, 1],
        "timestamp": [40, 10, 30, 20],
        "user_id_raw": ["u1", "u2", "u3", "u4"],
        "item_id_raw": ["i1", "i2", "i3", "i4"],
    }
    cols.update(overrides)
    schema = SCHEMA.arrow_schema()
    return pa.table({name: pa.array(values, schema.field(name).type if name in schema.names else None)
                     for name, values in cols.items()})


def _write(root: str, table: pa.Table, name: str = "train.parquet") -> str:
    domain_dir = os.path.join(root, "movie")
    os.makedirs(domain_dir, exist_ok=True)
    path = os.path.join(domain_dir, name)
    pq.write_table(table, path)
    return path


def test_load_split_converts_sorts_and_pads(tmp_path) -> None:
    _write(str(tmp_path), _table())
    data = load_split(str(tmp_path), SCHEMA, "train")
    # Sorted by timestamp: rows 1 (t=10), 3 (20), 2 (30), 0 (40).
    assert data.timestamps.tolist() == [10, 20, 30, 40]
    assert data.user_ids.tolist() == ["u2", "u4", "u3", "u1"]
    assert data.features["user_id"].tolist() == [2, 4, 3, 1]
    assert data.features["user_id"].dtype == torch.int64
    # Multi-hot: 0-padded to max_len 3; the 4-long list is truncated and counted.
    assert data.features["tags"].tolist() == [[0, 0, 0], [9, 0, 0], [3, 4, 5], [1, 2, 0]]
    assert data.truncated == {"tags": 1}
    assert data.features["title"].dtype == torch.float32
    assert data.features["title"].shape == (4, 2)
    assert torch.allclose(data.features["title"][0], torch.tensor([0.3, 0.4]))
    assert data.label.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert data.label.dtype == torch.float32
    b = data.batch(torch.tensor([3, 0]))
    assert b.features["tags"].tolist() == [[1, 2, 0], [0, 0, 0]] and b.label.tolist() == [1.0, 0.0]


def test_row_order_does_not_depend_on_sharding(tmp_path, processed_dir, processed_schemas) -> None:
    schema = processed_schemas["book"]
    reference = load_split(processed_dir, schema, "train")
    # Re-shard the same rows into three files in reversed order.
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "book"))
    table = pa.concat_tables(pq.read_table(p) for p in sorted(
        os.path.join(processed_dir, "book", f) for f in os.listdir(os.path.join(processed_dir, "book"))
        if f.startswith("train-")))
    table = table.take(pa.array(np.arange(table.num_rows)[::-1]))
    for s, idx in enumerate(np.array_split(np.arange(table.num_rows), 3)):
        pq.write_table(table.take(pa.array(idx)), os.path.join(root, "book", f"train-{s:05d}-of-00003.parquet"))
    resharded = load_split(root, schema, "train")
    assert len(resharded) == len(reference) == table.num_rows
    for name in schema.field_names:
        assert torch.equal(resharded.features[name], reference.features[name]), name
    assert torch.equal(resharded.label, reference.label)
    assert (resharded.user_ids == reference.user_ids).all()
    assert (np.diff(reference.timestamps) >= 0).all()


def test_missing_split_names_the_directory(tmp_path) -> None:
    os.makedirs(tmp_path / "movie")
    with pytest.raises(FileNotFoundError, match=r"no validation split under .*movie"):
        load_split(str(tmp_path), SCHEMA, "validation")


def test_schema_mismatch_names_the_file(tmp_path) -> None:
    path = _write(str(tmp_path), _table().drop_columns(["title"]))
    with pytest.raises(SchemaError, match=rf"{path}.*missing feature column 'title'"):
        load_split(str(tmp_path), SCHEMA, "train")


def test_out_of_range_index_names_file_column_and_value(tmp_path) -> None:
    path = _write(str(tmp_path), _table(user_id=[1, 2, 7, 4]))
    with pytest.raises(DataError, match=rf"{path}: column 'user_id' .*outside \[0, 5\).*e\.g\. 7"):
        load_split(str(tmp_path), SCHEMA, "train")
    path = _write(str(tmp_path), _table(tags=[[1], [], [10], [2]]))
    with pytest.raises(DataError, match=rf"{path}: column 'tags' .*e\.g\. 10"):
        load_split(str(tmp_path), SCHEMA, "train")


@pytest.mark.parametrize(
    ("title", "message"),
    [
        ([[0.1, 0.2], [0.3], [0.5, 0.6], [0.7, 0.8]], r"exactly 2 floats per row.*row 1 has 1"),
        ([[0.1, 0.2], [0.3, float("nan")], [0.5, 0.6], [0.7, 0.8]], r"NaN/inf"),
    ],
)
def test_bad_dense_vectors_are_rejected(tmp_path, title, message) -> None:
    path = _write(str(tmp_path), _table(title=title))
    with pytest.raises(DataError, match=rf"{path}: column 'title' .*{message}"):
        load_split(str(tmp_path), SCHEMA, "train")


def test_bad_labels_and_nulls_are_rejected(tmp_path) -> None:
    path = _write(str(tmp_path), _table(label=[1, 0, 2, 1]))
    with pytest.raises(DataError, match=rf"{path}: column 'label' must be 0 or 1"):
        load_split(str(tmp_path), SCHEMA, "train")
    path = _write(str(tmp_path), _table(user_id=[1, None, 3, 4]))
    with pytest.raises(DataError, match=rf"{path}: column 'user_id' has 1 null"):
        load_split(str(tmp_path), SCHEMA, "train")


def test_table_to_batch_keeps_order_and_needs_no_label() -> None:
    table = _table().drop_columns(["label", "timestamp", "user_id_raw", "item_id_raw"])
    batch = table_to_batch(SCHEMA, table)
    assert batch.features["user_id"].tolist() == [1, 2, 3, 4]
    assert batch.features["tags"].tolist()[1] == [0, 0, 0]
    assert batch.label.tolist() == [0.0] * 4
    with pytest.raises(SchemaError, match="request.*missing feature column 'tags'"):
        table_to_batch(SCHEMA, table.drop_columns(["tags"]), source="request")


def _data(n: int, domain: str) -> DomainData:
    schema = DomainSchema("amazon", domain, (FieldSpec("x", FieldKind.CATEGORICAL, vocab_size=n + 1),))
    return DomainData(
        schema=schema, split="train", features={"x": torch.arange(n)}, label=torch.zeros(n),
        user_ids=np.array([f"u{i}" for i in range(n)], dtype=object),
        item_ids=np.array([f"i{i}" for i in range(n)], dtype=object), timestamps=np.arange(n),
    )


def test_sampler_larger_basis_covers_larger_domain_once_and_cycles_smaller() -> None:
    data = {"movie": _data(23, "movie"), "book": _data(100, "book")}
    sampler = TwoDomainSampler(data, batch_size=16, seed=3)
    assert sampler.basis == "book" and len(sampler) == math.ceil(100 / 16)
    steps = list(sampler.epoch(0))
    assert len(steps) == 7
    book = torch.cat([s["book"].features["x"] for s in steps])
    assert sorted(book.tolist()) == list(range(100))  # one pass, last partial batch (4 rows) kept
    assert len(steps[-1]["book"]) == 100 - 6 * 16
    movie = torch.cat([s["movie"].features["x"] for s in steps])
    assert all(len(s["movie"]) == 16 for s in steps)
    counts = torch.bincount(movie, minlength=23)
    # 112 draws from 23 rows in reshuffled passes: every row 4 or 5 times.
    assert counts.min() >= 4 and counts.max() <= 5
    assert sampler.samples_per_epoch == 100 + 7 * 16


def test_sampler_target_basis_and_single_domain() -> None:
    data = {"movie": _data(23, "movie"), "book": _data(100, "book")}
    sampler = TwoDomainSampler(data, batch_size=16, epoch_basis="target", target_domain="movie", seed=3)
    steps = list(sampler.epoch(0))
    assert len(steps) == 2
    assert sorted(torch.cat([s["movie"].features["x"] for s in steps]).tolist()) == list(range(23))
    book = torch.cat([s["book"].features["x"] for s in steps])
    assert len(book) == 32 and len(set(book.tolist())) == 32  # partly seen, no repeats within a pass
    single = TwoDomainSampler({"movie": data["movie"]}, batch_size=100)
    (only,) = list(single.epoch(0))
    assert sorted(only["movie"].features["x"].tolist()) == list(range(23))


def test_sampler_is_a_pure_function_of_seed_and_epoch() -> None:
    data = {"movie": _data(23, "movie"), "book": _data(100, "book")}
    a = TwoDomainSampler(data, batch_size=16, seed=7)
    b = TwoDomainSampler(dict(reversed(data.items())), batch_size=16, seed=7)

    def flat(s: TwoDomainSampler, epoch: int) -> dict[str, list[int]]:
        return {d: torch.cat(ix).tolist() for d, ix in s.epoch_indices(epoch).items()}

    assert flat(a, 2) == flat(b, 2)  # later epochs need no earlier ones, nor dict order
    assert flat(a, 0) != flat(a, 1)
    assert flat(a, 0) != flat(TwoDomainSampler(data, batch_size=16, seed=8), 0)


def test_subset_is_seeded_and_chronological(processed_dir, processed_schemas) -> None:
    data = load_split(processed_dir, processed_schemas["movie"], "train")
    sub = data.subset(0.25, seed=1)
    assert len(sub) == round(0.25 * len(data))
    assert (np.diff(sub.timestamps) >= 0).all()
    again = data.subset(0.25, seed=1)
    assert torch.equal(sub.features["item_id"], again.features["item_id"])
    assert not torch.equal(sub.features["item_id"], data.subset(0.25, seed=2).features["item_id"])
    assert data.subset(1.0, seed=1) is data
    with pytest.raises(ValueError, match="fraction"):
        data.subset(0.0, seed=1)


def test_synthetic_data_is_deterministic_and_heterogeneous(tmp_path, processed_schemas) -> None:
    from cdanet.synthetic import write_synthetic_processed

    a = write_synthetic_processed(str(tmp_path / "a"), seed=0)
    assert a == processed_schemas
    assert set(a["movie"].field_names) != set(a["book"].field_names)
    assert a["book"].field("category").kind is FieldKind.MULTI_HOT
    t1 = pq.read_table(tmp_path / "a" / "movie" / "test-00000-of-00001.parquet")
    shutil.rmtree(tmp_path / "a")
    write_synthetic_processed(str(tmp_path / "a"), seed=0)
    assert pq.read_table(tmp_path / "a" / "movie" / "test-00000-of-00001.parquet").equals(t1)
