"""Re-encoding by raw value across preprocessing runs, and the champion scoring a new run's split.

Dataset A is the tiny synthetic processed data plus vocabulary files (ids take their raw values
from the parquet's raw-id columns). Dataset B holds the same rows as a later preprocessing run
would encode them: every vocabulary is reordered, some of A's values are gone (OOV in B), new
values exist, and some of B's test rows carry values A never saw. B is built here with plain
Python dictionaries, independently of the vectorised code under test.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from cdanet.artifacts import ModelDirError, load_model_dir, save_model_dir
from cdanet.champion import ENCODING_REENCODED, ChampionIncompatibleError, score_champion
from cdanet.config import tiny_config
from cdanet.contract import (
    DataError,
    DomainSchema,
    FieldKind,
    SchemaError,
    VocabularyError,
    encode_values,
    load_schemas,
    load_vocabularies,
    processed_vocab_dir,
    read_vocabularies,
    remap_table,
    split_files,
    vocab_lookup,
    write_vocabularies,
)
from cdanet.data import table_to_batch
from cdanet.evaluation import compute_metrics
from cdanet.gate import GateConfig, decide
from cdanet.models import build_model
from cdanet.registry import register_candidate
from cdanet.synthetic import write_synthetic_processed
from cdanet.training import run_experiment

DOMAINS = ("movie", "book")
TARGET = "book"
NAME = "cdanet-remap"
OOV = "<OOV>"
RAW_ID_COLUMNS = {"user_id": "user_id_raw", "item_id": "item_id_raw"}

Vocabs = dict[str, tuple[str, ...]]


# ---- datasets -----------------------------------------------------------------------------------


def _read_split(root: str, domain: str, split: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in split_files(os.path.join(root, domain), split)])


def _vocabs_of_a(root: str, schema: DomainSchema) -> Vocabs:
    """Ids: the raw id of each index as found in the rows; other fields: ``<field>-<index>``."""
    rows = pa.concat_tables([_read_split(root, schema.domain, s) for s in ("train", "validation", "test")])
    vocabs: Vocabs = {}
    for spec in schema.fields:
        if not spec.is_categorical:
            continue
        values = [f"{spec.name}-{i:03d}" for i in range(spec.vocab_size)]
        if spec.name in RAW_ID_COLUMNS:
            for index, raw in zip(rows.column(spec.name).to_pylist(), rows.column(RAW_ID_COLUMNS[spec.name]).to_pylist(),
                                  strict=True):
                values[index] = raw
        vocabs[spec.name] = (OOV, *values[1:])
    return vocabs


def _encode_python(rows: pa.Table, schema: DomainSchema, vocab_from: Vocabs, vocab_to: Vocabs,
                   new_schema: DomainSchema) -> pa.Table:
    """The reference re-encoding: index -> raw value -> index, one Python dict lookup per value."""
    out = rows
    for spec in schema.fields:
        if not spec.is_categorical:
            continue
        to_index = {v: i for i, v in enumerate(vocab_to[spec.name]) if i > 0}
        decode = vocab_from[spec.name]
        col = rows.column(spec.name).to_pylist()
        if spec.kind is FieldKind.MULTI_HOT:
            new = pa.array([[to_index.get(decode[i], 0) if i else 0 for i in row] for row in col], pa.list_(pa.int64()))
        else:
            new = pa.array([to_index.get(decode[i], 0) if i else 0 for i in col], pa.int64())
        out = out.set_column(out.schema.get_field_index(spec.name), spec.name, new)
    return out.cast(new_schema.arrow_schema())


def _write_processed(root: str, domain: str, schema: DomainSchema, splits: dict[str, pa.Table],
                     vocabs: Vocabs | None) -> None:
    domain_dir = os.path.join(root, domain)
    os.makedirs(domain_dir, exist_ok=True)
    schema.save(domain_dir)
    for split, table in splits.items():
        pq.write_table(table, os.path.join(domain_dir, f"{split}-00000-of-00001.parquet"))
    with open(os.path.join(domain_dir, "stats.json"), "w") as fh:
        json.dump({"rows": {s: t.num_rows for s, t in splits.items()}}, fh)
    if vocabs is not None:
        write_vocabularies(processed_vocab_dir(root, schema), vocabs)


def _with_vocab_sizes(schema: DomainSchema, vocabs: Vocabs) -> DomainSchema:
    d = schema.to_dict()
    for f in d["fields"]:
        if f["name"] in vocabs:
            f["vocab_size"] = len(vocabs[f["name"]])
    return DomainSchema.from_dict(d)


@pytest.fixture(scope="module")
def dataset_a(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("run_a"))
    schemas = write_synthetic_processed(root, "amazon", n_users=40, rows_per_domain={"movie": 600, "book": 1200},
                                        seed=3, train_shards=2)
    for schema in schemas.values():
        write_vocabularies(processed_vocab_dir(root, schema), _vocabs_of_a(root, schema))
    return root


@pytest.fixture(scope="module")
def dataset_b(dataset_a: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A's rows as a later run encodes them: reordered vocabularies, dropped and new values."""
    root = str(tmp_path_factory.mktemp("run_b"))
    rng = np.random.default_rng(11)
    for domain, schema_a in load_schemas(dataset_a, DOMAINS).items():
        vocab_a = load_vocabularies(dataset_a, schema_a)
        vocab_b: Vocabs = {}
        for name, values in vocab_a.items():
            kept = [v for v in values[1:] if rng.random() > 0.15]
            new = [f"new-{name}-{j}" for j in range(3)]
            vocab_b[name] = (OOV, *rng.permutation(kept + new).tolist())
        schema_b = _with_vocab_sizes(schema_a, vocab_b)
        splits = {s: _encode_python(_read_split(dataset_a, domain, s), schema_a, vocab_a, vocab_b, schema_b)
                  for s in ("train", "validation", "test")}
        # Values the champion (trained on A) never saw, in every third test row.
        test = splits["test"].to_pydict()
        for spec in schema_b.fields:
            if spec.is_categorical:
                unseen = vocab_b[spec.name].index(f"new-{spec.name}-0")
                for row in range(0, len(test[spec.name]), 3):
                    test[spec.name][row] = [unseen, *test[spec.name][row][1:]] if spec.kind is FieldKind.MULTI_HOT \
                        else unseen
        splits["test"] = pa.Table.from_pydict(test, schema=schema_b.arrow_schema())
        _write_processed(root, domain, schema_b, splits, vocab_b)
    return root


