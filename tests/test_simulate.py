"""The raw-format simulator: formats parse like the real dumps, ground truth, injections, determinism.

Every raw line is read back with the standard library only (csv, json, ast.literal_eval, gzip),
the way a consumer of the real public files would, and checked against ground truth and manifest.
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from cdanet.simulate import (
    SCALES,
    SimulationManifest,
    ground_truth_auc,
    ground_truth_path,
    load_ground_truth,
    load_user_prior,
    resolve_sizes,
    simulate,
    vocab,
)
from cdanet.simulate.__main__ import main
from cdanet.simulate.ids import distinct_ints, isbn10

KCORE = {"movie": 5, "book": 10, "ad": 5, "rec": 10}
PROFILE_HEADER = (
    "userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,shopping_level,"
    "occupation,new_user_class_level "
)
LEAF_TOPIC = {g: t for t, gs in vocab.MOVIE_GENRES.items() for g in gs}
LEAF_TOPIC |= {leaf: t for t, paths in vocab.BOOK_CATEGORIES.items() for _, leaf in paths}


# ---- helpers -------------------------------------------------------------------------------------


def raw_lines(root: str, relpath: str) -> list[bytes]:
    """The file's lines as bytes (no newline), decompressing ``.gz``; the final newline ends a line."""
    path = os.path.join(root, relpath)
    opener: Callable = gzip.open if relpath.endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    assert data.endswith(b"\n"), f"{relpath} must end with a newline"
    return data[:-1].split(b"\n")


def text_lines(root: str, relpath: str) -> list[str]:
    return [b.decode("utf-8") for b in raw_lines(root, relpath)]


