"""Amazon review dumps (movie = Movies_and_TV, book = Books) in the 2014, 2018 and 2023 formats.

Files (``<Cat>`` is ``Movies_and_TV`` or ``Books``)::

    2014csv   amazon/ratings_<Cat>.csv    user,item,rating,timestamp (no header, seconds at day precision)
              amazon/meta_<Cat>.json      one Python dict literal per line (ast.literal_eval)
    2018json  amazon/<Cat>.json           JSON lines: reviewerID, asin, overall, unixReviewTime, ...
              amazon/meta_<Cat>.json      JSON lines: asin, title, category, main_cat, brand, details
    2023json  amazon/<Cat>.jsonl          JSON lines: user_id, parent_asin, asin, rating, timestamp (ms)
              amazon/meta_<Cat>.jsonl     JSON lines: parent_asin, title, categories, details, store

Where the paper's fields live (the same in every format):

* genre (movie) / category (book): the LAST element of the category path, which is root first:
  ``["Movies & TV", "Movies", "Science Fiction"]``, ``["Books", "Science Fiction & Fantasy", "Science
  Fiction"]`` (2014: the first and only list in ``categories``; 2018: ``category``; 2023: ``categories``).
* director (movie) / writer (book): 2014 ``brand``; 2018 ``brand`` and ``details["Director:"]`` /
  ``details["Author:"]``; 2023 ``store`` and ``details["Director"]`` / ``details["Author"]``. About 3 %
  of items have no director/writer (the keys are absent), and about 3 % of items have no metadata
  line at all, as in the real dumps.
* title: ``title``. Lowercased and split into runs of letters it yields GloVe words, except for
  invented character names (realistic out-of-vocabulary words).
* label: ``rating > 3`` (ratings are 1.0-5.0 and derived from the sampled click label).
* item id: ``asin`` (2014/2018) or ``parent_asin`` (2023; ``asin`` is sometimes a variant of it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from cdanet.simulate import vocab
from cdanet.simulate.glove import build_vectors, format_lines, pseudo_words
from cdanet.simulate.ids import BASE32, BASE36, distinct_ints, encode, isbn10, prefixed
from cdanet.simulate.rawfile import CsvLayout, JsonLayout, TextTable
from cdanet.simulate.sizes import SimulationSizes
from cdanet.simulate.world import (
    Catalog,
    ClickModel,
    ExposureModel,
    Interactions,
    Population,
    calibrate_bias,
    child_rng,
    click_logits,
    draw_exposures,
    known_offset,
    sample_in_groups,
    sample_labels,
    split_users,
)

AMAZON_FORMATS: tuple[str, ...] = ("2014csv", "2018json", "2023json")
CATEGORY_FILE_NAMES: dict[str, str] = {"movie": "Movies_and_TV", "book": "Books"}
ROOTS: dict[str, str] = {"movie": "Movies & TV", "book": "Books"}

_DAY = 86_400
_T0 = 946_684_800  # 2000-01-01
#: Last review time of each dump.
_T1 = {"2014csv": 1_406_073_600, "2018json": 1_538_352_000, "2023json": 1_693_526_400}

CLICK = ClickModel(target_rate=0.20)
EXPOSURE = ExposureModel()
_NO_META = 0.03
_NO_PERSON = 0.03
_VARIANT = 0.05  # 2023: share of items whose rows sometimes name a variant asin
_BAD_RATINGS = (7.5, -1.0, 6.0, 10.0)

_MOVIE_TEMPLATES = (
    "{A} {B}", "The {A} {N}", "{A} of the {B}", "{A} {B}: Season {n}", "{A} {N} (Special Edition)",
    "{Name}'s {A}", "{A} {B} {n}", "The {A} {B} Collection", '"{A}" {B}', "{N} {A} (Director's Cut)",
)
_BOOK_TEMPLATES = (
    "{A} {B}: A Novel", "The {A} {N}", "{A} of {B} ({Name} Chronicles Book {n})", "{Name}'s {A}",
    "{A} and the {B}", "{A} {B}: Stories", "The {A} of {Name}", "{N} {A}, Volume {n}",
    '"{A}" and Other Tales', "A {A} {B} Guide",
)
#: Template weights: the quoted-title templates are rare, as in the real catalogues.
_TEMPLATE_P = np.array([0.16, 0.14, 0.12, 0.1, 0.1, 0.1, 0.1, 0.1, 0.02, 0.06])


@dataclass
class AmazonItems:
    """Items of one domain with their metadata (all arrays/lists of length I)."""

    catalog: Catalog
    parent_id: np.ndarray  # str: asin (2014/2018) or parent_asin (2023)
    variant_id: np.ndarray  # str: the asin a 2023 review row may name instead (== parent for most)
    title: list[str]
    path: list[list[str]]  # category path, root first; the leaf is the genre / category
    person: list[str | None]  # director / writer
    has_meta: np.ndarray  # bool
    sales_rank: np.ndarray  # int
    price: np.ndarray  # float, NaN when unknown


@dataclass
class AmazonDomainData:
    """One domain's rows in file order, plus what rendering needs."""

    domain: str
    items: AmazonItems
    rows: Interactions
    p_click: np.ndarray
    label: np.ndarray
    rating: np.ndarray  # int 1..5
    seconds: np.ndarray  # int64 unix seconds (ground truth timestamp)
    millis: np.ndarray  # int64 (2023 only; seconds * 1000 otherwise)
    use_variant: np.ndarray  # bool: the 2023 row names the variant asin
    offset: np.ndarray  # float64: the ground-truth logit minus the user's taste and activity terms
    click: ClickModel


