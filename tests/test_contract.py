"""The data contract: schema validation, round-trips and mismatch errors, the layout and the split reader."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdanet.contract import (
    DataError,
    DomainSchema,
    FieldKind,
    FieldSpec,
    SchemaError,
    VocabularyError,
    load_schemas,
    read_split,
    read_vocabularies,
    shard_name,
    split_files,
    split_tables,
    vocabulary_bytes,
    write_vocabularies,
)


def movie_schema(**overrides) -> DomainSchema:
    fields = (
        FieldSpec("user_id", FieldKind.CATEGORICAL_ID, vocab_size=100),
        FieldSpec("genre", FieldKind.MULTI_HOT, vocab_size=12, max_len=4),
        FieldSpec("director", FieldKind.CATEGORICAL, vocab_size=30),
        FieldSpec("title", FieldKind.DENSE_VECTOR, dim=50),
    )
    return DomainSchema(dataset="amazon", domain="movie", fields=overrides.pop("fields", fields), **overrides)


class TestFieldSpec:
    @pytest.mark.parametrize(
        "kwargs, message",
        [
            (dict(name="f", kind="categorical", vocab_size=1), "vocab_size >= 2"),
            (dict(name="f", kind="multi_hot", vocab_size=5), "max_len >= 1"),
            (dict(name="f", kind="dense_vector"), "dim >= 1"),
            (dict(name="f", kind="dense_vector", dim=3, vocab_size=4), "must not set vocab_size"),
            (dict(name="f", kind="categorical", vocab_size=4, dim=3), "must not set dim"),
            (dict(name="bad name", kind="categorical", vocab_size=4), "identifier"),
        ],
    )
    def test_invalid_fields_raise(self, kwargs, message):
        with pytest.raises(SchemaError, match=message):
            FieldSpec(**kwargs)

    def test_unknown_kind_raises(self):
        with pytest.raises(ValueError):
            FieldSpec("f", "embedding", vocab_size=3)

    def test_arrow_types(self):
        s = movie_schema()
        assert s.field("user_id").arrow_type() == pa.int64()
        assert s.field("genre").arrow_type() == pa.list_(pa.int64())
        assert s.field("title").arrow_type() == pa.list_(pa.float32())
        assert s.field("title").accepts(pa.list_(pa.float32(), 50))  # fixed-size lists are fine too


class TestDomainSchema:
    def test_json_round_trip_and_fingerprint(self, tmp_path):
        s = movie_schema(metadata={"k_core": 5})
        s.save(str(tmp_path))
        loaded = DomainSchema.load(str(tmp_path))
        assert loaded == s
        assert loaded.fingerprint() == s.fingerprint()
        # metadata does not change shapes, so not the fingerprint; a vocab size does
        assert movie_schema(metadata={"other": 1}).fingerprint() == s.fingerprint()
        bigger = movie_schema(fields=(FieldSpec("user_id", "categorical_id", vocab_size=101),))
        assert bigger.fingerprint() != s.fingerprint()

    def test_duplicate_and_reserved_names_raise(self):
        f = FieldSpec("user_id", "categorical_id", vocab_size=10)
        with pytest.raises(SchemaError, match="duplicate"):
            DomainSchema("amazon", "movie", (f, f))
        with pytest.raises(SchemaError, match="clash"):
            DomainSchema("amazon", "movie", (FieldSpec("label", "categorical", vocab_size=3),))
        with pytest.raises(SchemaError, match="no feature fields"):
            DomainSchema("amazon", "movie", ())

    def test_load_missing_file_names_path_and_format(self, tmp_path):
        with pytest.raises(FileNotFoundError, match=r"schema\.json.*preprocessing"):
            DomainSchema.load(str(tmp_path / "movie"))

    def test_load_invalid_json_names_file(self, tmp_path):
        (tmp_path / "schema.json").write_text("{not json")
        with pytest.raises(SchemaError, match="schema.json is not valid JSON"):
            DomainSchema.load(str(tmp_path))
        (tmp_path / "schema.json").write_text(json.dumps({"dataset": "amazon"}))
        with pytest.raises(SchemaError, match="not a valid domain schema"):
            DomainSchema.load(str(tmp_path))

    def test_check_arrow_schema_lists_every_problem(self):
        s = movie_schema()
        table_schema = pa.schema([
            ("user_id", pa.string()),  # wrong type
            ("genre", pa.list_(pa.int64())),
            ("title", pa.list_(pa.float32())),
            ("label", pa.int64()),
            ("timestamp", pa.int64()),
            ("user_id_raw", pa.string()),
        ])  # director and item_id_raw missing
        with pytest.raises(SchemaError) as e:
            s.check_arrow_schema(table_schema, "train-00000.parquet")
        msg = str(e.value)
        assert "train-00000.parquet" in msg
        assert "'user_id' has type string" in msg
        assert "missing feature column 'director'" in msg
        assert "missing column 'item_id_raw'" in msg
        s.check_arrow_schema(s.arrow_schema(), "ok")  # its own schema passes

    def test_check_compatible_names_differing_fields(self):
        a = movie_schema()
        b = movie_schema(fields=a.fields[:-1] + (FieldSpec("title", "dense_vector", dim=300),))
        a.check_compatible(movie_schema(), "itself")
        with pytest.raises(SchemaError, match=r"checkpoint: fields differ: \['title'\]"):
            a.check_compatible(b, "checkpoint")


def test_split_files_and_load_schemas(tmp_path):
    s = movie_schema()
    d = tmp_path / "movie"
    s.save(str(d))
    with pytest.raises(FileNotFoundError, match="no train split"):
        split_files(str(d), "train")
    table = pa.Table.from_pylist([], schema=s.arrow_schema())
    for name in ("train-00001-of-00002.parquet", "train-00000-of-00002.parquet"):
        pq.write_table(table, str(d / name))
    assert [p.rsplit("/", 1)[1] for p in split_files(str(d), "train")] == [
        "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    with pytest.raises(ValueError, match="unknown split"):
        split_files(str(d), "dev")
    assert load_schemas(str(tmp_path), ["movie"])["movie"] == s
    (tmp_path / "book").mkdir()
    s.save(str(tmp_path / "book"))
    with pytest.raises(SchemaError, match="describes domain 'movie', not 'book'"):
        load_schemas(str(tmp_path), ["book"])


def _rows(schema: DomainSchema, n: int, start: int = 0) -> pa.Table:
    return pa.table({
        "user_id": pa.array([i % 100 for i in range(start, start + n)], pa.int64()),
        "genre": pa.array([[1, 2]] * n, pa.list_(pa.int64())),
        "director": pa.array([3] * n, pa.int64()),
        "title": pa.array([[0.5] * 50] * n, pa.list_(pa.float32())),
        "label": pa.array([1] * n, pa.int64()),
        "timestamp": pa.array(range(start, start + n), pa.int64()),
        "user_id_raw": [f"u{i}" for i in range(start, start + n)],
        "item_id_raw": [f"i{i}" for i in range(start, start + n)],
    }, schema=schema.arrow_schema())


class TestReadSplit:
    def test_shards_in_order_with_limit_and_columns(self, tmp_path):
        s = movie_schema()
        d = tmp_path / "movie"
        s.save(str(d))
        pq.write_table(_rows(s, 3, 0), str(d / shard_name("train", 0, 2)))
        pq.write_table(_rows(s, 4, 3), str(d / shard_name("train", 1, 2)))
        whole = read_split(str(tmp_path), s, "train")
        assert [f.rsplit("/", 1)[1] for f in whole.files] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
        assert whole.table.column("timestamp").to_pylist() == list(range(7))
        # Shards after the one that reaches the limit are not read.
        first = read_split(str(tmp_path), s, "train", limit=2)
        assert first.table.num_rows == 2 and len(first.files) == 1
        labels = read_split(str(tmp_path), "movie", "train", columns=["label"])
        assert labels.table.column_names == ["label"] and labels.table.num_rows == 7
        assert [p for p, _ in split_tables(str(tmp_path), s, "train")] == list(whole.files)

    def test_schema_checks_name_the_shard_and_a_bare_name_skips_them(self, tmp_path):
        s = movie_schema()
        d = tmp_path / "movie"
        s.save(str(d))
        bad = d / "train.parquet"
        pq.write_table(_rows(s, 2).drop_columns(["director"]), str(bad))
        with pytest.raises(SchemaError, match=f"{bad}.*missing feature column 'director'"):
            read_split(str(tmp_path), s, "train")
        assert read_split(str(tmp_path), "movie", "train").table.num_rows == 2
        (d / "validation.parquet").write_bytes(b"not parquet")
        with pytest.raises(DataError, match="validation.parquet is not a readable parquet file"):
            read_split(str(tmp_path), "movie", "validation")


def test_vocabulary_file_format(tmp_path):
    spec = FieldSpec("director", FieldKind.CATEGORICAL, vocab_size=3)
    schema = DomainSchema(dataset="amazon", domain="movie", fields=(spec,))
    assert vocabulary_bytes("director", ["<OOV>", "Kurosawa", "Varda"]) == b"<OOV>\nKurosawa\nVarda\n"
    write_vocabularies(str(tmp_path), {"director": ["<OOV>", "Kurosawa", "Varda"]})
    assert (tmp_path / "director.txt").read_text() == "<OOV>\nKurosawa\nVarda\n"
    assert read_vocabularies(str(tmp_path), schema) == {"director": ("<OOV>", "Kurosawa", "Varda")}
    with pytest.raises(VocabularyError, match="contains a newline"):
        vocabulary_bytes("director", ["<OOV>", "a\nb"])