def truth(root: str, domain: str) -> dict[str, np.ndarray]:
    t = load_ground_truth(root, domain)
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def kcore(user: np.ndarray, item: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the rows kept by iterative k-core filtering on users and items."""
    u = np.unique(user, return_inverse=True)[1]
    i = np.unique(item, return_inverse=True)[1]
    keep = np.ones(len(user), dtype=bool)
    while True:
        ok = (np.bincount(u, weights=keep)[u] >= k) & (np.bincount(i, weights=keep)[i] >= k)
        if (ok | ~keep).all():
            return keep
        keep &= ok


# ---- strict checkers: a line's defect, or None for a valid row ------------------------------------


def _decode(line: bytes) -> str | None:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _is_int(s: str) -> bool:
    return re.fullmatch(r"-?\d+", s) is not None


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return s.lower() not in {"nan", "inf", "-inf", "infinity"}


def check_csv(n_fields: int, ids: tuple[int, ...], ints: tuple[int, ...], floats: tuple[int, ...] = (),
              optional: tuple[int, ...] = (), in_range: Callable[[list[str]], bool] | None = None,
              range_reason: str = "invalid_value") -> Callable[[bytes], str | None]:
    def check(line: bytes) -> str | None:
        text = _decode(line)
        if text is None:
            return "undecodable_bytes"
        if text == "":
            return "blank"
        fields = next(csv.reader([text]))
        if len(fields) != n_fields:
            return "wrong_column_count"
        if any(fields[i] == "" for i in ids):
            return "empty_id"
        for i in ints:
            if not (_is_int(fields[i]) or (i in optional and fields[i] == "")):
                return "non_numeric_field"
        if any(not _is_float(fields[i]) for i in floats):
            return "non_numeric_field"
        if in_range is not None and not in_range(fields):
            return range_reason
        return None
    return check


def check_records(id_keys: tuple[str, ...], number_key: str | None = None, required: tuple[str, ...] = (),
                  literal: bool = False) -> Callable[[bytes], str | None]:
    def check(line: bytes) -> str | None:
        text = _decode(line)
        if text is None:
            return "undecodable_bytes"
        if text == "":
            return "blank"
        try:
            record = ast.literal_eval(text) if literal else json.loads(text)
        except (ValueError, SyntaxError):
            return "broken_json"
        if not isinstance(record, dict):
            return "broken_json"
        if any(k not in record for k in (*id_keys, *required)):
            return "missing_field"
        if any(not isinstance(record[k], str) or record[k] == "" for k in id_keys):
            return "empty_id"
        if number_key is not None:
            v = record[number_key]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return "non_numeric_field"
            if not 1.0 <= v <= 5.0:
                return "rating_out_of_range"
        return None
    return check


def _rating_ok(fields: list[str]) -> bool:
    return 1.0 <= float(fields[2]) <= 5.0


CHECKERS: dict[str, Callable[[bytes], str | None]] = {
    "ratings_2014csv": check_csv(4, ids=(0, 1), ints=(3,), floats=(2,), in_range=_rating_ok,
                                 range_reason="rating_out_of_range"),
    "meta_2014csv": check_records(("asin",), literal=True),
    "ratings_2018json": check_records(("reviewerID", "asin"), "overall", required=("unixReviewTime",)),
    "meta_2018json": check_records(("asin",)),
    "ratings_2023json": check_records(("user_id", "parent_asin"), "rating", required=("timestamp",)),
    "meta_2023json": check_records(("parent_asin",)),
    "raw_sample": check_csv(6, ids=(0, 2), ints=(0, 1, 2, 4, 5),
                            in_range=lambda f: {f[4], f[5]} == {"0", "1"}),
    "ad_feature": check_csv(6, ids=(0,), ints=(0, 1, 2, 3), floats=(5,),
                            in_range=lambda f: f[4] == "NULL" or _is_int(f[4])),
    "user_profile": check_csv(9, ids=(0,), ints=tuple(range(9)), optional=(5, 8)),
    "UserBehavior": check_csv(5, ids=(0, 1), ints=(0, 1, 2, 4),
                              in_range=lambda f: f[3] in {"pv", "buy", "cart", "fav"}),
}


def checker_for(relpath: str, fmt: str) -> Callable[[bytes], str | None]:
    name = os.path.basename(relpath).split(".")[0]
    if relpath.startswith("taobao/"):
        return CHECKERS[name]
    return CHECKERS[f"{'meta' if name.startswith('meta_') else 'ratings'}_{fmt}"]


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("tiny"))
    simulate(root, scale="tiny", seed=0)
    return root


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("small"))
    simulate(root, scale="small", seed=0)
    return root


@pytest.fixture(scope="module", params=["2018json", "2023json"])
def amazon_json(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = str(tmp_path_factory.mktemp(request.param))
    simulate(root, dataset="amazon", scale="tiny", seed=0, amazon_format=request.param)
    return root, request.param


# ---- formats -------------------------------------------------------------------------------------


def test_amazon_2014_ratings_are_headerless_csv_matching_ground_truth(tiny: str) -> None:
    for domain, cat in (("movie", "Movies_and_TV"), ("book", "Books")):
        rows = list(csv.reader(text_lines(tiny, f"amazon/ratings_{cat}.csv")))
        gt = truth(tiny, domain)
        assert all(len(r) == 4 for r in rows)
        assert _is_float(rows[0][2]) and _is_int(rows[0][3]), "no header line"
        users, items, ratings, stamps = zip(*rows, strict=True)
        ratings_f = np.array(ratings, dtype=float)
        assert set(ratings) <= {"1.0", "2.0", "3.0", "4.0", "5.0"}
        np.testing.assert_array_equal(np.array(users), gt["user"])
        np.testing.assert_array_equal(np.array(items), gt["item"])
        np.testing.assert_array_equal(np.array(stamps, dtype=np.int64), gt["timestamp"])
        np.testing.assert_array_equal((ratings_f > 3).astype(np.int64), gt["label"])
        assert (gt["timestamp"] % 86_400 == 0).all(), "2014 review times are whole days"
        assert len(set(zip(users, items, strict=True))) == len(rows), "a user rates an item once"
        if domain == "book":
            assert all(re.fullmatch(r"\d{9}[\dX]", i) for i in items)
        else:
            assert all(re.fullmatch(r"B0[0-9A-Z]{8}", i) for i in items)


def test_amazon_2014_meta_is_python_literals_with_recoverable_fields(tiny: str) -> None:
    for domain, cat, root in (("movie", "Movies_and_TV", "Movies & TV"), ("book", "Books", "Books")):
        lines = text_lines(tiny, f"amazon/meta_{cat}.json")
        records = [ast.literal_eval(line) for line in lines]
        assert all(line.startswith("{'asin': '") for line in lines), "single-quoted Python dicts"
        # Titles with an apostrophe are written with double quotes, as Python's repr does.
        assert any("'title': \"" in line and "'s" in line for line in lines)
        for r in records:
            path = r["categories"][0]
            assert path[0] == root and path[-1] in LEAF_TOPIC
            assert r["salesRank"] == {root: r["salesRank"][root]}
        with_brand = sum("brand" in r for r in records) / len(records)
        assert 0.9 < with_brand < 1.0, "a few items lack a director/writer, as in the real dump"
        rated = set(truth(tiny, domain)["item"])
        missing = len(rated - {r["asin"] for r in records}) / len(rated)
        assert 0.0 < missing < 0.1, f"a few % of rated items have no metadata line, got {missing:.3f}"


def test_amazon_json_formats(amazon_json: tuple[str, str]) -> None:
    root, fmt = amazon_json
    ext = "json" if fmt == "2018json" else "jsonl"
    for domain, cat, role in (("movie", "Movies_and_TV", "Director"), ("book", "Books", "Author")):
        reviews = [json.loads(line) for line in text_lines(root, f"amazon/{cat}.{ext}")]
        meta = [json.loads(line) for line in text_lines(root, f"amazon/meta_{cat}.{ext}")]
        gt = truth(root, domain)
        if fmt == "2018json":
            assert set(reviews[0]) >= {"reviewerID", "asin", "overall", "unixReviewTime", "reviewTime", "verified",
                                       "reviewText", "summary"}
            stamps = np.array([r["unixReviewTime"] for r in reviews])
            day = datetime.fromtimestamp(reviews[0]["unixReviewTime"], tz=timezone.utc)
            assert reviews[0]["reviewTime"] == f"{day.month:02d} {day.day}, {day.year}"
            ids = [r["asin"] for r in reviews]
            ratings = np.array([r["overall"] for r in reviews])
            for m in meta:
                assert m["category"][0] == m["main_cat"] and m["category"][-1] in LEAF_TOPIC
                assert m.get("brand") == m["details"].get(f"{role}:")
        else:
            stamps_ms = np.array([r["timestamp"] for r in reviews])
            assert (stamps_ms >= 946_684_800_000).all(), "2023 timestamps are in milliseconds (>= year 2000)"
            stamps = stamps_ms // 1000
            ids = [r["parent_asin"] for r in reviews]
            ratings = np.array([r["rating"] for r in reviews])
            assert any(r["asin"] != r["parent_asin"] for r in reviews), "some reviews name a variant asin"
            for m in meta:
                assert m["categories"][-1] in LEAF_TOPIC
                assert m["store"] == m["details"].get(role)
            assert len(reviews[0]["user_id"]) == 28
        assert ratings.dtype == np.float64 and ((ratings >= 1) & (ratings <= 5)).all()
        np.testing.assert_array_equal(stamps, gt["timestamp"])
        np.testing.assert_array_equal(np.array(ids), gt["item"])
        np.testing.assert_array_equal((ratings > 3).astype(np.int64), gt["label"])


def test_taobao_files_match_the_tianchi_formats(tiny: str) -> None:
    assert raw_lines(tiny, "taobao/user_profile.csv")[0].decode() == PROFILE_HEADER  # trailing space kept
    with open(os.path.join(tiny, "taobao/raw_sample.csv"), newline="") as fh:
        samples = list(csv.DictReader(fh))
    with open(os.path.join(tiny, "taobao/ad_feature.csv"), newline="") as fh:
        ads = list(csv.DictReader(fh))
    with open(os.path.join(tiny, "taobao/user_profile.csv"), newline="") as fh:
        profiles = list(csv.DictReader(fh))
    assert list(samples[0]) == ["user", "time_stamp", "adgroup_id", "pid", "nonclk", "clk"]
    assert all(int(s["clk"]) == 1 - int(s["nonclk"]) for s in samples)
    assert {s["pid"] for s in samples} == {"430548_1007", "430539_1007"}
    assert "new_user_class_level " in profiles[0], "DictReader keys keep the header's trailing space"
    assert any(a["brand"] == "NULL" for a in ads) and all(float(a["price"]) > 0 for a in ads)
    assert any(p["pvalue_level"] == "" for p in profiles)
    assert any(p["new_user_class_level "] == "" for p in profiles)
    assert {s["adgroup_id"] for s in samples} <= {a["adgroup_id"] for a in ads}
    profiled = {p["userid"] for p in profiles}
    sample_users = {s["user"] for s in samples}
    assert profiled <= sample_users and sample_users - profiled, "some raw_sample users have no profile row"

    gt = truth(tiny, "ad")
    np.testing.assert_array_equal(np.array([s["user"] for s in samples]), gt["user"])
    np.testing.assert_array_equal(np.array([int(s["clk"]) for s in samples]), gt["label"])

    behavior = list(csv.reader(text_lines(tiny, "taobao/UserBehavior.csv")))
    assert all(len(r) == 5 for r in behavior) and behavior[0][0].isdigit(), "no header"
    assert {r[3] for r in behavior} == {"pv", "buy", "cart", "fav"}
    gt = truth(tiny, "rec")
    np.testing.assert_array_equal(np.array([r[3] == "buy" for r in behavior], dtype=np.int64), gt["label"])
    np.testing.assert_array_equal(np.array([int(r[4]) for r in behavior]), gt["timestamp"])


def test_glove_has_one_dimension_and_covers_title_words(tiny: str) -> None:
    lines = text_lines(tiny, "glove/glove.sim.50d.txt")
    dims = {len(line.split(" ")) - 1 for line in lines}
    assert dims == {50}, f"every line must have the inferred dimension, found {dims}"
    assert all(re.fullmatch(r"-?\d+\.\d{5}", v) for v in lines[0].split(" ")[1:])
    vectors = {line.split(" ", 1)[0]: np.array(line.split(" ")[1:], dtype=float) for line in lines}
    assert len(vectors) == len(lines) > 1000, "unique words plus distractors"
    tokens = Counter()
    for cat in ("Movies_and_TV", "Books"):
        for line in text_lines(tiny, f"amazon/meta_{cat}.json"):
            tokens.update(re.findall(r"[a-z0-9]+", ast.literal_eval(line)["title"].lower()))
    covered = sum(c for t, c in tokens.items() if t in vectors) / sum(tokens.values())
    assert 0.85 < covered < 1.0, f"title tokens in GloVe: {covered:.3f} (a few invented names are OOV)"


def test_glove_dimension_is_configurable(tmp_path: pytest.TempPathFactory) -> None:
    root = str(tmp_path)
    simulate(root, dataset="amazon", scale="tiny", glove_dim=7, glove_words=10)
    lines = text_lines(root, "glove/glove.sim.7d.txt")
    assert {len(line.split(" ")) for line in lines} == {8}


# ---- planted structure ---------------------------------------------------------------------------


def _title_topic_centroids(root: str, cat: str, vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sums: dict[str, list[np.ndarray]] = {}
    for line in text_lines(root, f"amazon/meta_{cat}.json"):
        record = ast.literal_eval(line)
        words = [vectors[t] for t in re.findall(r"[a-z0-9]+", record["title"].lower()) if t in vectors]
        sums.setdefault(LEAF_TOPIC[record["categories"][0][-1]], []).append(np.mean(words, axis=0))
    return {t: np.mean(v, axis=0) for t, v in sums.items()}


def test_title_vectors_align_topics_across_domains(tiny: str) -> None:
    lines = text_lines(tiny, "glove/glove.sim.50d.txt")
    vectors = {line.split(" ", 1)[0]: np.array(line.split(" ")[1:], dtype=float) for line in lines}
    movie = _title_topic_centroids(tiny, "Movies_and_TV", vectors)
    book = _title_topic_centroids(tiny, "Books", vectors)
    for topic, m in movie.items():
        sims = {t: m @ b / (np.linalg.norm(m) * np.linalg.norm(b)) for t, b in book.items()}
        assert max(sims, key=sims.get) == topic, f"movie topic {topic} is closest to book topic {max(sims, key=sims.get)}"


def test_oracle_auc_and_shared_users(tiny: str) -> None:
    manifest = SimulationManifest.load(tiny)
    for domain in ("movie", "book", "ad", "rec"):
        assert ground_truth_auc(tiny, domain) > 0.7
    for dataset, (target, source) in (("amazon", ("movie", "book")), ("taobao", ("ad", "rec"))):
        t_users, s_users = set(truth(tiny, target)["user"]), set(truth(tiny, source)["user"])
        shared = len(t_users & s_users)
        assert shared == manifest.shared_users[dataset]
        assert 0.4 < shared / len(t_users) < 0.8, "default overlap is about 60 % of target users"


def test_ground_truth_logit_decomposes_into_offset_taste_and_activity(tiny: str) -> None:
    """``logit(p_click) = offset + a * taste[user, topic] + c * activity[user]`` on every row."""
    for dataset, domains in (("amazon", ("movie", "book")), ("taobao", ("ad", "rec"))):
        users = load_user_prior(tiny, dataset).to_pandas()
        index = {u: i for i, u in enumerate(users["user"])}
        taste, activity = np.stack(users["taste"].to_numpy()), users["activity"].to_numpy()
        mean, sd = np.stack(users["prior_mean"].to_numpy()), np.stack(users["prior_sd"].to_numpy())
        assert taste.shape == mean.shape == sd.shape and taste.shape[1] == 8
        # The drawn tastes are consistent with their priors (z-scores of a standard normal).
        z = (taste - mean) / sd
        assert abs(z.mean()) < 0.1 and 0.85 < z.std() < 1.15
        for domain in domains:
            gt = pq.read_table(ground_truth_path(tiny, domain)).to_pandas()
            u = gt["user"].map(index).to_numpy()
            assert not np.isnan(u.astype(float)).any()
            logit = (gt["offset"] + gt["taste_weight"] * taste[u, gt["topic"]]
                     + gt["activity_weight"] * activity[u]).to_numpy()
            np.testing.assert_allclose(1 / (1 + np.exp(-logit)), gt["p_click"], rtol=0, atol=1e-12)
            assert gt["topic"].between(0, 7).all() and gt["offset"].std() > 0.3
    amazon = load_user_prior(tiny, "amazon").to_pandas()
    assert len({tuple(m) for m in amazon["prior_mean"]}) == 1 and (np.stack(amazon["prior_sd"]) == 1).all()
    # Taobao: a profile row reveals the demographic prototype; without one the prior is the wider mixture.
    taobao = load_user_prior(tiny, "taobao").to_pandas()
    profiled = {line.split(",")[0] for line in text_lines(tiny, "taobao/user_profile.csv")[1:]}
    known = taobao["user"].isin(profiled).to_numpy()
    sd = np.stack(taobao["prior_sd"].to_numpy())
    assert known.any() and (~known).any()
    assert (sd[known] == 0.75).all() and (sd[~known] > 0.75).all()
    with pytest.raises(FileNotFoundError, match="simulate again"):
        load_user_prior(os.path.join(tiny, "amazon"), "amazon")


def test_source_domain_behaviour_predicts_the_target(small: str) -> None:
    """Per-(user, topic) click rates learned on books alone rank the same users' movie rows."""
    def item_topics(cat: str) -> dict[str, str]:
        out = {}
        for line in text_lines(small, f"amazon/meta_{cat}.json"):
            r = ast.literal_eval(line)
            out[r["asin"]] = LEAF_TOPIC[r["categories"][0][-1]]
        return out
    movie_topic, book_topic = item_topics("Movies_and_TV"), item_topics("Books")
    book, movie = truth(small, "book"), truth(small, "movie")
    prior = book["label"].mean()
    stats: dict[tuple[str, str], list[int]] = {}
    for u, i, y in zip(book["user"], book["item"], book["label"], strict=True):
        if i in book_topic:
            s = stats.setdefault((u, book_topic[i]), [0, 0])
            s[0], s[1] = s[0] + y, s[1] + 1
    book_users = set(book["user"])
    scores, labels = [], []
    for u, i, y in zip(movie["user"], movie["item"], movie["label"], strict=True):
        if u in book_users and i in movie_topic:
            pos, n = stats.get((u, movie_topic[i]), (0, 0))
            scores.append((pos + 2 * prior) / (n + 2))
            labels.append(y)
    assert roc_auc_score(labels, scores) > 0.62


def test_positive_rates_at_small_scale(small: str) -> None:
    manifest = SimulationManifest.load(small)
    for domain, (lo, hi) in {"movie": (0.17, 0.23), "book": (0.17, 0.23), "ad": (0.05, 0.07), "rec": (0.05, 0.07)}.items():
        rate = manifest.domains[domain]["positive_rate"]
        assert lo <= rate <= hi, f"{domain}: positive rate {rate}"
        assert rate == pytest.approx(truth(small, domain)["label"].mean(), abs=1e-6)


def test_target_is_sparse_and_kcore_removes_a_minority(small: str) -> None:
    manifest = SimulationManifest.load(small)
    for target, source in (("movie", "book"), ("ad", "rec")):
        t, s = manifest.domains[target], manifest.domains[source]
        assert s["rows"] > 3 * t["rows"] and s["rows"] / s["users"] > 2 * t["rows"] / t["users"]
    for domain, k in KCORE.items():
        gt = truth(small, domain)
        removed = 1 - kcore(gt["user"], gt["item"], k).mean()
        assert 0.05 < removed < 0.4, f"{domain}: {k}-core removes {removed:.1%} of rows"


@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_survives_kcore_with_both_classes_in_every_split(tmp_path: pytest.TempPathFactory, seed: int) -> None:
    root = str(tmp_path)
    simulate(root, scale="tiny", seed=seed)
    for domain, k in KCORE.items():
        gt = truth(root, domain)
        keep = kcore(gt["user"], gt["item"], k)
        order = np.argsort(gt["timestamp"][keep], kind="stable")
        labels = gt["label"][keep][order]
        assert len(labels) >= 500, f"{domain}: only {len(labels)} rows after {k}-core"
        a, b = int(0.8 * len(labels)), int(0.9 * len(labels))
        for name, part in (("train", labels[:a]), ("validation", labels[a:b]), ("test", labels[b:])):
            assert 0 < part.sum() < len(part), f"{domain} {name} split lacks a class (seed {seed})"


# ---- malformed lines, duplicates, manifest --------------------------------------------------------


@pytest.mark.parametrize("fmt,compress", [("2014csv", False), ("2018json", True), ("2023json", False)])
def test_injected_malformed_lines_match_a_strict_checker(tmp_path: pytest.TempPathFactory, fmt: str,
                                                         compress: bool) -> None:
    root = str(tmp_path)
    dataset = "both" if fmt == "2014csv" else "amazon"
    manifest = simulate(root, dataset=dataset, scale="tiny", amazon_format=fmt, malformed_fraction=0.03,
                        duplicate_fraction=0.02, gzip=compress)
    raw_files = [p for p in manifest.files if not p.startswith("glove/")]
    assert len(raw_files) == (8 if dataset == "both" else 4)
    for relpath in raw_files:
        info = manifest.files[relpath]
        assert relpath.endswith(".gz") == (compress and relpath.startswith("amazon/"))
        lines = raw_lines(root, relpath)
        assert len(lines) == info["lines"]
        body = lines[1:] if info["header"] else lines
        check = checker_for(relpath.removesuffix(".gz"), fmt)
        verdicts = [check(line) for line in body]
        found = Counter(v for v in verdicts if v is not None)
        assert dict(found) == manifest.malformed_injected[relpath], relpath
        if sum(found.values()) >= 8:  # enough lines for every reason of the file's kind
            assert set(found) >= {"blank", "undecodable_bytes", "empty_id"}, relpath
        valid = [line for line, v in zip(body, verdicts, strict=True) if v is None]
        assert len(valid) == info["data_rows"] + info["duplicates"]
        assert len(valid) - len(set(valid)) == manifest.duplicates_injected.get(relpath, 0) == info["duplicates"]
        assert info["lines"] == info["header"] + info["data_rows"] + info["duplicates"] + sum(found.values())
    assert manifest.duplicates_injected, "interaction files carry exact duplicates"
    assert not any("meta_" in p or "profile" in p or "ad_feature" in p for p in manifest.duplicates_injected)


def test_clean_files_have_no_injections(tiny: str) -> None:
    manifest = SimulationManifest.load(tiny)
    assert manifest.malformed_injected == {} and manifest.duplicates_injected == {}
    for relpath, info in manifest.files.items():
        assert len(raw_lines(tiny, relpath)) == info["lines"] == info["header"] + info["data_rows"]


def _digests(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def test_same_seed_gives_byte_identical_files(tmp_path: pytest.TempPathFactory) -> None:
    kwargs = {"scale": "tiny", "seed": 7, "malformed_fraction": 0.02, "duplicate_fraction": 0.01, "gzip": True}
    a, b, c = (str(tmp_path / x) for x in "abc")
    simulate(a, **kwargs)
    simulate(b, **kwargs)
    simulate(c, **{**kwargs, "seed": 8})
    first = _digests(a)
    assert len(first) == 16 and first == _digests(b)
    differ = {p for p, h in _digests(c).items() if first.get(p) != h}
    assert differ >= set(first) - {"manifest.json"}


def test_a_dataset_does_not_depend_on_the_other(tmp_path: pytest.TempPathFactory, tiny: str) -> None:
    root = str(tmp_path)
    simulate(root, dataset="amazon", scale="tiny", seed=0)
    alone, together = _digests(root), _digests(tiny)
    shared = [p for p in alone if p != "manifest.json"]
    assert shared and all(alone[p] == together[p] for p in shared)
    assert not os.path.exists(os.path.join(root, "taobao"))


# ---- API and CLI ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,message", [
    ({"dataset": "movielens"}, "expected one of ['amazon', 'taobao', 'both']"),
    ({"scale": "huge"}, "expected one of ['medium', 'movie', 'paper', 'small', 'tiny']"),
    ({"amazon_format": "2016csv"}, "expected one of ['2014csv', '2018json', '2023json']"),
    ({"malformed_fraction": -0.1}, "malformed_fraction must be in [0, 0.5)"),
    ({"duplicate_fraction": 0.7}, "duplicate_fraction must be in [0, 0.5)"),
    ({"glove_dim": 0}, "glove_dim must be a positive int"),
    ({"movie_rowz": 10}, "unknown size overrides ['movie_rowz']"),
    ({"movie_rows": 10}, "movie_rows=10 is below movie_users=220"),
])
def test_bad_arguments_are_rejected_before_writing(tmp_path: pytest.TempPathFactory, kwargs: dict,
                                                   message: str) -> None:
    root = str(tmp_path / "out")
    with pytest.raises(ValueError) as err:
        simulate(root, **{"scale": "tiny", **kwargs})
    assert message in str(err.value)
    assert not os.path.exists(os.path.join(root, "manifest.json"))


