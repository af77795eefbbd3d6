"""Each preprocessing PTransform on literal sample data, with TestPipeline + assert_that."""

from __future__ import annotations

import gzip
import random
import zipfile
from collections import Counter
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from cdanet.config import DATASETS
from cdanet.contract import ITEM_FIELD, USER_FIELD
from cdanet.preprocessing.composites import label_rule
from cdanet.preprocessing.domains import LAYOUTS, LabelSource
from cdanet.preprocessing.formats import AmazonMetaLine, AmazonRatingsCsv, TaobaoUserProfile
from cdanet.preprocessing.glove import TitleVectors, read_glove, tokenize
from cdanet.preprocessing.interactions import BinariseLabels, Deduplicate, LabelRule, TimeWindow
from cdanet.preprocessing.io import DEAD_LETTERS, ROWS, STATS, ParseLines, ReadLineChunks
from cdanet.preprocessing.join import CATALOGUE, JoinFeatures
from cdanet.preprocessing.kcore import KCoreFilter, kcore_reference
from cdanet.preprocessing.options import PreprocessingError, PreprocessOptions
from cdanet.preprocessing.split import ChronologicalSplit
from cdanet.preprocessing.stats import DomainCounts, KCorePass
from cdanet.preprocessing.tables import ToRows
from cdanet.preprocessing.vocab import BuildVocabularies, EncodeFeatures


def pipeline() -> BeamTestPipeline:
    return BeamTestPipeline(runner="FnApiRunner")


def table(**columns: list) -> pa.Table:
    return pa.table(columns)


def interactions(rows: list[tuple[str, str, int, int]]) -> pa.Table:
    u, i, t, y = zip(*rows, strict=True) if rows else ([], [], [], [])
    return pa.table({"user_id": pa.array(u, pa.string()), "item_id": pa.array(i, pa.string()),
                     "timestamp": pa.array(t, pa.int64()), "label": pa.array(y, pa.int64())})


# ---- step 1: read + parse with dead letters ------------------------------------------------------
RATINGS = (
    b"AH2L9G3DQHHAJ,0000000116,4.0,1019865600\n"
    b"A2IIIDRK3PRRZY,0000000116,1.0,1395619200\n"
    b"\n"
    b"A1TADCM7YWPQ8M,0000000868,four,1031702400\n"
    b"AWGH7V0BDOJKB,\xff\xfe0000013714,4.0,1383177600\n"
    b"A3UORV8A9D5L2E,0000013714,5.0\r\n"
    b"A1VS6FOZ2WGXJS,0000013714,9.0,1360540800\n"
    b"A1VS6FOZ2WGXJS,0000013714,3.0,1360540800"  # no trailing newline: still a line
)


def test_read_and_parse_counts_every_line(tmp_path: Path) -> None:
    path = tmp_path / "ratings_Movies_and_TV.csv.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(RATINGS)
    with pipeline() as p:
        out = (p | beam.Create([str(path)]) | ReadLineChunks(chunk_lines=3)
               | ParseLines(AmazonRatingsCsv(), "movie"))
        assert_that(out[ROWS] | ToRows(), equal_to([
            {"user_id": "AH2L9G3DQHHAJ", "item_id": "0000000116", "rating": 4.0, "timestamp": 1019865600},
            {"user_id": "A2IIIDRK3PRRZY", "item_id": "0000000116", "rating": 1.0, "timestamp": 1395619200},
            {"user_id": "A1VS6FOZ2WGXJS", "item_id": "0000013714", "rating": 3.0, "timestamp": 1360540800},
        ]), label="rows")
        assert_that(out[DEAD_LETTERS] | beam.Map(lambda d: (d["line"], d["reason"], d["file"] == str(path))),
                    equal_to([(4, "non_numeric_field", True), (5, "undecodable_bytes", True),
                              (6, "wrong_column_count", True), (7, "rating_out_of_range", True)]), label="dead")
        assert_that(out[STATS] | beam.CombinePerKey(sum) | beam.MapTuple(lambda k, v: (k[2], v)), equal_to([
            ("lines", 8), ("blank", 1), ("parsed", 3), ("malformed:non_numeric_field", 1),
            ("malformed:undecodable_bytes", 1), ("malformed:wrong_column_count", 1),
            ("malformed:rating_out_of_range", 1),
        ]), label="stats")