def decoded(indices: list[int], vocab: tuple[str, ...]) -> list[str]:
    return [vocab[i] for i in indices]


def _test_rows(root: str) -> tuple[pa.Table, DomainSchema, Vocabs]:
    schema = load_schemas(root, [TARGET])[TARGET]
    return _read_split(root, TARGET, "test"), schema, load_vocabularies(root, schema)


# ---- vocabularies and remap_table ---------------------------------------------------------------


def test_vocab_lookup_and_encoding_by_raw_value() -> None:
    frm, to = ("<OOV>", "a", "b", "c"), ("[UNK]", "c", "a", "z")
    np.testing.assert_array_equal(vocab_lookup(frm, to), [0, 2, 0, 1])
    # A raw value spelled like the target's OOV marker is still unknown: index 0 is never a value.
    np.testing.assert_array_equal(vocab_lookup(("<OOV>", "[UNK]"), to), [0, 0])
    np.testing.assert_array_equal(encode_values(to, ["z", "q", None, "a"]), [3, 0, 0, 2])


def test_remap_preserves_raw_values_and_maps_unknown_values_to_oov(dataset_a: str, dataset_b: str) -> None:
    rows_b, schema_b, vocab_b = _test_rows(dataset_b)
    _, schema_a, vocab_a = _test_rows(dataset_a)

    out = remap_table(rows_b, schema_b, vocab_b, schema_a, vocab_a, source="run_b/book/test")

    assert out.column_names == rows_b.column_names and out.num_rows == rows_b.num_rows
    for spec in schema_b.fields:
        before, after = rows_b.column(spec.name).to_pylist(), out.column(spec.name).to_pylist()
        if not spec.is_categorical:
            assert after == before  # dense vectors are untouched
            continue
        known = set(vocab_a[spec.name][1:])
        if spec.kind is FieldKind.MULTI_HOT:
            assert [len(r) for r in after] == [len(r) for r in before]
            before, after = sum(before, []), sum(after, [])
        expected = [v if i and v in known else OOV for i, v in zip(before, decoded(before, vocab_b[spec.name]), strict=True)]
        assert decoded(after, vocab_a[spec.name]) == expected, spec.name
        # Every third row carries a value run A never saw: it must land on OOV, not on a random index.
        assert sum(v == OOV and i > 0 for i, v in zip(before, expected, strict=True)) >= rows_b.num_rows // 3
        if spec.name in RAW_ID_COLUMNS:
            # The raw-id columns are an independent record of what each id index means.
            raw = out.column(RAW_ID_COLUMNS[spec.name]).to_pylist()
            pairs = [(a, r) for a, r in zip(decoded(after, vocab_a[spec.name]), raw, strict=True) if a != OOV]
            assert len(pairs) >= rows_b.num_rows // 2 and all(a == r for a, r in pairs)
    for meta in schema_b.meta_columns:
        assert out.column(meta).equals(rows_b.column(meta))
    table_to_batch(schema_a, out, source="remapped")  # in range of the champion's vocabularies