def test_size_overrides() -> None:
    sizes = resolve_sizes("tiny", {"n_users": 100, "movie_rows": 900, "user_overlap": 0.5})
    assert (sizes.movie_users, sizes.rec_users, sizes.movie_rows) == (100, 100, 900)
    assert sizes.shared_users("amazon") == 50
    assert resolve_sizes("paper").movie_rows > 2_000_000 and set(SCALES) == {"tiny", "small", "medium", "movie", "paper"}
    with pytest.raises(ValueError, match="whole number"):
        resolve_sizes("tiny", {"movie_rows": 1000.5})


def test_overrides_change_the_written_sizes(tmp_path: pytest.TempPathFactory) -> None:
    manifest = simulate(str(tmp_path), dataset="taobao", scale="tiny", ad_users=50, ad_rows=600, user_overlap=1.0)
    assert manifest.domains["ad"]["users"] == 50 and 550 <= manifest.domains["ad"]["rows"] <= 600
    assert manifest.shared_users["taobao"] == 50
    assert set(manifest.domains) == {"ad", "rec"} and not any(p.startswith("glove/") for p in manifest.files)


def test_ground_truth_schema_and_errors(tiny: str, tmp_path: pytest.TempPathFactory) -> None:
    schema = pq.read_schema(os.path.join(tiny, "ground_truth", "movie.parquet"))
    assert [(f.name, str(f.type)) for f in schema] == [
        ("user", "string"), ("item", "string"), ("timestamp", "int64"), ("p_click", "double"), ("label", "int64"),
        ("topic", "int64"), ("offset", "double"), ("taste_weight", "double"), ("activity_weight", "double"),
    ]
    with pytest.raises(ValueError, match="unknown domain 'music'"):
        ground_truth_auc(tiny, "music")
    with pytest.raises(FileNotFoundError, match="no ground truth for domain 'movie'"):
        ground_truth_auc(str(tmp_path), "movie")