def test_parse_header_and_line_numbers() -> None:
    header = (b"userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,shopping_level,"
              b"occupation,new_user_class_level ")
    chunk = ("user_profile.csv", 1, [header, b"234,0,5,2,5,,3,0,3", b"523,5,2,2,2,1,3,1,"])
    with pipeline() as p:
        out = p | beam.Create([chunk]) | ParseLines(TaobaoUserProfile(), "ad", line_numbers=True)
        assert_that(out[ROWS] | ToRows() | beam.Map(lambda r: (r["user_id"], r["pvalue_level"],
                                                              r["new_user_class_level"], r["_line"])),
                    equal_to([("234", None, "3", 2), ("523", "1", None, 3)]))


def test_a_fast_path_chunk_keeps_its_line_numbers_and_counts() -> None:
    lines = [b"A1,B1,4.0,1019865600", b"A2,B1,1.0,1395619200", b"A3,B2,5.0,1360540800"]
    assert AmazonRatingsCsv().parse_chunk(lines) is not None  # this chunk takes the vectorised path
    with pipeline() as p:
        out = p | beam.Create([("r.csv", 4, lines)]) | ParseLines(AmazonRatingsCsv(), "movie", line_numbers=True)
        assert_that(out[ROWS] | ToRows() | beam.Map(lambda r: (r["user_id"], r["rating"], r["_line"])),
                    equal_to([("A1", 4.0, 4), ("A2", 1.0, 5), ("A3", 5.0, 6)]), label="rows")
        assert_that(out[STATS] | beam.MapTuple(lambda k, v: (k[2], v)), equal_to([("lines", 3), ("parsed", 3)]),
                    label="stats")


def test_hash_buckets_of_strings_are_those_of_every_value() -> None:
    import pandas as pd

    from cdanet.preprocessing.tables import hash_buckets
    values = pa.chunked_array([["u1", "u2", "u1"], ["u3", "u2"]])
    expected = (pd.util.hash_array(np.array(["u1", "u2", "u1", "u3", "u2"], dtype=object)) % np.uint64(7)).astype(np.int64)
    np.testing.assert_array_equal(hash_buckets(values, 7), expected)
    np.testing.assert_array_equal(hash_buckets(pa.array(["u1", None]), 7)[:1], expected[:1])  # nulls: the generic path


def test_parse_2014_meta_literals() -> None:
    lines = [b"{'asin': '0000143561', 'categories': [['Movies & TV', 'Movies']], 'title': 'Everyday Italian'}",
             b"{'asin': '0000589012', 'title': 'Why Don't They Just Quit?", b"{'asin': 'B1'}"]
    with pipeline() as p:
        out = p | beam.Create([("meta_Movies_and_TV.json", 1, lines)]) | ParseLines(AmazonMetaLine(), "movie")
        assert_that(out[ROWS] | ToRows(), equal_to([
            {"item_id": "0000143561", "title": "Everyday Italian", "categories": ["Movies"], "person": None},
            {"item_id": "B1", "title": None, "categories": [], "person": None}]), label="rows")
        assert_that(out[DEAD_LETTERS] | beam.Map(lambda d: (d["line"], d["reason"])),
                    equal_to([(2, "broken_json")]), label="dead")


# ---- step 2: labels, duplicates, window ----------------------------------------------------------
def test_labels_threshold_and_behaviour() -> None:
    ratings = table(user_id=["a", "b", "c"], rating=[3.0, 3.5, 5.0])
    behaviours = table(user_id=["a", "b"], behavior=["pv", "buy"])
    with pipeline() as p:
        r = p | "R" >> beam.Create([ratings]) | "LR" >> BinariseLabels(LabelRule("rating", threshold=3.0))
        b = p | "B" >> beam.Create([behaviours]) | "LB" >> BinariseLabels(LabelRule("behavior", positive_values=("buy",)))
        assert_that(r | "RR" >> ToRows(), equal_to([{"user_id": "a", "label": 0}, {"user_id": "b", "label": 1},
                                                    {"user_id": "c", "label": 1}]), label="ratings")
        assert_that(b | "RB" >> ToRows(), equal_to([{"user_id": "a", "label": 0}, {"user_id": "b", "label": 1}]),
                    label="behaviours")