def _names(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct person names ("First Last" or "First X. Last")."""
    nf, nl = len(vocab.FIRST_NAMES), len(vocab.LAST_NAMES)
    codes = distinct_ints(rng, n, 0, nf * nl * 27)
    out = []
    for c in codes.tolist():
        first, last, initial = vocab.FIRST_NAMES[c % nf], vocab.LAST_NAMES[(c // nf) % nl], c // (nf * nl)
        out.append(f"{first} {chr(64 + initial)}. {last}" if initial else f"{first} {last}")
    return out


def _titles(rng: np.random.Generator, topic: np.ndarray, domain: str, oov_names: list[str]) -> list[str]:
    """One title per item from its topic's words (A, often B), neutral words (N) and OOV names."""
    n = len(topic)
    templates = _MOVIE_TEMPLATES if domain == "movie" else _BOOK_TEMPLATES
    which = rng.choice(len(templates), n, p=_TEMPLATE_P)
    topic_lists = [vocab.TOPIC_WORDS[t] for t in vocab.AMAZON_TOPICS]
    a_pick = rng.integers(0, 1 << 30, n)
    b_pick = rng.integers(0, 1 << 30, n)
    b_topic = rng.random(n) < 0.5
    neutral = rng.integers(0, len(vocab.NEUTRAL_WORDS), (n, 2))
    name = rng.integers(0, len(oov_names), n)
    number = rng.integers(1, 10, n)
    out = []
    for i in range(n):
        words = topic_lists[topic[i]]
        a = words[a_pick[i] % len(words)]
        b = words[b_pick[i] % len(words)] if b_topic[i] else vocab.NEUTRAL_WORDS[neutral[i, 0]]
        if b == a:
            b = vocab.NEUTRAL_WORDS[neutral[i, 0]]
        out.append(templates[which[i]].format(
            A=a.capitalize(), B=b.capitalize(), N=vocab.NEUTRAL_WORDS[neutral[i, 1]].capitalize(),
            Name=oov_names[name[i]], n=number[i],
        ))
    return out


def _items(seed: int, domain: str, n_items: int, oov_names: list[str]) -> AmazonItems:
    rng = child_rng(seed, "amazon", domain, "catalog")
    n_topics = len(vocab.AMAZON_TOPICS)
    catalog = Catalog.draw(rng, n_items, n_topics, EXPOSURE, CLICK)
    rng = child_rng(seed, "amazon", domain, "meta")
    if domain == "movie":
        codes = distinct_ints(rng, 2 * n_items, 0, 36 ** 8)
        parent = prefixed("B0", encode(codes[:n_items], BASE36, 8))
        variant = prefixed("B0", encode(codes[n_items:], BASE36, 8))
    else:
        codes = distinct_ints(rng, 2 * n_items, 0, 10 ** 9)
        parent, variant = isbn10(codes[:n_items]), isbn10(codes[n_items:])
    variant = np.where(rng.random(n_items) < _VARIANT, variant, parent)

    topic_names = [vocab.AMAZON_TOPICS[t] for t in catalog.topic.tolist()]
    leaf_pick = rng.integers(0, 1 << 30, n_items)
    if domain == "movie":
        path = [[*vocab.MOVIE_ROOT, vocab.MOVIE_GENRES[t][p % len(vocab.MOVIE_GENRES[t])]]
                for t, p in zip(topic_names, leaf_pick.tolist(), strict=True)]
    else:
        path = [[vocab.BOOK_ROOT, *vocab.BOOK_CATEGORIES[t][p % len(vocab.BOOK_CATEGORIES[t])]]
                for t, p in zip(topic_names, leaf_pick.tolist(), strict=True)]

    # Directors / writers mostly work in one topic (their "home"), with a prolific few (Zipf).
    n_people = max(n_topics, n_items // 5)
    people = _names(rng, n_people)
    home = rng.permutation(np.arange(n_people) % n_topics)
    prolific = (rng.permutation(n_people) + 1.0) ** -0.7
    person_idx = sample_in_groups(rng, catalog.topic, home, prolific)
    stray = rng.random(n_items) < 0.15
    person_idx[stray] = rng.integers(0, n_people, int(stray.sum()))
    no_person = rng.random(n_items) < _NO_PERSON
    person: list[str | None] = [None if miss else people[j]
                                for j, miss in zip(person_idx.tolist(), no_person.tolist(), strict=True)]
    price = np.where(rng.random(n_items) < 0.7, np.round(rng.uniform(2.0, 40.0, n_items) - 0.01, 2), np.nan)
    return AmazonItems(
        catalog=catalog, parent_id=parent, variant_id=variant,
        title=_titles(rng, catalog.topic, domain, oov_names), path=path, person=person,
        has_meta=rng.random(n_items) >= _NO_META, sales_rank=rng.integers(1, 2_000_000, n_items), price=price,
    )


def _ratings_from_labels(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    """label 1 -> 4 or 5, label 0 -> 1, 2 or 3, so ``rating > 3`` recovers the label exactly."""
    pos = rng.choice([4, 5], len(label), p=[0.45, 0.55])
    neg = rng.choice([1, 2, 3], len(label), p=[0.25, 0.3, 0.45])
    return np.where(label == 1, pos, neg).astype(np.int64)


@dataclass
class AmazonWorld:
    """Both domains, the user ids of the population, and the GloVe vocabulary."""

    fmt: str
    domains: dict[str, AmazonDomainData]
    user_id: np.ndarray  # str [population]
    user_name: list[str]  # JSON-encoded reviewer names [population]
    glove_words: list[str]
    glove_vectors: np.ndarray
    population: Population


def build_world(seed: int, sizes: SimulationSizes, fmt: str, glove_dim: int) -> AmazonWorld:
    """Draw the Amazon population, both catalogues, interactions, labels and the GloVe vocabulary."""
    n_topics = len(vocab.AMAZON_TOPICS)
    target, source, n_pop = split_users(sizes.movie_users, sizes.book_users, sizes.shared_users("amazon"))
    population = Population.draw(child_rng(seed, "amazon", "population"), n_pop, n_topics)

    known = {w for ws in vocab.TOPIC_WORDS.values() for w in ws}
    known |= {*vocab.NEUTRAL_WORDS, *vocab.MOVIE_TEMPLATE_WORDS, *vocab.BOOK_TEMPLATE_WORDS, *vocab.GLUE_TOKENS}
    glove_rng = child_rng(seed, "amazon", "glove")
    invented = pseudo_words(glove_rng, 300 + sizes.glove_words, known)
    oov_names = [w.capitalize() for w in invented[:300]] + list(vocab.ACCENTED_NAMES)

    user_id = _user_ids(seed, n_pop, fmt)
    domains: dict[str, AmazonDomainData] = {}
    for domain, users in (("movie", target), ("book", source)):
        items = _items(seed, domain, sizes.items(domain), oov_names)
        rng = child_rng(seed, "amazon", domain, "rows")
        rows = draw_exposures(rng, users, sizes.rows(domain), population, items.catalog, EXPOSURE)
        rows = click_logits(rng, rows, population, items.catalog, CLICK)
        bias = calibrate_bias(rows.logit, CLICK.target_rate)
        p, label = sample_labels(rng, rows.logit, CLICK.target_rate, bias)
        offset = known_offset(rows, population, items.catalog, CLICK, bias)
        rating = _ratings_from_labels(rng, label)
        exact = _T0 + rows.tau * (_T1[fmt] - _T0)
        if fmt == "2023json":
            millis = np.floor(exact * 1000.0).astype(np.int64)
            seconds = millis // 1000
        else:
            seconds = (np.floor(exact / _DAY) * _DAY).astype(np.int64)
            millis = seconds * 1000
        use_variant = (items.variant_id[rows.item] != items.parent_id[rows.item]) & (rng.random(len(rows)) < 0.5)

        # File order as in the dumps: 2014/2018 grouped by item asin, 2023 grouped by user.
        if fmt == "2023json":
            key_rank = np.empty(n_pop, dtype=np.int64)
            key_rank[np.argsort(user_id, kind="stable")] = np.arange(n_pop)
            order = np.lexsort((millis, key_rank[rows.user]))
        else:
            key_rank = np.empty(len(items.parent_id), dtype=np.int64)
            key_rank[np.argsort(items.parent_id, kind="stable")] = np.arange(len(items.parent_id))
            order = np.lexsort((seconds, key_rank[rows.item]))
        domains[domain] = AmazonDomainData(
            domain=domain, items=items, rows=rows.take(order), p_click=p[order], label=label[order],
            rating=rating[order], seconds=seconds[order], millis=millis[order], use_variant=use_variant[order],
            offset=offset[order], click=CLICK,
        )

    topic_words = {k: vocab.TOPIC_WORDS[t] for k, t in enumerate(vocab.AMAZON_TOPICS)}
    others = sorted(known - {w for ws in topic_words.values() for w in ws}) + invented[300:]
    words, vectors = build_vectors(glove_rng, topic_words, others, n_topics, glove_dim)
    order = glove_rng.permutation(len(words))  # real GloVe files are frequency ordered, not topic ordered
    name_rng = child_rng(seed, "amazon", "reviewer_names")
    first = name_rng.integers(0, len(vocab.FIRST_NAMES), n_pop)
    last = name_rng.integers(0, len(vocab.LAST_NAMES), n_pop)
    user_name = [json.dumps(f"{vocab.FIRST_NAMES[f]} {vocab.LAST_NAMES[m][0]}.")
                 for f, m in zip(first.tolist(), last.tolist(), strict=True)]
    return AmazonWorld(
        fmt=fmt, domains=domains, user_id=user_id, user_name=user_name,
        glove_words=[words[i] for i in order], glove_vectors=vectors[order], population=population,
    )


def _user_ids(seed: int, n: int, fmt: str) -> np.ndarray:
    """Reviewer ids: ``A`` + 12 base-36 chars (2014/2018, like ``AH2L9G3DQHHAJ``) or ``A`` + 27 base-32 chars (2023)."""
    rng = child_rng(seed, "amazon", "user_ids")
    if fmt == "2023json":
        head = encode(distinct_ints(rng, n, 0, 32 ** 12), BASE32, 12)
        tail = encode(rng.integers(0, 32 ** 12, n), BASE32, 12)
        return prefixed("A", np.char.add(np.char.add(head, tail), encode(rng.integers(0, 32 ** 3, n), BASE32, 3)))
    return prefixed("A", encode(distinct_ints(rng, n, 0, 36 ** 12), BASE36, 12))


# ---- rendering ----------------------------------------------------------------------------------


def file_names(fmt: str, domain: str) -> tuple[str, str]:
    """(ratings path, metadata path) relative to the output root, before any ``.gz``."""
    cat = CATEGORY_FILE_NAMES[domain]
    if fmt == "2014csv":
        return f"amazon/ratings_{cat}.csv", f"amazon/meta_{cat}.json"
    if fmt == "2018json":
        return f"amazon/{cat}.json", f"amazon/meta_{cat}.json"
    return f"amazon/{cat}.jsonl", f"amazon/meta_{cat}.jsonl"


def _review_dates(seconds: np.ndarray) -> list[str]:
    """2018 ``reviewTime`` strings such as ``"04 7, 2013"`` (zero-padded month, unpadded day)."""
    day = seconds.astype("datetime64[s]").astype("datetime64[D]")
    month = day.astype("datetime64[M]")
    year = month.astype("datetime64[Y]").astype(np.int64) + 1970
    mon = month.astype(np.int64) % 12 + 1
    dom = (day - month.astype("datetime64[D]")).astype(np.int64) + 1
    return [f"{m:02d} {d}, {y}" for m, d, y in zip(mon.tolist(), dom.tolist(), year.tolist(), strict=True)]


def ratings_table(world: AmazonWorld, domain: str, seed: int) -> TextTable:
    """The review/rating file of ``domain`` as a :class:`TextTable` in the world's format."""
    d, fmt = world.domains[domain], world.fmt
    rng = child_rng(seed, "amazon", domain, "review_text")
    n = len(d.rows)
    text_pick = rng.integers(0, 3, n)
    verified = rng.random(n) < 0.8
    votes = rng.geometric(0.6, n) - 1
    texts = {r: [json.dumps(t) for t in ts] for r, ts in vocab.REVIEW_TEXTS.items()}
    relpath = file_names(fmt, domain)[0]

    def ids(idx: np.ndarray) -> tuple[list[str], list[str]]:
        return world.user_id[d.rows.user[idx]].tolist(), d.items.parent_id[d.rows.item[idx]].tolist()

    if fmt == "2014csv":
        def render(idx: np.ndarray) -> list[str]:
            users, items = ids(idx)
            return [f"{u},{i},{r}.0,{t}" for u, i, r, t in
                    zip(users, items, d.rating[idx].tolist(), d.seconds[idx].tolist(), strict=True)]
        layout: CsvLayout | JsonLayout = CsvLayout(
            n_fields=4, id_field=0, numeric_field=2, range_field=2, range_values=tuple(map(str, _BAD_RATINGS)),
            range_reason="rating_out_of_range")
        return TextTable(relpath, n, render, layout, allow_duplicates=True)

    if fmt == "2018json":
        def render(idx: np.ndarray) -> list[str]:
            users, items = ids(idx)
            names = [world.user_name[u] for u in d.rows.user[idx].tolist()]
            dates = _review_dates(d.seconds[idx])
            return [
                f'{{"overall": {r}.0, "verified": {"true" if v else "false"}, "reviewTime": "{dt}", '
                f'"reviewerID": "{u}", "asin": "{i}", "reviewerName": {nm}, "reviewText": {texts[r][k]}, '
                f'"summary": "{vocab.REVIEW_SUMMARIES[r]}", "unixReviewTime": {t}}}'
                for r, v, dt, u, i, nm, k, t in zip(
                    d.rating[idx].tolist(), verified[idx].tolist(), dates, users, items, names,
                    text_pick[idx].tolist(), d.seconds[idx].tolist(), strict=True)
            ]
        layout = JsonLayout(id_key="reviewerID", numeric_key="overall", range_key="overall",
                            range_values=_BAD_RATINGS, required_key="unixReviewTime")
        return TextTable(relpath, n, render, layout, allow_duplicates=True)

    def render(idx: np.ndarray) -> list[str]:
        users, parents = ids(idx)
        row_items = d.rows.item[idx]
        asins = np.where(d.use_variant[idx], d.items.variant_id[row_items], d.items.parent_id[row_items]).tolist()
        return [
            f'{{"rating": {r}.0, "title": "{vocab.REVIEW_SUMMARIES[r]}", "text": {texts[r][k]}, "images": [], '
            f'"asin": "{a}", "parent_asin": "{p}", "user_id": "{u}", "timestamp": {ms}, '
            f'"helpful_vote": {hv}, "verified_purchase": {"true" if v else "false"}}}'
            for r, k, a, p, u, ms, hv, v in zip(
                d.rating[idx].tolist(), text_pick[idx].tolist(), asins, parents, users,
                d.millis[idx].tolist(), votes[idx].tolist(), verified[idx].tolist(), strict=True)
        ]
    layout = JsonLayout(id_key="user_id", numeric_key="rating", range_key="rating",
                        range_values=_BAD_RATINGS, required_key="timestamp")
    return TextTable(relpath, n, render, layout, allow_duplicates=True)


def _meta_record(fmt: str, domain: str, items: AmazonItems, i: int) -> dict[str, Any]:
    root, person = ROOTS[domain], items.person[i]
    price = float(items.price[i])
    has_price = not np.isnan(price)
    if fmt == "2014csv":
        rec: dict[str, Any] = {"asin": str(items.parent_id[i]), "title": items.title[i]}
        if has_price:
            rec["price"] = price
        rec["salesRank"] = {root: int(items.sales_rank[i])}
        if person is not None:
            rec["brand"] = person
        rec["categories"] = [list(items.path[i])]
        return rec
    role = "Director" if domain == "movie" else "Author"
    if fmt == "2018json":
        details: dict[str, str] = {} if person is None else {f"{role}:": person}
        if domain == "movie":
            details.update({"Format:": "DVD", "Language:": "English"})
        else:
            details.update({"Publisher:": "Simulated Press", "Language:": "English", "ISBN-10:": str(items.parent_id[i])})
        rec = {"category": list(items.path[i]), "description": [], "title": items.title[i]}
        if person is not None:
            rec["brand"] = person
        rec.update({"rank": f"{int(items.sales_rank[i]):,} in {root} (", "main_cat": root, "details": details,
                    "price": f"${price:.2f}" if has_price else "", "asin": str(items.parent_id[i])})
        return rec
    details = {} if person is None else {role: person}
    details["Language"] = "English"
    return {
        "main_category": root, "title": items.title[i], "average_rating": round(float(3 + items.sales_rank[i] % 20 / 10), 1),
        "rating_number": int(items.sales_rank[i] % 997), "features": [], "description": [],
        "price": price if has_price else None, "images": [], "videos": [], "store": person,
        "categories": list(items.path[i]), "details": details, "parent_asin": str(items.parent_id[i]),
        "bought_together": None,
    }


def meta_table(world: AmazonWorld, domain: str) -> TextTable:
    """The metadata file of ``domain``: one line per item that has metadata, sorted by id."""
    fmt, items = world.fmt, world.domains[domain].items
    with_meta = np.flatnonzero(items.has_meta)
    with_meta = with_meta[np.argsort(items.parent_id[with_meta], kind="stable")]
    if fmt == "2014csv":
        lines = [repr(_meta_record(fmt, domain, items, i)) for i in with_meta.tolist()]
    else:
        lines = [json.dumps(_meta_record(fmt, domain, items, i), ensure_ascii=False) for i in with_meta.tolist()]

    def render(idx: np.ndarray) -> list[str]:
        return [lines[i] for i in idx.tolist()]

    layout = JsonLayout(id_key="parent_asin" if fmt == "2023json" else "asin", literal=fmt == "2014csv")
    return TextTable(file_names(fmt, domain)[1], len(lines), render, layout)


def glove_lines(world: AmazonWorld) -> list[str]:
    return format_lines(world.glove_words, world.glove_vectors)
