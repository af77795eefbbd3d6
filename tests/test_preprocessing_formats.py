"""Raw-format parsers and file discovery on literal lines copied from the public files' formats."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from cdanet.preprocessing.formats import (
    BROKEN_JSON,
    EMPTY_ID,
    INVALID_VALUE,
    MISSING_FIELD,
    NON_NUMERIC,
    RATING_RANGE,
    TIMESTAMP_RANGE,
    WRONG_COLUMNS,
    AmazonMetaLine,
    AmazonRatingsCsv,
    AmazonReviewJson,
    Malformed,
    TaobaoAdFeature,
    TaobaoRawSample,
    TaobaoUserBehavior,
    TaobaoUserProfile,
    discover,
)
from cdanet.preprocessing.options import PreprocessingError, PreprocessOptions


def reason(fmt, line: str) -> str:
    with pytest.raises(Malformed) as e:
        fmt.parse(line)
    return e.value.reason


class TestAmazonRatings:
    def test_2014_csv(self) -> None:
        assert AmazonRatingsCsv().parse("AH2L9G3DQHHAJ,0000000116,4.0,1019865600") == (
            "AH2L9G3DQHHAJ", "0000000116", 4.0, 1019865600)

    @pytest.mark.parametrize("line, why", [
        ("AH2L9G3DQHHAJ,0000000116,4.0", WRONG_COLUMNS),
        (",0000000116,4.0,1019865600", EMPTY_ID),
        ("A,B,five,1019865600", NON_NUMERIC),
        ("A,B,7.5,1019865600", RATING_RANGE),
        ("A,B,4.0,12x", NON_NUMERIC),
        ("A,B,4.0,-5", TIMESTAMP_RANGE),
        ("A,B,nan,1019865600", NON_NUMERIC),
    ])
    def test_2014_csv_malformed(self, line: str, why: str) -> None:
        assert reason(AmazonRatingsCsv(), line) == why

    def test_2014_and_2018_review_json(self) -> None:
        line = ('{"reviewerID": "A2SUAM1J3GNN3B", "asin": "0000013714", "reviewerName": "J. McDonald", '
                '"overall": 5.0, "summary": "Heavenly", "unixReviewTime": 1252800000, "reviewTime": "09 13, 2009"}')
        assert AmazonReviewJson().parse(line) == ("A2SUAM1J3GNN3B", "0000013714", 5.0, 1252800000)

    def test_2023_jsonl_milliseconds_and_parent_asin(self) -> None:
        line = ('{"rating": 5.0, "title": "Five Stars", "asin": "B01G6M7CLK", "parent_asin": "B01G6M7CLK0", '
                '"user_id": "AGCI7FAH4GL5FI65HYLKWTMFZ2CQ", "timestamp": 1471546337000, "verified_purchase": true}')
        assert AmazonReviewJson().parse(line) == ("AGCI7FAH4GL5FI65HYLKWTMFZ2CQ", "B01G6M7CLK0", 5.0, 1471546337)

    @pytest.mark.parametrize("line, why", [
        ('{"reviewerID": "A", "asin": "B", "overall": 5.0', BROKEN_JSON),
        ('{"reviewerID": "A", "asin": "B", "overall": 5.0}', MISSING_FIELD),
        ('{"user_id": "", "parent_asin": "B", "rating": 5.0, "timestamp": 1}', EMPTY_ID),
        ('{"user_id": "U", "parent_asin": "B", "rating": "n/a", "timestamp": 1}', NON_NUMERIC),
        ('{"user_id": "U", "parent_asin": "B", "rating": -1.0, "timestamp": 1}', RATING_RANGE),
        ('["not", "an", "object"]', BROKEN_JSON),
        ('{"asin": "B"}', MISSING_FIELD),
    ])
    def test_review_json_malformed(self, line: str, why: str) -> None:
        assert reason(AmazonReviewJson(), line) == why


class TestAmazonMeta:
    def test_2014_python_literal(self) -> None:
        line = ("{'asin': '0000143561', 'categories': [['Movies & TV', 'Movies'], ['Movies & TV', 'TV', 'Drama']], "
                "'title': 'Everyday Italian (with Giada de Laurentiis), Volume 1 (3 Pack)', 'price': 12.99, "
                "'salesRank': {'Movies & TV': 376041}, 'brand': 'Giada'}")
        assert AmazonMetaLine(domain="movie").parse(line) == (
            "0000143561", "Everyday Italian (with Giada de Laurentiis), Volume 1 (3 Pack)",
            ["Movies", "TV", "Drama"], "Giada")

    def test_literal_is_never_evaluated(self) -> None:
        assert reason(AmazonMetaLine(), "{'asin': __import__('os').getcwd()}") == BROKEN_JSON

    def test_2018_json_director_from_details(self) -> None:
        line = ('{"category": ["Movies & TV", "Movies"], "title": "Alien", "brand": "20th Century Fox", '
                '"main_cat": "Movies & TV", "details": {"Director:": "Ridley Scott", "Format:": "DVD"}, '
                '"asin": "B00005JKZY"}')
        assert AmazonMetaLine(domain="movie").parse(line) == ("B00005JKZY", "Alien", ["Movies"], "Ridley Scott")

    def test_2023_book_author_object_and_store_fallback(self) -> None:
        with_author = ('{"main_category": "Books", "title": "Dune", "categories": ["Books", "Science Fiction & Fantasy"],'
                       ' "details": {"Publisher": "Ace"}, "author": {"name": "Frank Herbert", "about": []}, '
                       '"store": "Herbert Estate", "parent_asin": "0441013597"}')
        assert AmazonMetaLine(domain="book").parse(with_author) == (
            "0441013597", "Dune", ["Science Fiction & Fantasy"], "Frank Herbert")
        store_only = '{"title": "X", "categories": [], "details": {}, "store": "Jane Doe", "parent_asin": "P1"}'
        assert AmazonMetaLine(domain="book").parse(store_only) == ("P1", "X", [], "Jane Doe")

    def test_no_metadata_fields(self) -> None:
        assert AmazonMetaLine(domain="movie").parse('{"asin": "B1"}') == ("B1", None, [], None)

    def test_missing_id(self) -> None:
        assert reason(AmazonMetaLine(), "{'asin': '', 'title': 'x'}") == EMPTY_ID


class TestTaobao:
    def test_raw_sample(self) -> None:
        assert TaobaoRawSample().parse("581738,1494137644,1,430548_1007,1,0") == (
            "581738", 1494137644, "1", "430548_1007", 0.0)
        assert reason(TaobaoRawSample(), "581738,1494137644,1,430548_1007,1,2") == INVALID_VALUE

    def test_ad_feature_null_brand_and_price_bucket(self) -> None:
        assert TaobaoAdFeature().parse("63133,6406,83237,1,95471,170.0") == (
            "63133", "6406", "83237", "1", "95471", "7")
        assert TaobaoAdFeature().parse("313401,6406,83237,1,NULL,0.01")[4] is None
        assert reason(TaobaoAdFeature(), "313401,6406,83237,1,NULL,abc") == NON_NUMERIC

    def test_user_profile_empty_fields(self) -> None:
        assert TaobaoUserProfile().parse("234,0,5,2,5,,3,0,3") == (
            "234", "0", "5", "2", "5", None, "3", "0", "3")
        assert TaobaoUserProfile().parse("523,5,2,2,2,1.0,3,1,") == (
            "523", "5", "2", "2", "2", "1", "3", "1", None)

    def test_user_behavior(self) -> None:
        assert TaobaoUserBehavior().parse("1,2268318,2520377,pv,1511544070") == (
            "1", "2268318", "2520377", "pv", 1511544070)
        assert reason(TaobaoUserBehavior(), "1,2268318,2520377,click,1511544070") == INVALID_VALUE


class TestDiscover:
    def _taobao(self, tmp_path: Path, profile_header: str) -> Path:
        (tmp_path / "raw_sample.csv").write_text("user,time_stamp,adgroup_id,pid,nonclk,clk\n1,2,3,p,1,0\n")
        (tmp_path / "ad_feature.csv").write_text("adgroup_id,cate_id,campaign_id,customer,brand,price\n")
        (tmp_path / "user_profile.csv").write_text(profile_header + "\n")
        return tmp_path

    def test_trailing_space_header_is_accepted(self, tmp_path: Path) -> None:
        header = ("userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,shopping_level,"
                  "occupation,new_user_class_level ")
        files = discover("taobao", "ad", str(self._taobao(tmp_path, header)))
        assert [f.role for f in files] == ["interactions", "items", "users"]

    def test_wrong_header_names_file_and_expected_columns(self, tmp_path: Path) -> None:
        with pytest.raises(PreprocessingError, match=r"user_profile\.csv.*expected the columns userid,cms_segid"):
            discover("taobao", "ad", str(self._taobao(tmp_path, "userid,gender")))

    def test_missing_ratings_file_message(self, tmp_path: Path) -> None:
        with pytest.raises(PreprocessingError) as e:
            discover("amazon", "movie", str(tmp_path))
        assert str(e.value) == (
            f"no ratings file for domain movie in {tmp_path}: expected ratings_Movies_and_TV.csv[.gz], "
            "reviews_Movies_and_TV_5.json[.gz], Movies_and_TV.json[l][.gz]")

    def test_gzipped_2023_files_are_found(self, tmp_path: Path) -> None:
        for name in ("Books.jsonl.gz", "meta_Books.jsonl.gz"):
            with gzip.open(tmp_path / name, "wt") as fh:
                fh.write("{}\n")
        files = discover("amazon", "book", str(tmp_path))
        assert [Path(f.path).name for f in files] == ["Books.jsonl.gz", "meta_Books.jsonl.gz"]
        assert isinstance(files[0].fmt, AmazonReviewJson)


def test_options_validation_lists_every_problem() -> None:
    with pytest.raises(PreprocessingError) as e:
        PreprocessOptions(k_core={"movie": 0}, split_fractions=(0.5, 0.5, 0.5), malformed_threshold=2).validate()
    msg = str(e.value)
    assert "k_core['movie']" in msg and "split_fractions" in msg and "malformed_threshold" in msg


# ---- the vectorised fast path of the CSV formats (parse_chunk) ----------------------------------------------

def _good_line(fmt, rng) -> str:
    u, i, t = f"U{rng.integers(1, 10**6)}", f"{rng.integers(0, 10**9):010d}", str(rng.integers(1_000_000_000, 1_400_000_000))
    if isinstance(fmt, AmazonRatingsCsv):
        return f"{u},{i},{rng.choice(['1.0', '2', '3.5', '4.0', '5.0', '0.0'])},{t}"
    if isinstance(fmt, TaobaoRawSample):
        clk = rng.integers(0, 2)
        return f"{u},{t},{i},{rng.choice(['430548_1007', '430539_1007', ''])},{1 - clk},{clk}"
    return f"{u},{i},{rng.choice(['4756105', '', '2520377'])},{rng.choice(['pv', 'buy', 'cart', 'fav'])},{t}"


#: Field values on which Python's and arrow's parsing could disagree, or that the line parsers reject.
_ODD_VALUES = [" U1", "U1 ", "", " ", "\t", "1.0", "+1", "-1", "01", "1e3", "1_000", "nan", "inf", "-inf", "4.50", ".5",
               "5.", "99999999999999999999", "5.1", "-0.0", "١٢", "é", "U\x1f", "\x0bU", "pv ", "PV", "2", "0", "1",
               "NULL", "430548_1007 ", "1019865600", "9999999999", "x,y"]


def _slow_table(fmt, lines: list[bytes]):
    """What the line parsers give for ``lines``: the table, or None if any line is malformed."""
    rows = []
    for raw in lines:
        try:
            rows.append(fmt.parse(raw.removesuffix(b"\r").decode("utf-8")))
        except (Malformed, UnicodeDecodeError):
            return None
    import pyarrow as pa
    return pa.Table.from_arrays([pa.array(list(c), type=t) for c, (_, t) in zip(zip(*rows, strict=True),
                                                                                  fmt.columns, strict=True)],
                                schema=fmt.arrow_schema)


@pytest.mark.parametrize("fmt", [AmazonRatingsCsv(), TaobaoRawSample(), TaobaoUserBehavior()], ids=lambda f: type(f).__name__)
def test_the_fast_path_gives_what_the_line_parsers_give_or_steps_aside(fmt) -> None:
    import numpy as np
    rng = np.random.default_rng(0)
    taken = stepped_aside = 0
    for trial in range(240):
        lines = [_good_line(fmt, rng) for _ in range(int(rng.integers(1, 30)))]
        if trial % 4:  # three chunks in four carry one odd value (or an odd line)
            k = int(rng.integers(len(lines)))
            fields = lines[k].split(",")
            if rng.random() < 0.1:
                lines[k] = rng.choice(["", "   ", lines[k] + "\r", lines[k] + ",", lines[k].replace(",", ";", 1)])
            else:
                fields[int(rng.integers(len(fields)))] = str(rng.choice(_ODD_VALUES))
                lines[k] = ",".join(fields)
        raw = [line.encode("utf-8") for line in lines]
        fast, slow = fmt.parse_chunk(raw), _slow_table(fmt, raw)
        if fast is None:
            stepped_aside += 1
            continue
        taken += 1
        assert slow is not None, f"the fast path accepted a chunk with a malformed line: {lines}"
        assert fast.equals(slow), f"{lines}\n{fast.to_pylist()}\n{slow.to_pylist()}"
    assert taken >= 60 and stepped_aside >= 60  # both ways were exercised
    # Plain well-formed chunks always take it.
    assert fmt.parse_chunk([_good_line(fmt, rng).encode() for _ in range(100)]) is not None


def test_a_chunk_with_an_undecodable_line_steps_aside() -> None:
    assert AmazonRatingsCsv().parse_chunk([b"A1,B1,4.0,1019865600", b"A\xff,B1,4.0,1019865600"]) is None
    assert AmazonRatingsCsv().parse_chunk([b"A1,B1,4.0,1019865600"]) is not None
    assert AmazonMetaLine().parse_chunk([b'{"asin": "B1"}']) is None  # no fast path: line by line