def test_deduplicate_keeps_one_row_with_max_label() -> None:
    chunks = [interactions([("u1", "i1", 10, 0), ("u1", "i1", 10, 1), ("u2", "i1", 10, 0)]),
              interactions([("u1", "i1", 10, 0), ("u1", "i1", 11, 0)])]
    with pipeline() as p:
        out = p | beam.Create(chunks) | Deduplicate(num_partitions=4)
        assert_that(out[ROWS] | ToRows() | beam.Map(lambda r: tuple(r.values())),
                    equal_to([("u1", "i1", 10, 1), ("u2", "i1", 10, 0), ("u1", "i1", 11, 0)]), label="rows")
        assert_that(out[STATS] | beam.CombinePerKey(sum), equal_to([(("rows", "duplicates"), 2)]), label="stats")


def test_time_window_relative_to_newest_row() -> None:
    day = 86_400
    rows = interactions([("u", "a", 1 * day, 1), ("u", "b", 5 * day, 1), ("u", "c", 9 * day, 0), ("u", "d", 10 * day, 0)])
    with pipeline() as p:
        w = p | "W" >> beam.Create([rows]) | "Window" >> TimeWindow(window_days=5)
        m = p | "M" >> beam.Create([rows]) | "Max" >> TimeWindow(max_timestamp=9 * day, window_days=5)
        assert_that(w[ROWS] | "RW" >> ToRows() | "IW" >> beam.Map(lambda r: r["item_id"]), equal_to(["c", "d"]), label="w")
        assert_that(m[ROWS] | "RM" >> ToRows() | "IM" >> beam.Map(lambda r: r["item_id"]), equal_to(["b", "c"]), label="m")
        assert_that(m[STATS] | beam.CombinePerKey(sum), equal_to([
            (("rows", "dropped_after_max_timestamp"), 1), (("rows", "dropped_outside_window"), 1)]), label="s")


# ---- step 3: k-core ------------------------------------------------------------------------------
def chain_case() -> list[tuple[str, str, int, int]]:
    """A 2-core that needs many rounds: a 3x3 complete block plus a path hanging off it.

    The path u9-i9-u8-i8-...-u4-i4 peels one user or item per pass from its loose end.
    """
    rows = [(f"u{a}", f"i{b}", 0, 1) for a in range(3) for b in range(3)]
    for n in range(4, 10):
        rows.append((f"u{n}", f"i{n}", 0, 1))
        if n > 4:
            rows.append((f"u{n - 1}", f"i{n}", 0, 1))  # i_n links u_n and u_{n-1}
    rows.append(("u0", "i4", 0, 1))  # attach the path to the block
    return rows


def removals_per_pass(pairs: list[tuple[str, str]], k: int) -> list[int]:
    """Rows removed by each alternating user / item pass until a pass (not the first) removes none."""
    alive, out = list(pairs), []
    for n in range(1, 10_000):
        side = 0 if n % 2 == 1 else 1
        counts = Counter(p[side] for p in alive)
        kept = [p for p in alive if counts[p[side]] >= k]
        out.append(len(alive) - len(kept))
        alive = kept
        if n > 1 and out[-1] == 0:
            return out
    raise AssertionError("no fixed point")


def test_kcore_needs_several_rounds_and_reports_passes() -> None:
    rows = chain_case()
    pairs = [(u, i) for u, i, _, _ in rows]
    expected = [rows[i] for i in kcore_reference(pairs, 2)]
    assert len(expected) == 9  # only the 3x3 block survives
    per_pass = removals_per_pass(pairs, 2)
    assert sum(1 for r in per_pass if r) >= 6  # several rounds are needed
    with pipeline() as p:
        out = p | beam.Create([interactions(rows)]) | KCoreFilter(k=2, rounds=8, num_partitions=3)
        assert_that(out[ROWS] | ToRows() | beam.Map(lambda r: tuple(r.values())), equal_to(expected), label="rows")
        removed = out[STATS] | beam.Filter(lambda kv: kv[0][2] == "removed") | beam.CombinePerKey(sum)
        # Peeling alternates between passes; more than two passes remove something.
        assert_that(removed | beam.MapTuple(lambda k, v: (int(k[1]), v)) | beam.Filter(lambda kv: kv[1] > 0),
                    equal_to([(i + 1, r) for i, r in enumerate(per_pass) if r]), label="passes")