def test_remap_into_the_same_vocabularies_changes_nothing(dataset_a: str) -> None:
    rows, schema, vocab = _test_rows(dataset_a)
    assert remap_table(rows, schema, vocab, schema, vocab).equals(rows)


def test_remap_refuses_structural_differences_and_bad_indices(dataset_a: str, dataset_b: str) -> None:
    rows_b, schema_b, vocab_b = _test_rows(dataset_b)
    _, schema_a, vocab_a = _test_rows(dataset_a)
    d = schema_a.to_dict()
    next(f for f in d["fields"] if f["name"] == "writer")["kind"] = "categorical_id"
    d["fields"] = [f for f in d["fields"] if f["name"] != "category"]
    other = DomainSchema.from_dict(d)
    with pytest.raises(SchemaError, match=r"\['category'\] of the source are unknown to the target; field 'writer' is categorical in the source "
                       r"but categorical_id in the target"):
        remap_table(rows_b, schema_b, vocab_b, other, vocab_a)

    broken = rows_b.set_column(rows_b.schema.get_field_index("writer"), "writer",
                               pa.array(np.full(rows_b.num_rows, schema_b.field("writer").vocab_size), pa.int64()))
    with pytest.raises(DataError, match=r"run_b/book/test: column 'writer' has \d+ index\(es\) outside"):
        remap_table(broken, schema_b, vocab_b, schema_a, vocab_a, source="run_b/book/test")
    with pytest.raises(VocabularyError, match="target vocabularies lack categorical field 'writer'"):
        remap_table(rows_b, schema_b, vocab_b, schema_a, {k: v for k, v in vocab_a.items() if k != "writer"})


@pytest.mark.parametrize(
    "lines, match",
    [
        (None, "no vocabulary for field 'writer'"),
        (lambda size: [OOV, "a"], r"has 2 line\(s\) but field 'writer' has vocab_size"),
        (lambda size: ["[PAD]"] + [f"w{i}" for i in range(1, size)], r"line 0 is '\[PAD\]', expected the OOV marker"),
        (lambda size: [OOV] + [f"w{min(i, 5)}" for i in range(1, size)], "appear on more than one line, e.g. 'w5'"),
        (lambda size: [OOV] + [f"w{i}\r" for i in range(1, size)] + [""], r"has \d+ line\(s\)"),  # CRLF + blank
    ],
)
def test_vocabulary_files_are_checked_against_the_schema(dataset_a: str, tmp_path, lines, match: str) -> None:
    schema = load_schemas(dataset_a, [TARGET])[TARGET]
    vocab_dir = tmp_path / "vocab"
    shutil.copytree(processed_vocab_dir(dataset_a, schema), vocab_dir)
    path = vocab_dir / "writer.txt"
    if lines is None:
        path.unlink()
    else:
        path.write_bytes(("\n".join(lines(schema.field("writer").vocab_size)) + "\n").encode())
    with pytest.raises(VocabularyError, match=match) as e:
        read_vocabularies(str(vocab_dir), schema)
    assert str(path) in str(e.value)


# ---- the model directory ------------------------------------------------------------------------


