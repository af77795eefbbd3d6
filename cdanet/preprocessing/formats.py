"""The raw formats of the public Amazon and Taobao files: discovery and strict line parsers.

Each parser turns one decoded line into a tuple of its ``columns`` or raises :class:`Malformed`
with a short machine-readable reason; it never guesses. The Beam side (``cdanet.preprocessing.io``)
owns line numbers, decoding, counting and dead letters, so these parsers are plain functions of a
string and are unit-tested without Beam.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from apache_beam.io.filesystems import FileSystems

from cdanet.contract import ITEM_FIELD, USER_FIELD, USER_PROFILE_FIELDS
from cdanet.preprocessing.options import DEFAULT_TIMESTAMP_RANGE, AmazonFieldMapping, PreprocessingError

# ---- malformed-line reasons (the keys of stats.json "malformed" and of the dead letters) --------
UNDECODABLE = "undecodable_bytes"
WRONG_COLUMNS = "wrong_column_count"
EMPTY_ID = "empty_id"
NON_NUMERIC = "non_numeric_field"
RATING_RANGE = "rating_out_of_range"
TIMESTAMP_RANGE = "timestamp_out_of_range"
BROKEN_JSON = "broken_json"
MISSING_FIELD = "missing_field"
INVALID_VALUE = "invalid_value"
#: A parser failure that none of the reasons above names (the safety net of :mod:`.io`): the line still
#: becomes one dead letter, with the exception's type and message as its detail.
PARSER_ERROR = "parser_error"

#: Largest accepted Taobao ``price`` (the real file spans 0.01 .. about 1e8).
MAX_PRICE = 1e10

#: Amazon category file stems of the paper's two domains.
AMAZON_CATEGORIES: Mapping[str, str] = {"movie": "Movies_and_TV", "book": "Books"}
TAOBAO_BEHAVIORS = frozenset({"pv", "buy", "cart", "fav"})


class Malformed(Exception):
    """A line that does not follow its file's format; ``reason`` is one of the constants above."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ---- field helpers -------------------------------------------------------------------------------
def _id(value: Any, name: str) -> str:
    s = "" if value is None else str(value).strip()
    if not s:
        raise Malformed(EMPTY_ID, f"empty {name}")
    return s


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise Malformed(NON_NUMERIC, f"{name}={value!r}")
    if isinstance(value, int):
        return value
    s = str(value).strip()
    try:
        return int(s)
    except ValueError:
        pass
    try:
        f = float(s)
    except ValueError:
        raise Malformed(NON_NUMERIC, f"{name}={s[:40]!r} is not an integer") from None
    if not f.is_integer():
        raise Malformed(NON_NUMERIC, f"{name}={s[:40]!r} is not an integer")
    return int(f)