def test_kcore_matches_reference_on_random_graphs() -> None:
    rng = random.Random(7)
    cases = []
    for _ in range(3):
        n = rng.randint(150, 300)
        pairs = [(f"u{int(rng.paretovariate(1.2)) % 60}", f"i{int(rng.paretovariate(1.1)) % 80}") for _ in range(n)]
        cases.append(pairs)
    with pipeline() as p:
        for c, pairs in enumerate(cases):
            rows = [(u, i, t, 0) for t, (u, i) in enumerate(pairs)]
            expected = [rows[i] for i in kcore_reference(pairs, 3)]
            out = p | f"C{c}" >> beam.Create([interactions(rows[:100]), interactions(rows[100:])]) | f"K{c}" >> KCoreFilter(
                k=3, rounds=12, num_partitions=5)
            assert_that(out[ROWS] | f"R{c}" >> ToRows() | f"T{c}" >> beam.Map(lambda r: tuple(r.values())),
                        equal_to(expected), label=f"case{c}")


def test_kcore_with_deduplicate_is_dedup_then_kcore_in_one_shuffle_fewer() -> None:
    rng = random.Random(11)
    pairs = [(f"u{int(rng.paretovariate(1.2)) % 40}", f"i{int(rng.paretovariate(1.1)) % 50}") for _ in range(260)]
    rows = [(u, i, t, rng.randint(0, 1)) for t, (u, i) in enumerate(pairs)]
    rows += [(u, i, t, 1 - y) for u, i, t, y in rows[:60]]  # 60 copies of a (user, item, timestamp)
    unique: dict[tuple[str, str, int], int] = {}
    for u, i, t, y in rows:  # the duplicate policy: one row, label = max
        unique[(u, i, t)] = max(unique.get((u, i, t), 0), y)
    deduped = [(*key, y) for key, y in unique.items()]
    expected = [deduped[j] for j in kcore_reference([(u, i) for u, i, _, _ in deduped], 3)]
    assert 0 < len(expected) < len(deduped)  # k-core removes rows here
    with pipeline() as p:
        out = (p | beam.Create([interactions(rows[:150]), interactions(rows[150:])])
               | KCoreFilter(k=3, rounds=6, num_partitions=5, deduplicate=True))
        assert_that(out[ROWS] | ToRows() | beam.Map(lambda r: tuple(r.values())), equal_to(expected), label="rows")
        stats = out[STATS] | beam.CombinePerKey(sum)
        assert_that(stats | beam.Filter(lambda kv: kv[0] == ("rows", "duplicates")),
                    equal_to([(("rows", "duplicates"), 60)]), label="duplicates")
        # pass 1's "removed" counts only rows of users with fewer than k rows, not the duplicates
        assert_that(stats | "Removed" >> beam.Filter(lambda kv: kv[0][0] == "kcore" and kv[0][2] == "removed")
                    | beam.combiners.ToList() | beam.Map(lambda kvs: sum(v for _, v in kvs)),
                    equal_to([len(deduped) - len(expected)]), label="removed")
    from cdanet.preprocessing.kcore import DegreePass
    with pytest.raises(ValueError, match="must partition by user"):
        DegreePass(3, 2, dedup=True)


def test_keyed_steps_emit_bounded_copies() -> None:
    import pickle

    from cdanet.preprocessing.tables import MAX_ELEMENT_ROWS, bounded
    table = pa.table({"user_id": [f"u{i % 1000}" for i in range(250_000)], "x": np.arange(250_000)})
    pieces = list(bounded(table, 100_000))
    assert [p.num_rows for p in pieces] == [100_000, 100_000, 50_000]
    assert pa.concat_tables(pieces).equals(table)
    # copies, not slices: a pickled slice would carry all 250k rows
    assert len(pickle.dumps(pieces[2])) < 0.3 * len(pickle.dumps(table))
    assert list(bounded(table.slice(0, 10))) and MAX_ELEMENT_ROWS == 100_000
    # One k-core partition of 250k rows leaves the pass as three elements (the local runner dropped 150 MB ones).
    with pipeline() as p:
        out = p | beam.Create([table.append_column("item_id", table["user_id"])]) | KCoreFilter(
            k=1, rounds=1, num_partitions=1)
        assert_that(out[ROWS] | beam.Map(lambda t: t.num_rows), equal_to([100_000, 100_000, 50_000]))