def test_model_dir_carries_the_vocabularies_it_was_trained_with(dataset_a: str, tmp_path) -> None:
    schemas = load_schemas(dataset_a, DOMAINS)
    cfg = tiny_config("amazon", target_domain=TARGET)
    model = build_model(cfg, schemas)

    path = save_model_dir(model, cfg, schemas, str(tmp_path / "m"), processed_root=dataset_a)

    loaded = load_model_dir(path)
    for domain, schema in schemas.items():
        assert loaded.vocabularies[domain] == load_vocabularies(dataset_a, schema)
        for name in loaded.vocabularies[domain]:
            stored = os.path.join(path, "vocab", domain, f"{name}.txt")
            with open(stored, "rb") as a, open(os.path.join(processed_vocab_dir(dataset_a, schema), f"{name}.txt"), "rb") as b:
                assert a.read() == b.read()  # the preprocessing format, byte for byte
    # Saved without the processed root (or from data without vocabularies): none, and no folder.
    bare = save_model_dir(model, cfg, schemas, str(tmp_path / "bare"))
    assert load_model_dir(bare).vocabularies == {} and not os.path.exists(os.path.join(bare, "vocab"))

    stored = os.path.join(path, "vocab", TARGET, "writer.txt")
    with open(stored) as fh:
        lines = fh.read().split("\n")
    lines[1], lines[2] = lines[2], lines[1]  # same size, other meaning: only the fingerprint catches it
    with open(stored, "w") as fh:
        fh.write("\n".join(lines))
    with pytest.raises(ModelDirError, match="vocabulary fingerprint"):
        load_model_dir(path)


def test_model_dir_refuses_vocabularies_of_another_preprocessing_run(dataset_a: str, dataset_b: str, tmp_path) -> None:
    schemas = load_schemas(dataset_a, DOMAINS)
    cfg = tiny_config("amazon", target_domain=TARGET)
    with pytest.raises(SchemaError, match="does not match the processed data at"):
        save_model_dir(build_model(cfg, schemas), cfg, schemas, str(tmp_path / "m"), processed_root=dataset_b)
    assert not os.path.exists(tmp_path / "m")


# ---- the champion on a new run's test split -----------------------------------------------------


@pytest.fixture(scope="module")
def champion_store(dataset_a: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, float]:
    """(tracking URI, model directory, its own test AUC): a CDAnet trained on run A, registered as champion."""
    cfg = tiny_config("amazon", target_domain=TARGET).with_overrides(
        ["train.max_epochs=1", "train.num_threads=1", "train.batch_size=128"]
    ).validate()
    result = run_experiment(cfg, dataset_a, str(tmp_path_factory.mktemp("experiment_a")))
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    auc = float(result.target_auc)
    register_candidate(
        result.model_dir, tracking_uri=uri, model_name=NAME, metrics={"test_auc": auc}, params={},
        decision=decide(auc, None, GateConfig(min_auc=0.0, domain=TARGET)), lineage={}, pipeline_run_id="run-a",
        processed_root=dataset_a,
    )
    return uri, result.model_dir, auc


def test_champion_scores_a_new_run_in_its_own_encoding(
    champion_store: tuple[str, str, float], dataset_a: str, dataset_b: str
) -> None:
    uri, model_dir, own_auc = champion_store
    # Same schema and vocabularies: scored directly, reproducing the champion's own evaluation.
    assert score_champion(dataset_a, uri, NAME, TARGET).auc == pytest.approx(own_auc, abs=1e-9)

    scored_b = score_champion(dataset_b, uri, NAME, TARGET)
    assert scored_b.encoding == ENCODING_REENCODED
    auc_b = scored_b.auc

    # Reference: B's rows encoded directly with A's vocabularies, scored by the model in-process.
    rows_b, schema_b, vocab_b = _test_rows(dataset_b)
    loaded = load_model_dir(model_dir)
    schema_a, vocab_a = loaded.schemas[TARGET], loaded.vocabularies[TARGET]
    reference = _encode_python(rows_b, schema_b, vocab_b, vocab_a, schema_a)
    with torch.inference_mode():
        logits = loaded.model({TARGET: table_to_batch(schema_a, reference)})[TARGET]
    labels = rows_b.column("label").to_numpy()
    expected = compute_metrics(TARGET, labels, torch.sigmoid(logits).numpy()).auc
    assert auc_b == pytest.approx(expected, abs=1e-9)
    # ... and B's rows are not a replay of A's: every third test row carries values the champion never
    # saw, so its scores differ. (Not the AUC: a barely trained tiny model may rank both alike; on
    # one machine's build of the kernels the two AUCs were equal to 1e-16.)
    rows_a, _, _ = _test_rows(dataset_a)
    with torch.inference_mode():
        logits_a = loaded.model({TARGET: table_to_batch(schema_a, rows_a)})[TARGET]
    assert not torch.allclose(logits, logits_a, rtol=0, atol=1e-7)