def _float(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise Malformed(NON_NUMERIC, f"{name}={value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise Malformed(NON_NUMERIC, f"{name}={str(value)[:40]!r} is not a number") from None
    if not math.isfinite(f):
        raise Malformed(NON_NUMERIC, f"{name}={value!r} is not finite")
    return f


def _timestamp(value: Any, name: str, rng: tuple[int, int] = DEFAULT_TIMESTAMP_RANGE, scale: int = 1) -> int:
    """Unix seconds (``value / scale``, floored) within ``[rng[0], rng[1])``."""
    t = _int(value, name) // scale
    if not rng[0] <= t < rng[1]:
        raise Malformed(TIMESTAMP_RANGE, f"{name}={str(value)[:40]} is outside [{rng[0]}, {rng[1]}) unix seconds")
    return t


def _fields(text: str, n: int) -> list[str]:
    parts = text.split(",")
    if len(parts) != n:
        raise Malformed(WRONG_COLUMNS, f"{len(parts)} columns, expected {n}")
    return parts


def _optional(value: str) -> str | None:
    s = value.strip()
    return s or None


def load_record(text: str) -> dict[str, Any]:
    """A JSON object, or a Python dict literal as in the 2014 Amazon metadata (never ``eval``)."""
    try:
        obj = json.loads(text)
    except RecursionError:
        # Nesting deeper than the interpreter's stack: no real record does that, and the literal parser
        # would recurse just as deep.
        raise Malformed(BROKEN_JSON, "nested too deeply (RecursionError)") from None
    except ValueError:  # JSONDecodeError, and ints longer than sys.get_int_max_str_digits()
        try:
            obj = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
            raise Malformed(BROKEN_JSON, f"neither JSON nor a Python literal ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise Malformed(BROKEN_JSON, f"a {type(obj).__name__}, expected an object")
    return obj


def _first(record: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for k in keys:
        v = record.get(k)
        if v not in (None, "", [], {}):
            return v
    return None


def _name(value: Any) -> str | None:
    """A person's name from a string, a list of names or a ``{"name": ...}`` object."""
    if isinstance(value, Mapping):
        value = value.get("name")
    if isinstance(value, (list, tuple)):
        value = next((v for v in value if isinstance(v, str) and v.strip()), None)
    if isinstance(value, str) and value.strip():
        return " ".join(value.split())
    return None


# ---- formats -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LineFormat:
    """A file format: its name (for messages), header (``None`` if headerless) and output columns."""

    name: str
    columns: tuple[tuple[str, pa.DataType], ...]
    header: tuple[str, ...] | None = None

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(n, t) for n, t in self.columns])

    def parse(self, text: str) -> tuple[Any, ...]:
        raise NotImplementedError

    def parse_chunk(self, lines: Sequence[bytes]) -> pa.Table | None:
        """The vectorised fast path of :meth:`parse` over many data lines (no header, no BOM): the table
        that parsing each line gives (``arrow_schema``), or None whenever any line might not be a plain,
        well-formed record; the caller then parses line by line, which stays the definition (dead letters,
        reasons). Formats without a fast path return None."""
        return None


# ---- the vectorised fast path of the CSV formats -------------------------------------------------
# It accepts a chunk only when every value has a form on which the line parsers' Python semantics
# (str.strip, int(), float()) and arrow's agree exactly; anything else falls back to the line parsers.
#: ASCII printable, without leading or trailing whitespace (str.strip() leaves it as it is).
_PLAIN = r"^[!-~](?:[ -~]*[!-~])?$"
#: Integers and plain decimals that int() / float() and arrow's casts read as the same number.
_INTEGER = r"^-?[0-9]{1,18}$"
_DECIMAL = r"^-?[0-9]{1,15}(?:\.[0-9]{1,15})?$"


def _csv_columns(lines: Sequence[bytes], n: int) -> list[pa.Array] | None:
    """The ``n`` comma-separated string columns of ``lines`` (split as ``text.split(",")``), or None."""
    data = b"\n".join(lines)
    if not lines or b"\r" in data:  # the line parsers drop a trailing \r; arrow would end a row there
        return None
    names = [f"c{i}" for i in range(n)]
    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(column_names=names, use_threads=False, block_size=len(data) + 1),
            parse_options=pacsv.ParseOptions(delimiter=",", quote_char=False, escape_char=False,
                                             newlines_in_values=False, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except (pa.ArrowException, ValueError):  # a line with another number of fields, bad UTF-8, ...
        return None
    if table.num_rows != len(lines):
        return None
    return [table.column(i).combine_chunks() for i in range(n)]


def _all(mask: pa.Array) -> bool:
    return bool(pc.all(mask).as_py())


def _fast_id(col: pa.Array) -> pa.Array | None:
    return col if _all(pc.match_substring_regex(col, _PLAIN)) else None


def _fast_optional(col: pa.Array) -> pa.Array | None:
    """``_optional``: "" -> null, plain values as they are."""
    empty = pc.equal(col, "")
    if not _all(pc.or_(empty, pc.match_substring_regex(col, _PLAIN))):
        return None
    return pc.if_else(empty, pa.scalar(None, pa.string()), col)


def _fast_number(col: pa.Array, pattern: str, to: pa.DataType) -> pa.Array | None:
    if not _all(pc.match_substring_regex(col, pattern)):
        return None
    return pc.cast(col, to)


def _within(values: pa.Array, lo: float, hi: float, hi_inclusive: bool) -> bool:
    upper = pc.less_equal(values, hi) if hi_inclusive else pc.less(values, hi)
    return _all(pc.and_(pc.greater_equal(values, lo), upper))


def _fast_timestamp(col: pa.Array, rng: tuple[int, int]) -> pa.Array | None:
    t = _fast_number(col, _INTEGER, pa.int64())
    return t if t is not None and _within(t, rng[0], rng[1], hi_inclusive=False) else None


RATING_COLUMNS = (
    (USER_FIELD, pa.string()), (ITEM_FIELD, pa.string()), ("rating", pa.float64()), ("timestamp", pa.int64()),
)


@dataclass(frozen=True)
class AmazonRatingsCsv(LineFormat):
    """2014 ratings-only CSV, no header: ``user,item,rating,timestamp`` (seconds)."""

    name: str = "Amazon 2014 ratings CSV (user,item,rating,timestamp; no header)"
    columns: tuple[tuple[str, pa.DataType], ...] = RATING_COLUMNS
    rating_range: tuple[float, float] = (0.0, 5.0)
    timestamp_range: tuple[int, int] = DEFAULT_TIMESTAMP_RANGE

    def parse(self, text: str) -> tuple[Any, ...]:
        user, item, rating, ts = _fields(text, 4)
        return (_id(user, "user"), _id(item, "item"), _rating(rating, self.rating_range),
                _timestamp(ts, "timestamp", self.timestamp_range))

    def parse_chunk(self, lines: Sequence[bytes]) -> pa.Table | None:
        cols = _csv_columns(lines, 4)
        if cols is None:
            return None
        rating = _fast_number(cols[2], _DECIMAL, pa.float64())
        if rating is None or not _within(rating, *self.rating_range, hi_inclusive=True):
            return None
        out = [_fast_id(cols[0]), _fast_id(cols[1]), rating, _fast_timestamp(cols[3], self.timestamp_range)]
        return None if any(c is None for c in out) else pa.Table.from_arrays(out, schema=self.arrow_schema)


def _rating(value: Any, rng: tuple[float, float]) -> float:
    r = _float(value, "rating")
    if not rng[0] <= r <= rng[1]:
        raise Malformed(RATING_RANGE, f"rating {r} outside [{rng[0]}, {rng[1]}]")
    return r


@dataclass(frozen=True)
class AmazonReviewJson(LineFormat):
    """Review JSON lines: 2014/2018 (``reviewerID, asin, overall, unixReviewTime`` in seconds) or
    2023 (``user_id, parent_asin|asin, rating, timestamp`` in milliseconds, converted to seconds)."""

    name: str = "Amazon review JSON lines (reviewerID/asin/overall/unixReviewTime or user_id/parent_asin/rating/timestamp)"
    columns: tuple[tuple[str, pa.DataType], ...] = RATING_COLUMNS
    rating_range: tuple[float, float] = (0.0, 5.0)
    item_keys_2023: tuple[str, ...] = ("parent_asin", "asin")
    timestamp_range: tuple[int, int] = DEFAULT_TIMESTAMP_RANGE

    def parse(self, text: str) -> tuple[Any, ...]:
        d = load_record(text)
        if "reviewerID" in d:
            keys = ("reviewerID", "asin", "overall", "unixReviewTime")
            missing = [k for k in keys if k not in d]
            if missing:
                raise Malformed(MISSING_FIELD, f"missing {missing}")
            return (_id(d["reviewerID"], "reviewerID"), _id(d["asin"], "asin"),
                    _rating(d["overall"], self.rating_range),
                    _timestamp(d["unixReviewTime"], "unixReviewTime", self.timestamp_range))
        if "user_id" in d:
            item = _first(d, self.item_keys_2023)
            missing = [k for k in ("rating", "timestamp") if k not in d]
            if item is None:
                missing.append("|".join(self.item_keys_2023))
            if missing:
                raise Malformed(MISSING_FIELD, f"missing {missing}")
            # 2023 timestamps are unix milliseconds; the contract stores seconds.
            return (_id(d["user_id"], "user_id"), _id(item, "parent_asin"), _rating(d["rating"], self.rating_range),
                    _timestamp(d["timestamp"], "timestamp", self.timestamp_range, scale=1000))
        raise Malformed(MISSING_FIELD, "neither reviewerID (2014/2018) nor user_id (2023)")


META_COLUMNS = (
    (ITEM_FIELD, pa.string()), ("title", pa.string()), ("categories", pa.list_(pa.string())),
    ("person", pa.string()),
)


@dataclass(frozen=True)
class AmazonMetaLine(LineFormat):
    """Metadata lines of any dump: 2014 Python dict literals, 2018 / 2023 strict JSON."""

    name: str = "Amazon metadata lines (JSON or Python dict literal with asin/parent_asin)"
    columns: tuple[tuple[str, pa.DataType], ...] = META_COLUMNS
    domain: str = "movie"
    mapping: AmazonFieldMapping = AmazonFieldMapping()

    def parse(self, text: str) -> tuple[Any, ...]:
        d = load_record(text)
        m = self.mapping
        item = _first(d, m.item_id_keys)
        if item is None:
            raise Malformed(EMPTY_ID, f"no item id under {list(m.item_id_keys)}")
        title = _first(d, m.title_keys)
        title = " ".join(str(title).split()) if title is not None else None
        return (_id(item, "asin"), title or None, self.categories(d), self.person(d))

    def categories(self, d: Mapping[str, Any]) -> list[str]:
        raw = _first(d, self.mapping.category_keys)
        if raw is None:
            return []
        paths = raw if isinstance(raw, list) else [raw]
        roots = set(self.mapping.root_categories.get(self.domain, ()))
        out: list[str] = []
        for path in paths:
            for c in (path if isinstance(path, list) else [path]):
                c = " ".join(str(c).split())
                if c and c not in roots and c not in out:
                    out.append(c)
        return out

    def person(self, d: Mapping[str, Any]) -> str | None:
        m = self.mapping
        details = d.get("details")
        if isinstance(details, Mapping):
            wanted = set(m.person_detail_keys.get(self.domain, ()))
            for key, value in details.items():
                if str(key).strip().rstrip(":").strip().lower() in wanted and _name(value):
                    return _name(value)
        for key in (*m.person_top_keys.get(self.domain, ()), *m.person_fallback_keys):
            name = _name(d.get(key))
            if name:
                return name
        return None


@dataclass(frozen=True)
class TaobaoRawSample(LineFormat):
    """Tianchi 56 ``raw_sample.csv``: ``user,time_stamp,adgroup_id,pid,nonclk,clk``."""

    name: str = "Taobao raw_sample.csv"
    header: tuple[str, ...] | None = ("user", "time_stamp", "adgroup_id", "pid", "nonclk", "clk")
    columns: tuple[tuple[str, pa.DataType], ...] = (
        (USER_FIELD, pa.string()), ("timestamp", pa.int64()), (ITEM_FIELD, pa.string()), ("pid", pa.string()),
        ("clk", pa.float64()),
    )
    timestamp_range: tuple[int, int] = DEFAULT_TIMESTAMP_RANGE

    def parse(self, text: str) -> tuple[Any, ...]:
        user, ts, ad, pid, nonclk, clk = _fields(text, 6)
        flags = (_int(nonclk, "nonclk"), _int(clk, "clk"))
        if any(f not in (0, 1) for f in flags):
            raise Malformed(INVALID_VALUE, f"nonclk={flags[0]}, clk={flags[1]}; expected 0 or 1")
        return (_id(user, "user"), _timestamp(ts, "time_stamp", self.timestamp_range), _id(ad, "adgroup_id"), _optional(pid),
                float(flags[1]))

    def parse_chunk(self, lines: Sequence[bytes]) -> pa.Table | None:
        cols = _csv_columns(lines, 6)
        if cols is None:
            return None
        flags = pa.array(["0", "1"])
        if not (_all(pc.is_in(cols[4], value_set=flags)) and _all(pc.is_in(cols[5], value_set=flags))):
            return None
        out = [_fast_id(cols[0]), _fast_timestamp(cols[1], self.timestamp_range), _fast_id(cols[2]),
               _fast_optional(cols[3]), pc.cast(cols[5], pa.float64())]
        return None if any(c is None for c in out) else pa.Table.from_arrays(out, schema=self.arrow_schema)


@dataclass(frozen=True)
class TaobaoAdFeature(LineFormat):
    """Tianchi 56 ``ad_feature.csv``: ``adgroup_id,cate_id,campaign_id,customer,brand,price``.

    ``brand`` is ``NULL`` for unbranded ads (kept as missing -> OOV). ``price`` becomes the
    categorical ``price_bucket`` = floor(log2(price + 1)), a scale-free bucketing of a price range
    that spans eight orders of magnitude.
    """

    name: str = "Taobao ad_feature.csv"
    header: tuple[str, ...] | None = ("adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price")
    columns: tuple[tuple[str, pa.DataType], ...] = (
        (ITEM_FIELD, pa.string()), ("category", pa.string()), ("campaign", pa.string()),
        ("customer", pa.string()), ("brand", pa.string()), ("price_bucket", pa.string()),
    )

    def parse(self, text: str) -> tuple[Any, ...]:
        ad, cate, campaign, customer, brand, price = _fields(text, 6)
        bucket = None
        if price.strip():
            p = _float(price, "price")
            if not 0 <= p <= MAX_PRICE:
                raise Malformed(INVALID_VALUE, f"price={p} is outside [0, {MAX_PRICE:g}]")
            bucket = str(int(math.floor(math.log2(p + 1.0))))
        brand_value = _optional(brand)
        return (_id(ad, "adgroup_id"), _optional(cate), _optional(campaign), _optional(customer),
                None if brand_value == "NULL" else brand_value, bucket)


PROFILE_FIELDS = USER_PROFILE_FIELDS


@dataclass(frozen=True)
class TaobaoUserProfile(LineFormat):
    """Tianchi 56 ``user_profile.csv``; the real header ends in a space and fields may be empty."""

    name: str = "Taobao user_profile.csv"
    header: tuple[str, ...] | None = (
        "userid", "cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level",
        "shopping_level", "occupation", "new_user_class_level",
    )
    columns: tuple[tuple[str, pa.DataType], ...] = (
        (USER_FIELD, pa.string()), *((f, pa.string()) for f in PROFILE_FIELDS),
    )

    def parse(self, text: str) -> tuple[Any, ...]:
        parts = _fields(text, 9)
        values: list[str | None] = []
        for name, raw in zip(self.header[1:], parts[1:], strict=True):  # type: ignore[index]
            v = _optional(raw)
            if v is not None:
                v = str(_int(v, name))  # "1.0" and "1" are the same level
            values.append(v)
        return (_id(parts[0], "userid"), *values)


@dataclass(frozen=True)
class TaobaoUserBehavior(LineFormat):
    """Tianchi 649 ``UserBehavior.csv``, no header: ``user_id,item_id,category_id,behavior_type,timestamp``."""

    name: str = "Taobao UserBehavior.csv (user_id,item_id,category_id,behavior_type,timestamp; no header)"
    columns: tuple[tuple[str, pa.DataType], ...] = (
        (USER_FIELD, pa.string()), (ITEM_FIELD, pa.string()), ("category", pa.string()),
        ("behavior", pa.string()), ("timestamp", pa.int64()),
    )
    timestamp_range: tuple[int, int] = DEFAULT_TIMESTAMP_RANGE

    def parse(self, text: str) -> tuple[Any, ...]:
        user, item, cate, behavior, ts = _fields(text, 5)
        behavior = behavior.strip()
        if behavior not in TAOBAO_BEHAVIORS:
            raise Malformed(INVALID_VALUE, f"behavior_type {behavior[:20]!r} not in {sorted(TAOBAO_BEHAVIORS)}")
        return (_id(user, "user_id"), _id(item, "item_id"), _optional(cate), behavior,
                _timestamp(ts, "timestamp", self.timestamp_range))

    def parse_chunk(self, lines: Sequence[bytes]) -> pa.Table | None:
        cols = _csv_columns(lines, 5)
        if cols is None or not _all(pc.is_in(cols[3], value_set=pa.array(sorted(TAOBAO_BEHAVIORS)))):
            return None
        out = [_fast_id(cols[0]), _fast_id(cols[1]), _fast_optional(cols[2]), cols[3],
               _fast_timestamp(cols[4], self.timestamp_range)]
        return None if any(c is None for c in out) else pa.Table.from_arrays(out, schema=self.arrow_schema)


# ---- discovery -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawFile:
    """One input file of a domain and how to parse it. ``role``: interactions | items | users."""

    path: str
    role: str
    fmt: LineFormat


def _find(input_dir: str, names: Sequence[str]) -> str | None:
    for name in names:
        for candidate in (name, name + ".gz"):
            path = FileSystems.join(input_dir, candidate)
            if FileSystems.exists(path):
                return path
    return None


def amazon_ratings_names(category: str) -> tuple[str, ...]:
    return (f"ratings_{category}.csv", f"reviews_{category}_5.json", f"{category}.json", f"{category}.jsonl")


def amazon_meta_names(category: str) -> tuple[str, ...]:
    return (f"meta_{category}.json", f"meta_{category}.jsonl")


def discover(dataset: str, domain: str, input_dir: str, rating_range: tuple[float, float] = (0.0, 5.0),
             mapping: AmazonFieldMapping | None = None,
             timestamp_range: tuple[int, int] = DEFAULT_TIMESTAMP_RANGE) -> list[RawFile]:
    """The raw files of one domain under ``input_dir`` (plain or ``.gz``), headers checked.

    Amazon ratings files are tried in the order 2014 CSV, 2014 5-core reviews, 2018 reviews,
    2023 reviews; the first present wins (its name goes into the schema metadata).
    """
    mapping = mapping or AmazonFieldMapping()
    if dataset == "amazon":
        cat = AMAZON_CATEGORIES[domain]
        ratings = _find(input_dir, amazon_ratings_names(cat))
        if ratings is None:
            raise PreprocessingError(
                f"no ratings file for domain {domain} in {input_dir}: expected ratings_{cat}.csv[.gz], "
                f"reviews_{cat}_5.json[.gz], {cat}.json[l][.gz]"
            )
        meta = _find(input_dir, amazon_meta_names(cat))
        if meta is None:
            raise PreprocessingError(
                f"no metadata file for domain {domain} in {input_dir}: expected meta_{cat}.json[l][.gz] "
                "(2014 Python-literal lines or 2018/2023 JSON lines)"
            )
        base = ratings.rsplit("/", 1)[-1]
        rfmt: LineFormat = (AmazonRatingsCsv(rating_range=rating_range, timestamp_range=timestamp_range)
                            if base.startswith("ratings_")
                            else AmazonReviewJson(rating_range=rating_range, item_keys_2023=mapping.review_item_keys,
                                                  timestamp_range=timestamp_range))
        files = [RawFile(ratings, "interactions", rfmt),
                 RawFile(meta, "items", AmazonMetaLine(domain=domain, mapping=mapping))]
    elif dataset == "taobao":
        specs = {
            "ad": [("raw_sample.csv", "interactions", TaobaoRawSample(timestamp_range=timestamp_range)),
                   ("ad_feature.csv", "items", TaobaoAdFeature()),
                   ("user_profile.csv", "users", TaobaoUserProfile())],
            "rec": [("UserBehavior.csv", "interactions", TaobaoUserBehavior(timestamp_range=timestamp_range))],
        }[domain]
        files = []
        for name, role, fmt in specs:
            path = _find(input_dir, (name,))
            if path is None:
                expected = ",".join(fmt.header) if fmt.header else fmt.name
                raise PreprocessingError(
                    f"no {name}[.gz] for domain {domain} in {input_dir}: expected {name} with {expected}"
                )
            files.append(RawFile(path, role, fmt))
    else:
        raise PreprocessingError(f"unknown dataset {dataset!r}; expected 'amazon' or 'taobao'")
    for f in files:
        check_header(f)
    return files


def check_header(f: RawFile) -> None:
    """Compare the first line of a headed CSV with its format (names are stripped, as the real
    ``user_profile.csv`` header ends in a space)."""
    if f.fmt.header is None:
        return
    with FileSystems.open(f.path) as fh:
        first = fh.readline()
    text = first.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")
    got = tuple(h.strip() for h in text.split(","))
    if got != f.fmt.header:
        raise PreprocessingError(
            f"{f.path}: header {text[:200]!r} does not match {f.fmt.name}: expected the columns "
            f"{','.join(f.fmt.header)}"
        )