# ---- step 4: join --------------------------------------------------------------------------------
def test_join_features_first_record_wins_and_misses_are_counted() -> None:
    rows = interactions([("u1", "i1", 1, 1), ("u2", "i1", 2, 0), ("u1", "i2", 3, 0)])
    items = pa.table({"item_id": ["i1", "i1", "i3"], "title": ["First", "Later", "Unused"], "_line": [5, 9, 1]})
    schema = items.schema
    with pipeline() as p:
        out = ({"rows": p | "Rows" >> beam.Create([rows]), "features": p | "Items" >> beam.Create([items])}
               | JoinFeatures("item_id", schema, "item_features", num_partitions=2))
        assert_that(out[ROWS] | "RR" >> ToRows() | "TR" >> beam.Map(lambda r: (r["user_id"], r["item_id"], r["title"])),
                    equal_to([("u1", "i1", "First"), ("u2", "i1", "First"), ("u1", "i2", None)]), label="rows")
        assert_that(out[CATALOGUE] | "RC" >> ToRows(), equal_to([{"item_id": "i1", "title": "First"},
                                                               {"item_id": "i2", "title": None}]), label="catalogue")
        assert_that(out[STATS] | beam.CombinePerKey(sum), equal_to([
            (("item_features", "duplicate_records"), 1), (("item_features", "rows_without_features"), 1),
            (("item_features", "keys"), 2), (("item_features", "keys_without_features"), 1)]), label="stats")


# ---- step 5: GloVe -------------------------------------------------------------------------------
GLOVE = "the 0.1 0.2 0.3\nstar 1.0 0.0 -1.0\nwars 0.0 2.0 1.0\nunused 9 9 9\n"