def test_incompatible_champion_is_refused_with_what_differs(
    champion_store: tuple[str, str, float], dataset_b: str, tmp_path
) -> None:
    uri, _, _ = champion_store
    changed = tmp_path / "run_c"
    shutil.copytree(dataset_b, changed)
    schema_path = changed / TARGET / "schema.json"
    d = json.loads(schema_path.read_text())
    next(f for f in d["fields"] if f["name"] == "writer")["kind"] = "categorical_id"
    schema_path.write_text(json.dumps(d))
    with pytest.raises(ChampionIncompatibleError, match=r"field 'writer' is categorical_id in this data but categorical in the champion") as e:
        score_champion(str(changed), uri, NAME, TARGET)
    assert "delete_registered_model_alias('cdanet-remap', 'champion')" in str(e.value)

    # Vocabularies differ but today's data has none to map from.
    no_vocab = tmp_path / "run_d"
    shutil.copytree(dataset_b, no_vocab)
    shutil.rmtree(no_vocab / TARGET / "vocab")
    with pytest.raises(ChampionIncompatibleError, match=r"fields differ: .*has no vocabularies"):
        score_champion(str(no_vocab), uri, NAME, TARGET)
    assert str(MlflowClient(uri, registry_uri=uri).get_model_version_by_alias(NAME, "champion").version) == "1"


# ---- end to end on real preprocessing output ----------------------------------------------------


@pytest.mark.slow
def test_daily_retraining_on_real_preprocessing_output(tmp_path) -> None:
    """Two Beam preprocessing runs of the simulator's raw files, yesterday's and today's window.

    Run A stops at an earlier day, so today's run B builds its vocabularies from more (and later)
    training rows: indices shift and new values appear. The champion trained on A scores B's test
    split exactly as B's rows would score if preprocessed with A's vocabularies.
    """
    from cdanet.preprocessing import PreprocessOptions, run_preprocessing
    from cdanet.simulate import simulate

    raw = tmp_path / "raw"
    simulate(str(raw), dataset="amazon", scale="tiny", seed=0)
    glove = str(raw / "glove" / "glove.sim.50d.txt")
    runs = {}
    for run, until in (("a", 1_390_000_000), ("b", None)):
        runs[run] = str(tmp_path / f"processed_{run}")
        run_preprocessing("amazon", str(raw / "amazon"), runs[run], glove_path=glove,
                          options=PreprocessOptions(max_timestamp=until), beam_args=["--runner=FnApiRunner"])
    rows_b, schema_b, vocab_b = _test_rows(runs["b"])
    schema_a = load_schemas(runs["a"], [TARGET])[TARGET]
    vocab_a = load_vocabularies(runs["a"], schema_a)
    assert vocab_a["user_id"] != vocab_b["user_id"][: len(vocab_a["user_id"])]  # the encodings really differ

    cfg = tiny_config("amazon", target_domain=TARGET).with_overrides(
        ["train.max_epochs=1", "train.num_threads=1", "train.batch_size=256"]
    ).validate()
    result = run_experiment(cfg, runs["a"], str(tmp_path / "experiment_a"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    register_candidate(
        result.model_dir, tracking_uri=uri, model_name=NAME, metrics={}, params={},
        decision=decide(float(result.target_auc), None, GateConfig(min_auc=0.0, domain=TARGET)), lineage={},
        pipeline_run_id="run-a", processed_root=runs["a"],
    )

    auc_b = score_champion(runs["b"], uri, NAME, TARGET).auc

    reference = _encode_python(rows_b, schema_b, vocab_b, vocab_a, schema_a)
    # Preprocessing's own record of the raw ids confirms the reference encoding.
    ids = [(vocab_a["user_id"][i], r) for i, r in zip(reference.column("user_id").to_pylist(),
                                                      reference.column("user_id_raw").to_pylist(), strict=True) if i]
    assert ids and all(a == r for a, r in ids)
    loaded = load_model_dir(result.model_dir)
    with torch.inference_mode():
        logits = loaded.model({TARGET: table_to_batch(schema_a, reference)})[TARGET]
    expected = compute_metrics(TARGET, rows_b.column("label").to_numpy(), torch.sigmoid(logits).numpy()).auc
    assert auc_b == pytest.approx(expected, abs=1e-9)