def test_manifest_round_trip(tiny: str) -> None:
    manifest = SimulationManifest.load(tiny)
    with open(os.path.join(tiny, "manifest.json")) as fh:
        assert json.load(fh) == manifest.to_dict()
    assert manifest.domains["movie"]["files"]["ratings"] == "amazon/ratings_Movies_and_TV.csv"
    assert manifest.domains["ad"]["files"]["user_profile"] == "taobao/user_profile.csv"
    assert manifest.domains["movie"]["label_rule"] == "rating > 3"
    assert manifest.sizes == resolve_sizes("tiny").to_dict()
    assert manifest.formats == {"amazon": "2014csv", "glove": "glove-text", "taobao": "tianchi-56+649"}


def test_manifest_load_names_the_broken_file(tmp_path: pytest.TempPathFactory) -> None:
    with pytest.raises(FileNotFoundError, match="not a cdanet.simulate output folder"):
        SimulationManifest.load(str(tmp_path))
    path = tmp_path / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        SimulationManifest.load(str(tmp_path))
    path.write_text(json.dumps({"version": 1, "seed": 0}))
    with pytest.raises(ValueError, match="does not have the fields of a simulation manifest"):
        SimulationManifest.load(str(tmp_path))


def test_cli_writes_and_summarises(tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "cli")
    assert main(["--output", root, "--dataset", "taobao", "--scale", "tiny", "--seed", "3",
                 "--malformed-fraction", "0.01", "--size", "rec_rows=9000"]) == 0
    out = capsys.readouterr().out
    assert "ad " in out and "oracle AUC" in out and "malformed" in out
    manifest = SimulationManifest.load(root)
    assert (manifest.seed, manifest.dataset, manifest.sizes["rec_rows"]) == (3, "taobao", 9000)
    assert main(["--output", root, "--scale", "tiny", "--size", "bogus=1"]) == 2
    with pytest.raises(SystemExit):
        main(["--output", root, "--scale", "galactic"])


def test_ids_are_distinct_and_isbns_valid() -> None:
    rng = np.random.default_rng(0)
    values = distinct_ints(rng, 5000, 0, 10**9)
    assert len(np.unique(values)) == 5000
    for isbn in isbn10(values[:200]).tolist():
        digits = [10 if c == "X" else int(c) for c in isbn]
        assert sum((10 - k) * d for k, d in enumerate(digits)) % 11 == 0
    assert len(np.unique(distinct_ints(rng, 90, 10, 100))) == 90
    with pytest.raises(ValueError, match="cannot draw"):
        distinct_ints(rng, 10, 0, 5)
