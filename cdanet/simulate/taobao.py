"""Taobao raw files: Tianchi dataset 56 (ad domain) and dataset 649 (rec domain).

Files, exactly as distributed::

    taobao/raw_sample.csv     user,time_stamp,adgroup_id,pid,nonclk,clk          (label: clk)
    taobao/ad_feature.csv     adgroup_id,cate_id,campaign_id,customer,brand,price (brand may be NULL)
    taobao/user_profile.csv   userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,
                              shopping_level,occupation,new_user_class_level␣    (TRAILING SPACE in the
                              header; pvalue_level / new_user_class_level may be empty; some users of
                              raw_sample have no profile row)
    taobao/UserBehavior.csv   user_id,item_id,category_id,behavior_type,timestamp (no header; label:
                              behavior_type == "buy"; the others are pv, cart, fav)

Users shared by the two domains have the same integer id. Category ids come from one id space:
each latent topic owns some ad categories and some rec categories, and about half of a topic's
ad categories are also rec categories, so related categories are recognisable across domains.
The user profile carries signal: a user's taste is partly the prototype of their ``cms_group_id``
(a gender x age group), and their ``pvalue_level`` (price level) sets how much price matters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cdanet.simulate import vocab
from cdanet.simulate.ids import distinct_ints
from cdanet.simulate.rawfile import CsvLayout, TextTable
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

RAW_SAMPLE = "taobao/raw_sample.csv"
AD_FEATURE = "taobao/ad_feature.csv"
USER_PROFILE = "taobao/user_profile.csv"
USER_BEHAVIOR = "taobao/UserBehavior.csv"
RAW_SAMPLE_HEADER = "user,time_stamp,adgroup_id,pid,nonclk,clk"
AD_FEATURE_HEADER = "adgroup_id,cate_id,campaign_id,customer,brand,price"
#: The trailing space after the last name is in the real file; keep it.
USER_PROFILE_HEADER = (
    "userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,shopping_level,"
    "occupation,new_user_class_level "
)
BEHAVIOR_TYPES: tuple[str, ...] = ("pv", "buy", "cart", "fav")
PIDS: tuple[str, ...] = ("430548_1007", "430539_1007")

AD_CLICK = ClickModel(target_rate=0.06, taste_weight=1.2)
REC_CLICK = ClickModel(target_rate=0.06, taste_weight=1.2)
AD_EXPOSURE = ExposureModel(time_spread=0.3)
REC_EXPOSURE = ExposureModel(time_spread=0.3)
_AD_SPAN = (1_494_000_000, 1_494_691_200)  # 2017-05-06 .. 2017-05-13 (UTC+8), 8 days
_REC_SPAN = (1_511_539_200, 1_512_316_800)  # 2017-11-25 .. 2017-12-03 (UTC+8), 9 days
_NO_PROFILE = 0.08
_NO_BRAND = 0.25
_PID_EFFECT = np.array([0.15, -0.2])
#: Price sensitivity by pvalue_level (1 = low consumption level ... 3 = high; index 0 = missing).
_PRICE_SENSITIVITY = np.array([0.15, 0.4, 0.15, -0.05])


@dataclass
class Profiles:
    """Demographics of the population (all [n] int64; 0 in pvalue/new_user_class means empty)."""

    cms_segid: np.ndarray
    cms_group_id: np.ndarray
    gender: np.ndarray
    age_level: np.ndarray
    pvalue_level: np.ndarray
    shopping_level: np.ndarray
    occupation: np.ndarray
    new_user_class_level: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int) -> Profiles:
        gender = rng.choice([1, 2], n, p=[0.35, 0.65])
        age = rng.choice(7, n, p=[0.01, 0.1, 0.25, 0.3, 0.2, 0.1, 0.04])
        group = (gender - 1) * 6 + np.maximum(age - 1, 0)
        group[rng.random(n) < 0.02] = 12
        segid = np.where(rng.random(n) < 0.95, 0, rng.integers(1, 97, n))
        pvalue = np.where(rng.random(n) < 0.3, 0, rng.choice([1, 2, 3], n, p=[0.3, 0.5, 0.2]))
        shopping = rng.choice([1, 2, 3], n, p=[0.05, 0.15, 0.8])
        occupation = (rng.random(n) < 0.06).astype(np.int64)
        new_class = np.where(rng.random(n) < 0.3, 0, rng.choice([1, 2, 3, 4], n, p=[0.1, 0.35, 0.35, 0.2]))
        return cls(segid, group, gender, age, pvalue, shopping, occupation, new_class)


@dataclass
class TaobaoDomainData:
    """Rows of one domain in file order with their ground truth."""

    domain: str
    rows: Interactions
    p_click: np.ndarray
    label: np.ndarray
    seconds: np.ndarray  # int64
    extra: np.ndarray  # ad: pid index; rec: behavior type index into BEHAVIOR_TYPES
    topic: np.ndarray  # int64: latent topic of the row's item
    offset: np.ndarray  # float64: the ground-truth logit minus the user's taste and activity terms
    click: ClickModel


@dataclass
class TaobaoWorld:
    user_id: np.ndarray  # int64 [population]
    profiles: Profiles
    profile_users: np.ndarray  # population indices with a profile row, sorted by user id
    ad_id: np.ndarray
    ad_cate: np.ndarray
    ad_campaign: np.ndarray
    ad_customer: np.ndarray
    ad_brand: np.ndarray  # 0 = NULL
    ad_price: np.ndarray
    rec_item_id: np.ndarray
    rec_category: np.ndarray
    domains: dict[str, TaobaoDomainData]
    population: Population


def _categories(rng: np.random.Generator, n_topics: int, n_ad: int, n_rec: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Category ids and topics: (ad ids, ad topics, rec ids, rec topics); half of a topic's ad
    categories are shared with rec."""
    per_ad = max(2, n_ad // 40 // n_topics)
    per_rec = max(2, n_rec // 60 // n_topics)
    shared = min(per_ad // 2 + 1, per_rec)
    total = n_topics * (per_ad + per_rec - shared)
    pool = distinct_ints(rng, total, 1, max(13_000, 4 * total)).reshape(n_topics, -1)
    ad = pool[:, :per_ad]
    rec = np.concatenate([pool[:, :shared], pool[:, per_ad:]], axis=1)
    topics = np.arange(n_topics)
    return ad.ravel(), np.repeat(topics, per_ad), rec.ravel(), np.repeat(topics, rec.shape[1])


def _zipf_weights(rng: np.random.Generator, n: int, exponent: float = 1.0) -> np.ndarray:
    return (rng.permutation(n) + 1.0) ** -exponent


def build_world(seed: int, sizes: SimulationSizes) -> TaobaoWorld:
    """Draw the Taobao population with profiles, ads, rec items, interactions and labels."""
    n_topics = len(vocab.TAOBAO_TOPICS)
    target, source, n_pop = split_users(sizes.ad_users, sizes.rec_users, sizes.shared_users("taobao"))
    rng = child_rng(seed, "taobao", "population")
    profiles = Profiles.draw(rng, n_pop)
    prototypes = rng.normal(0.0, 0.8, (13, n_topics))
    population = Population.draw(rng, n_pop, n_topics, group_taste=prototypes[profiles.cms_group_id])
    user_id = distinct_ints(rng, n_pop, 1, max(1_150_000, 4 * n_pop))
    has_profile = np.zeros(n_pop, dtype=bool)
    has_profile[target] = rng.random(len(target)) >= _NO_PROFILE
    profile_users = np.flatnonzero(has_profile)
    profile_users = profile_users[np.argsort(user_id[profile_users], kind="stable")]

    rng = child_rng(seed, "taobao", "catalog")
    ad_catalog = Catalog.draw(rng, sizes.ad_items, n_topics, AD_EXPOSURE, AD_CLICK)
    rec_catalog = Catalog.draw(rng, sizes.rec_items, n_topics, REC_EXPOSURE, REC_CLICK)
    ad_cats, ad_cat_topic, rec_cats, rec_cat_topic = _categories(rng, n_topics, sizes.ad_items, sizes.rec_items)
    ad_cate = ad_cats[sample_in_groups(rng, ad_catalog.topic, ad_cat_topic, _zipf_weights(rng, len(ad_cats)))]
    rec_category = rec_cats[sample_in_groups(rng, rec_catalog.topic, rec_cat_topic, _zipf_weights(rng, len(rec_cats)))]

    # Ads belong to campaigns of the same topic, campaigns to customers (advertisers) with one brand.
    n_ads = sizes.ad_items
    n_campaigns, n_customers = max(n_topics, n_ads // 3), max(n_topics, n_ads // 8)
    campaign_topic = rng.permutation(np.arange(n_campaigns) % n_topics)
    customer_topic = rng.permutation(np.arange(n_customers) % n_topics)
    ad_campaign_idx = sample_in_groups(rng, ad_catalog.topic, campaign_topic, _zipf_weights(rng, n_campaigns, 0.5))
    campaign_customer = sample_in_groups(rng, campaign_topic, customer_topic, _zipf_weights(rng, n_customers, 0.5))
    campaign_ids = distinct_ints(rng, n_campaigns, 1, max(450_000, 4 * n_campaigns))
    customer_ids = distinct_ints(rng, n_customers, 1, max(260_000, 4 * n_customers))
    customer_brand = distinct_ints(rng, n_customers, 1, max(460_000, 4 * n_customers))
    customer_brand[rng.random(n_customers) < _NO_BRAND] = 0
    log_price_mean = rng.uniform(2.5, 6.0, n_topics)
    log_price = log_price_mean[ad_catalog.topic] + 0.8 * rng.normal(size=n_ads)
    ad_price = np.round(np.exp(log_price), 1)
    z_price = (log_price - log_price.mean()) / log_price.std()

    domains: dict[str, TaobaoDomainData] = {}
    # ad: raw_sample in random order, as the real file.
    rng = child_rng(seed, "taobao", "ad", "rows")
    rows = draw_exposures(rng, target, sizes.ad_rows, population, ad_catalog, AD_EXPOSURE)
    pid = (rng.random(len(rows)) < 0.4).astype(np.int64)
    sensitivity = _PRICE_SENSITIVITY[profiles.pvalue_level[rows.user]]
    extra = _PID_EFFECT[pid] - sensitivity * z_price[rows.item]
    rows = click_logits(rng, rows, population, ad_catalog, AD_CLICK, extra=extra)
    bias = calibrate_bias(rows.logit, AD_CLICK.target_rate)
    p, label = sample_labels(rng, rows.logit, AD_CLICK.target_rate, bias)
    offset = known_offset(rows, population, ad_catalog, AD_CLICK, bias)
    seconds = (_AD_SPAN[0] + np.floor(rows.tau * (_AD_SPAN[1] - _AD_SPAN[0]))).astype(np.int64)
    order = rng.permutation(len(rows))
    domains["ad"] = TaobaoDomainData("ad", rows.take(order), p[order], label[order], seconds[order], pid[order],
                                     ad_catalog.topic[rows.item[order]], offset[order], AD_CLICK)

    # rec: UserBehavior grouped by user id, then time. Non-buy rows are pv, or cart/fav (likelier when
    # the buy probability is high, as carts precede purchases).
    rng = child_rng(seed, "taobao", "rec", "rows")
    rows = draw_exposures(rng, source, sizes.rec_rows, population, rec_catalog, REC_EXPOSURE)
    rows = click_logits(rng, rows, population, rec_catalog, REC_CLICK)
    bias = calibrate_bias(rows.logit, REC_CLICK.target_rate)
    p, label = sample_labels(rng, rows.logit, REC_CLICK.target_rate, bias)
    offset = known_offset(rows, population, rec_catalog, REC_CLICK, bias)
    u = rng.random(len(rows))
    behavior = np.where(u < 0.04 + 0.5 * p, 2, np.where(u < 0.07 + 0.8 * p, 3, 0))
    behavior[label == 1] = 1
    seconds = (_REC_SPAN[0] + np.floor(rows.tau * (_REC_SPAN[1] - _REC_SPAN[0]))).astype(np.int64)
    order = np.lexsort((seconds, user_id[rows.user]))
    domains["rec"] = TaobaoDomainData("rec", rows.take(order), p[order], label[order], seconds[order], behavior[order],
                                      rec_catalog.topic[rows.item[order]], offset[order], REC_CLICK)

    rng = child_rng(seed, "taobao", "item_ids")
    return TaobaoWorld(
        user_id=user_id, profiles=profiles, profile_users=profile_users,
        ad_id=distinct_ints(rng, n_ads, 1, max(850_000, 4 * n_ads)), ad_cate=ad_cate,
        ad_campaign=campaign_ids[ad_campaign_idx], ad_customer=customer_ids[campaign_customer[ad_campaign_idx]],
        ad_brand=customer_brand[campaign_customer[ad_campaign_idx]], ad_price=ad_price,
        rec_item_id=distinct_ints(rng, sizes.rec_items, 1, max(5_200_000, 4 * sizes.rec_items)),
        rec_category=rec_category, domains=domains, population=population,
    )


def tables(world: TaobaoWorld, seed: int) -> list[TextTable]:
    """The four Taobao files as :class:`TextTable` s."""
    ad, rec = world.domains["ad"], world.domains["rec"]

    def raw_sample(idx: np.ndarray) -> list[str]:
        users = world.user_id[ad.rows.user[idx]].tolist()
        ads = world.ad_id[ad.rows.item[idx]].tolist()
        return [f"{u},{t},{a},{PIDS[p]},{1 - c},{c}" for u, t, a, p, c in zip(
            users, ad.seconds[idx].tolist(), ads, ad.extra[idx].tolist(), ad.label[idx].tolist(), strict=True)]

    ad_order = child_rng(seed, "taobao", "ad_feature_order").permutation(len(world.ad_id))

    def ad_feature(idx: np.ndarray) -> list[str]:
        j = ad_order[idx]
        return [f"{a},{c},{cp},{cu},{b if b else 'NULL'},{pr!r}" for a, c, cp, cu, b, pr in zip(
            world.ad_id[j].tolist(), world.ad_cate[j].tolist(), world.ad_campaign[j].tolist(),
            world.ad_customer[j].tolist(), world.ad_brand[j].tolist(), world.ad_price[j].tolist(), strict=True)]

    prof = world.profiles

    def user_profile(idx: np.ndarray) -> list[str]:
        j = world.profile_users[idx]
        cols = [world.user_id[j], prof.cms_segid[j], prof.cms_group_id[j], prof.gender[j], prof.age_level[j],
                prof.pvalue_level[j], prof.shopping_level[j], prof.occupation[j], prof.new_user_class_level[j]]
        return [f"{u},{s},{g},{ge},{a},{pv or ''},{sh},{o},{nc or ''}" for u, s, g, ge, a, pv, sh, o, nc in
                zip(*(c.tolist() for c in cols), strict=True)]

    def user_behavior(idx: np.ndarray) -> list[str]:
        users = world.user_id[rec.rows.user[idx]].tolist()
        items = rec.rows.item[idx]
        return [f"{u},{i},{c},{BEHAVIOR_TYPES[b]},{t}" for u, i, c, b, t in zip(
            users, world.rec_item_id[items].tolist(), world.rec_category[items].tolist(),
            rec.extra[idx].tolist(), rec.seconds[idx].tolist(), strict=True)]

    return [
        TextTable(RAW_SAMPLE, len(ad.rows), raw_sample,
                  CsvLayout(6, id_field=0, numeric_field=1, range_field=5, range_values=("2", "-1")),
                  header=RAW_SAMPLE_HEADER, allow_duplicates=True),
        TextTable(AD_FEATURE, len(world.ad_id), ad_feature, CsvLayout(6, id_field=0, numeric_field=5),
                  header=AD_FEATURE_HEADER),
        TextTable(USER_PROFILE, len(world.profile_users), user_profile, CsvLayout(9, id_field=0),
                  header=USER_PROFILE_HEADER),
        TextTable(USER_BEHAVIOR, len(rec.rows), user_behavior,
                  CsvLayout(5, id_field=0, numeric_field=4, range_field=3, range_values=("click", "view", "purchase")),
                  allow_duplicates=True),
    ]