@pytest.fixture(params=["txt", "gz", "zip"])
def glove_file(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "txt":
        path = tmp_path / "glove.test.3d.txt"
        path.write_text(GLOVE)
    elif request.param == "gz":
        path = tmp_path / "glove.test.3d.txt.gz"
        with gzip.open(path, "wt") as fh:
            fh.write(GLOVE)
    else:
        path = tmp_path / "glove.test.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("glove.test.3d.txt", GLOVE)
    return str(path)


def test_read_glove_keeps_only_the_vocabulary(glove_file: str) -> None:
    g = read_glove(glove_file, {"star", "wars", "missing"})
    assert g.dim == 3 and g.lines == 4 and g.words == ("star", "wars")
    np.testing.assert_allclose(g.vectors, [[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]])


def test_read_glove_rejects_truncated_lines_and_ambiguous_zips(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("the 0.1 0.2 0.3\nstar 1.0\n")
    with pytest.raises(PreprocessingError, match=r"bad.txt: line 2 has 1 values, expected 3"):
        read_glove(str(bad), {"star"})
    two = tmp_path / "glove.6B.zip"
    with zipfile.ZipFile(two, "w") as zf:
        zf.writestr("glove.6B.50d.txt", GLOVE)
        zf.writestr("glove.6B.100d.txt", GLOVE)
    with pytest.raises(PreprocessingError, match="choose one with glove_member"):
        read_glove(str(two))
    assert read_glove(str(two), member="glove.6B.50d.txt").dim == 3


def test_tokenize() -> None:
    assert tokenize("Star Wars: Episode IV (1977) - L'Empire") == ["star", "wars", "episode", "iv", "l", "empire"]


def test_title_vectors_mean_and_zero(glove_file: str) -> None:
    cat = pa.table({"item_id": ["a", "b", "c"], "title": ["Star Wars", "Nothing Known", None]})
    with pipeline() as p:
        out = p | beam.Create([cat]) | TitleVectors(glove_file)
        got = out["vectors"] | ToRows() | beam.Map(lambda r: (r["item_id"], [round(x, 5) for x in r["title"]]))
        assert_that(got, equal_to([("a", [0.5, 1.0, 0.0]), ("b", [0.0, 0.0, 0.0]), ("c", [0.0, 0.0, 0.0])]),
                    label="vectors")
        assert_that(out[STATS] | beam.CombinePerKey(sum) | beam.Filter(lambda kv: kv[0][0] == "title"), equal_to([
            (("title", "items"), 3), (("title", "without_title"), 1), (("title", "without_known_word"), 1)]),
            label="stats")


# ---- steps 6-8: split, vocabularies, encoding ----------------------------------------------------
def test_chronological_split_is_exact_with_ties() -> None:
    # 20 rows; timestamps tie across both cuts (positions 16 and 18).
    stamps = [1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 15, 15, 15, 15]
    rows = [(f"u{i:02d}", f"i{i % 3}", t, i % 2) for i, t in enumerate(stamps)]
    chunks = [interactions(rows[:7]), interactions(rows[7:])]
    ordered = sorted(rows, key=lambda r: (r[2], r[0], r[1]))
    with pipeline() as p:
        out = p | beam.Create(chunks) | ChronologicalSplit((0.8, 0.1, 0.1))
        for name, part in (("train", ordered[:16]), ("validation", ordered[16:18]), ("test", ordered[18:])):
            assert_that(out[name] | f"R{name}" >> ToRows() | f"T{name}" >> beam.Map(lambda r: tuple(r.values())),
                        equal_to(part), label=name)


def test_vocabularies_from_train_and_encoding() -> None:
    layout = LAYOUTS["book"]
    train = pa.table({
        "user_id": ["u1", "u1", "u2"], "item_id": ["b1", "b2", "b1"], "timestamp": [1, 2, 3], "label": [1, 0, 1],
        "title": ["x", "y", "x"], "categories": [["Fiction", "Classics"], ["Fiction"], []], "person": ["Austen", None, "Austen"],
    })
    test = pa.table({
        "user_id": ["u3"], "item_id": ["b1"], "timestamp": [9], "label": [0], "title": [None],
        "categories": pa.array([None], pa.list_(pa.string())), "person": ["Unknown"],
    })
    vectors = pa.table({"item_id": ["b1"], "title": pa.array([[1.0, 2.0]], pa.list_(pa.float32()))})
    with pipeline() as p:
        vocab = p | "Train" >> beam.Create([train]) | BuildVocabularies(layout.fields, min_count=1)
        assert_that(vocab["vocab"], equal_to([("user_id", ["u1", "u2"]), ("item_id", ["b1", "b2"]),
                                              ("category", ["Fiction", "Classics"]), ("writer", ["Austen"])]),
                    label="vocab")
        assert_that(vocab[STATS], equal_to([(("max_len", "category"), 2)]), label="max_len")
        vec = p | "Vectors" >> beam.Create([vectors])
        encoded = p | "Test" >> beam.Create([test]) | EncodeFeatures(layout.fields, layout.arrow_schema(),
                                                                      vocab["vocab"], vec)
        assert_that(encoded | ToRows(), equal_to([{
            "user_id": 0, "item_id": 1, "category": [], "writer": 0, "title": [1.0, 2.0], "label": 0,
            "timestamp": 9, "user_id_raw": "u3", "item_id_raw": "b1"}]), label="encoded")


def test_domain_definitions_cover_the_datasets_and_name_their_labels() -> None:
    # The domain names live in cdanet.config.DATASETS and LAYOUTS only: every preprocessing step asks these.
    assert {d: lay.dataset for d, lay in LAYOUTS.items()} == {d: ds for ds, doms in DATASETS.items() for d in doms}
    for lay in LAYOUTS.values():
        assert lay.fields[:2] == tuple(f for f in lay.fields if f.name in (USER_FIELD, ITEM_FIELD))
    o = PreprocessOptions(rating_threshold=4.0, positive_behaviors=("buy", "cart"))
    rules = {d: label_rule(lay, o).describe() for d, lay in LAYOUTS.items()}
    assert rules == {"movie": "rating > 4", "book": "rating > 4", "ad": "clk > 0", "rec": "behavior in ['buy', 'cart']"}
    assert {lay.label for lay in LAYOUTS.values()} == set(LabelSource)


def test_counts_are_filed_under_typed_fields() -> None:
    counts = DomainCounts()
    for key, value in [
        (("file", "r.csv", "lines"), 12), (("file", "r.csv", "header"), 1), (("file", "r.csv", "blank"), 1),
        (("file", "r.csv", "malformed:empty_id"), 2), (("kcore", "001", "removed"), 3), (("kcore", "001", "rows"), 7),
        (("kcore", "001", "users"), 2), (("kcore", "002", "removed"), 0), (("rows", "duplicates"), 1),
        (("split", "train", "positives"), 4), (("max_len", "genre"), 5), (("title", "items"), 9),
    ]:
        counts.record(list(key), value)  # the sidecar hands keys back as JSON lists
    f = counts.file("r.csv")
    assert (f.data_lines, f.malformed_total, f.malformed) == (10, 2, {"empty_id": 2})
    assert counts.kcore_pass(1) == KCorePass(removed=3, rows=7, users=2) and counts.removed_by_pass() == {1: 3, 2: 0}
    assert counts.rows.total == 1 and counts.split("train").positives == 4 and counts.split("test").rows == 0
    assert counts.max_len == {"genre": 5} and counts.title == {"items": 9}
    for bad in (("kcore", "001", "edges"), ("rows", "dropped"), ("nonsense", "x")):
        with pytest.raises(ValueError, match="unknown preprocessing count"):
            counts.record(bad, 1)
