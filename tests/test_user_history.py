"""model.history_fields: a user's profile over an item field and its match with the row's item."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import book_schema, movie_schema

from cdanet.config import ConfigError, paper_config, strict_config, tiny_config
from cdanet.contract import USER_PROFILE_FIELDS, DomainSchema, FieldKind, FieldSpec, SchemaError
from cdanet.data import DomainData, history_clicks, linked_history, user_history
from cdanet.layers.embeddings import UserHistory, auto_history_std


def _data(users: list[int], genres: list[int]) -> DomainData:
    schema = movie_schema()
    n = len(users)
    return DomainData(
        schema=schema, split="train",
        features={"user_id": torch.tensor(users), "genre": torch.tensor(genres)},
        label=torch.zeros(n), user_ids=np.array([str(u) for u in users], dtype=object),
        item_ids=np.array(["i"] * n, dtype=object), timestamps=np.zeros(n, dtype=np.int64),
    )


def test_user_history_counts_each_users_values_most_frequent_first() -> None:
    data = _data([1, 1, 1, 2, 2, 3], [4, 4, 2, 5, 0, 1])  # genre 0 is OOV/padding: not counted
    values, counts, totals = user_history(data, "genre", k=2)
    assert values.shape == counts.shape == (50, 2) and totals.shape == (50,)
    assert values[1].tolist() == [4, 2] and counts[1].tolist() == [2.0, 1.0] and totals[1] == 3
    assert values[2].tolist() == [5, 0] and counts[2].tolist() == [1.0, 0.0] and totals[2] == 1
    assert values[0].tolist() == [0, 0] and totals[0] == 0  # a user without rows has no profile
    top1, counts1, totals1 = user_history(data, "genre", k=1)
    assert top1[1].tolist() == [4] and totals1[1] == 3  # the total counts every value, not only the top k
    wide, wide_counts, _ = user_history(data, "genre", k=8)  # more columns than the field has values
    assert wide.shape == (50, 8) and wide[1].tolist() == [4, 2] + [0] * 6 and wide_counts[1, 2:].sum() == 0


def test_user_history_breaks_ties_by_value_and_never_builds_a_users_by_values_matrix() -> None:
    # Before: a dense [user vocab x field vocab] count matrix, 16 GB (peak 22 GB in stage 1) at the
    # Taobao preset's 185k users x 7k categories. Here 2M x 1M would need 8 TB: only the pairs are built.
    from dataclasses import replace

    data = _data([1, 1, 1, 1, 2, 2], [9, 7, 3, 3, 5, 8])
    wide = replace(movie_schema(), fields=tuple(
        replace(f, vocab_size={"user_id": 2_000_000, "genre": 1_000_000}.get(f.name, f.vocab_size)) for f in data.schema.fields))
    data = replace(data, schema=wide, features={"user_id": torch.tensor([1, 1, 1, 1, 2, 2]) * 999_999,
                                                "genre": torch.tensor([9, 7, 3, 3, 5, 999_999])})
    values, counts, totals = user_history(data, "genre", k=2)
    assert values.shape == (2_000_000, 2)
    assert values[999_999].tolist() == [3, 7] and counts[999_999].tolist() == [2.0, 1.0] and totals[999_999] == 4
    assert values[1_999_998].tolist() == [5, 999_999]  # a tie: the smaller value first
    data.label = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 1.0])  # base rate 0.5
    clicks = history_clicks(data, "genre", values, counts)
    assert clicks[999_999].tolist() == pytest.approx([(1 - 0.5 * 2) / 4, (1 - 0.5) / 3])
    assert clicks[1_999_998].tolist() == pytest.approx([(0 - 0.5) / 3, (1 - 0.5) / 3])


def _layer(std: float = 0.5) -> UserHistory:
    torch.manual_seed(0)
    layer = UserHistory(movie_schema(), "genre", d=4, history_len=3, init_std=std)
    data = _data([1, 1, 1, 2, 2], [4, 4, 2, 5, 3])
    layer.set_profile(*user_history(data, "genre", 3))
    return layer


def test_profile_vector_and_match_in_evaluation() -> None:
    layer = _layer().eval()
    e = layer.table.weight.detach()
    out = layer({"user_id": torch.tensor([1]), "genre": torch.tensor([2])})
    p = (2 * e[4] + e[2]) / 3
    torch.testing.assert_close(out[0], p + p * e[2])


def test_training_leaves_the_rows_own_value_out() -> None:
    # User 1's training rows were counted into the profile; in training a row of genre 4 sees the profile
    # of the other rows (one 4, one 2), like a validation row would see the whole training profile.
    layer = _layer().train()
    e = layer.table.weight.detach()
    out = layer({"user_id": torch.tensor([1, 1]), "genre": torch.tensor([4, 3])})
    p_loo = (e[4] + e[2]) / 2
    torch.testing.assert_close(out[0], p_loo + p_loo * e[4])
    p_all = (2 * e[4] + e[2]) / 3  # genre 3 is not in user 1's profile: nothing to leave out
    torch.testing.assert_close(out[1], p_all + p_all * e[3])


def test_profile_is_saved_with_the_state_dict_and_checked() -> None:
    layer = _layer()
    again = UserHistory(movie_schema(), "genre", d=4, history_len=3)
    again.load_state_dict(layer.state_dict())
    assert torch.equal(again.values, layer.values) and torch.equal(again.counts, layer.counts)
    with pytest.raises(ValueError, match="shape"):
        layer.set_profile(torch.zeros(3, 3, dtype=torch.long), torch.zeros(3, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="categorical or multi-hot"):
        UserHistory(movie_schema(), "title", d=4)


def test_auto_init_std_shrinks_with_the_vocabulary() -> None:
    assert auto_history_std(18) == pytest.approx(8 / 18 ** 0.5)
    assert auto_history_std(4) == 2.0 and auto_history_std(713) < 0.31
    assert _layer(std=0).init_std == auto_history_std(movie_schema().field("genre").vocab_size)


def test_profiles_default_on_the_target_and_strict_leaves_them_out() -> None:
    assert paper_config("amazon").model.history_fields == {"movie": "genre"}
    assert paper_config("taobao", "rec").model.history_fields == {"rec": "category"}
    assert paper_config("amazon").model.shared_users and not strict_config("amazon").model.shared_users
    assert strict_config("amazon").model.history_fields == {} == tiny_config().model.history_fields
    assert paper_config("amazon").model.source_history_fields == {"movie": "category"}
    assert paper_config("taobao").model.source_history_fields == {"ad": "category"}
    assert strict_config("taobao").model.source_history_fields == {} == tiny_config().model.source_history_fields
    assert paper_config("amazon").train.weight_decay == 1e-4 and strict_config("amazon").train.weight_decay == 0
    assert paper_config("taobao").train.weight_average == 0.99 and strict_config("taobao").train.weight_average == 0
    assert paper_config("amazon").train.weight_average_ramp == 3.0 == paper_config("taobao").train.weight_average_ramp
    assert paper_config("taobao").model.user_fields == {"ad": list(USER_PROFILE_FIELDS)}
    assert paper_config("amazon").model.user_fields == {} == strict_config("taobao").model.user_fields
    assert paper_config("taobao", "rec").model.user_fields == {}  # rec rows carry no user attributes
    assert paper_config("amazon").model.cross_logit == "profile" == paper_config("taobao").model.cross_logit
    assert paper_config("amazon").model.id_cross and paper_config("taobao").model.id_cross
    assert not strict_config("taobao").model.id_cross and not tiny_config().model.id_cross
    assert strict_config("taobao").model.cross_logit == "none" == tiny_config().model.cross_logit
    with pytest.raises(ConfigError, match="history_fields names unknown domains"):
        tiny_config().with_overrides(['model.history_fields={"ad": "category"}']).validate()


def test_the_new_settings_are_validated_in_one_error() -> None:
    bad = tiny_config().with_overrides(["model.history_len=0", "model.history_init_std=-1", "train.min_eval_steps=0",
                                        "train.evals_per_epoch=0"])
    with pytest.raises(ConfigError) as err:
        bad.validate()
    message = str(err.value)
    for part in ("model.history_len must be >= 1", "model.history_init_std must be >= 0",
                 "train.min_eval_steps must be >= 1", "train.evals_per_epoch must be >= 1"):
        assert part in message


# model.source_history_fields: the user's profile over the other domain's field, matched with the row's item.

def _source_layer() -> UserHistory:
    torch.manual_seed(0)
    layer = UserHistory(movie_schema(), "genre", d=4, history_len=3, init_std=0.5,
                        source=book_schema().field("category"))
    layer.set_profile(*user_history(_data([1, 1, 1, 2, 2], [4, 4, 2, 5, 3]), "genre", 3))
    # movie user 1 rated books of categories 7, 7, 9; movie user 2 none
    values = torch.zeros(50, 3, dtype=torch.long)
    counts, totals = torch.zeros(50, 3), torch.zeros(50)
    values[1, :2], counts[1, :2], totals[1] = torch.tensor([7, 9]), torch.tensor([2.0, 1.0]), 3
    clicks = torch.zeros(50, 3)
    clicks[1, :2] = torch.tensor([0.5, -0.25])
    layer.set_source_profile(values, counts, totals, clicks)
    return layer


def test_source_profile_adds_the_other_domains_profile_matched_with_the_item() -> None:
    layer = _source_layer().eval()
    e, es, ec = layer.table.weight.detach(), layer.source_table.weight.detach(), layer.click_table.weight.detach()
    out = layer({"user_id": torch.tensor([1, 2]), "genre": torch.tensor([2, 5])})
    p_source = (2 * es[7] + es[9]) / 3 + 0.5 * ec[7] - 0.25 * ec[9]  # exposure and click channels
    p = (2 * e[4] + e[2]) / 3 + p_source
    torch.testing.assert_close(out[0], p + p * e[2])
    p2 = (e[5] + e[3]) / 2  # no source rows: the own profile only
    torch.testing.assert_close(out[1], p2 + p2 * e[5])
    layer.train()  # leave-one-out touches the own profile only; the source rows are another domain's
    out = layer({"user_id": torch.tensor([1]), "genre": torch.tensor([4])})
    p_loo = (e[4] + e[2]) / 2 + p_source
    torch.testing.assert_close(out[0], p_loo + p_loo * e[4])
    assert layer.source_init_std == 0.5  # an explicit std applies to both tables
    auto = UserHistory(movie_schema(), "genre", d=4, source=book_schema().field("category"))
    assert auto.source_init_std == auto_history_std(12) and auto.init_std == auto_history_std(6)


def test_source_profile_needs_its_layer_and_the_own_field() -> None:
    with pytest.raises(ValueError, match="without a source field"):
        _layer().set_source_profile(torch.zeros(50, 3, dtype=torch.long), torch.zeros(50, 3), torch.zeros(50),
                                    torch.zeros(50, 3))
    with pytest.raises(ConfigError, match="needs model.history_fields"):
        tiny_config().with_overrides(['model.source_history_fields={"movie": "category"}']).validate()


def test_click_weights_and_linking_by_the_other_domains_users() -> None:
    book = _data([3, 3, 3, 4], [1, 2, 2, 2])  # a stand-in "other domain" profile over users 3 and 4
    book.label = torch.tensor([1.0, 1.0, 0.0, 0.0])  # base rate 0.5
    values, counts, totals = user_history(book, "genre", 2)
    clicks = history_clicks(book, "genre", values, counts)
    assert values[3].tolist() == [2, 1] and clicks[3].tolist() == pytest.approx([(1 - 0.5 * 2) / 4, (1 - 0.5) / 3])
    assert clicks[4].tolist() == pytest.approx([(0 - 0.5) / 3, 0.0])  # an empty slot weighs 0
    values, counts, totals, clicks = linked_history((values, counts, totals, clicks), torch.tensor([0, 3, 0, 4]))
    assert values.shape == (4, 2) and values[1].tolist() == [2, 1] and totals[1] == 3
    assert values[3].tolist() == [2, 0] and counts[3].tolist() == [1.0, 0.0] and clicks[3, 0] < 0
    assert values[0].tolist() == [0, 0] and totals[0] == 0 and totals[2] == 0  # 0 = unlinked: empty profile


def test_two_domain_models_build_the_source_profile_and_the_mlp_does_not() -> None:
    from helpers import schemas

    from cdanet.models import AugmentationNetwork, build_model
    cfg = tiny_config().with_overrides(['model.history_fields={"movie": "genre"}',
                                        'model.source_history_fields={"movie": "category"}'])
    stage1 = build_model(cfg, schemas())
    assert stage1.embeddings["movie"].history.source_field == "category"
    assert build_model(cfg.with_overrides(["model.name=mlp"]), schemas()).embeddings["movie"].history.source_field is None
    profile = torch.randint(0, 12, (50, 10)), torch.rand(50, 10), torch.rand(50), torch.rand(50, 10)
    stage1.embeddings["movie"].history.set_source_profile(*profile)
    stage2 = AugmentationNetwork.from_translation(stage1)  # stage 2 keeps the profile stage 1 was given
    assert torch.equal(stage2.embeddings["movie"].history.source_values, profile[0])
    with pytest.raises(SchemaError, match="has no such field"):
        build_model(cfg.with_overrides(['model.source_history_fields={"movie": "writer_x"}']), schemas())


def test_training_fills_the_source_profile_and_stage_2_serves_it(processed_dir: str, tmp_path) -> None:
    from cdanet.artifacts import load_model_dir
    from cdanet.training.experiment import run_experiment
    cfg = tiny_config().with_overrides(['model.history_fields={"movie": "genre"}',
                                        'model.source_history_fields={"movie": "category"}', "train.max_epochs=1"])
    result = run_experiment(cfg, processed_dir, str(tmp_path))
    assert 0.0 < result.test["movie"].auc < 1.0
    loaded = load_model_dir(str(tmp_path / "model"))
    history = loaded.model.embeddings["movie"].history
    linked = history.source_totals > 0
    assert int(linked.sum()) > 10  # movie users with book rows carry their book profile into the served model
    assert bool((history.source_values[linked, 0] > 0).all()) and bool((history.source_values[~linked] == 0).all())
    assert float(history.source_clicks.abs().sum()) > 0


# model.user_fields: the user's attributes join the profile, so they are crossed with the row's item.

def test_user_attributes_join_the_profile_and_cross_the_item() -> None:
    schema = DomainSchema("amazon", "movie", (*movie_schema().fields,
                                              FieldSpec("age", FieldKind.CATEGORICAL, vocab_size=4),
                                              FieldSpec("gender", FieldKind.CATEGORICAL, vocab_size=3)))
    torch.manual_seed(0)
    layer = UserHistory(schema, "genre", d=4, history_len=3, init_std=0.5, attributes=("age", "gender")).eval()
    layer.set_profile(*user_history(_data([1, 1, 1], [4, 4, 2]), "genre", 3))
    e, a = layer.table.weight.detach(), layer.attribute_table.weight.detach()
    assert a.shape == (4 + 3, 4) and float(a.std()) < 0.05  # small init: q is large already
    out = layer({"user_id": torch.tensor([1]), "genre": torch.tensor([2]), "age": torch.tensor([3]),
                 "gender": torch.tensor([1])})
    p = (2 * e[4] + e[2]) / 3 + a[3] + a[4 + 1]  # gender's rows follow age's 4
    torch.testing.assert_close(out[0], p + p * e[2])
    with pytest.raises(ValueError, match="must be categorical"):
        UserHistory(schema, "genre", d=4, attributes=("user_id",))


def test_user_fields_are_validated() -> None:
    with pytest.raises(ConfigError, match="user_fields for \\['movie'\\] needs model.history_fields"):
        tiny_config().with_overrides(['model.user_fields={"movie": ["genre"]}']).validate()
    with pytest.raises(ConfigError, match="expected a mapping of str to a list of str"):
        tiny_config().with_overrides(['model.user_fields={"movie": "genre"}'])


# model.cross_logit: a profile cross also goes straight to the logit (the FM part of a DeepFM).

def _attribute_schema() -> DomainSchema:
    return DomainSchema("amazon", "movie", (*movie_schema().fields, FieldSpec("age", FieldKind.CATEGORICAL, vocab_size=4)))


@pytest.mark.parametrize("cross", ["none", "attributes", "profile"])
def test_cross_logit_is_the_sum_of_the_chosen_cross_and_leaves_h_alone(cross: str) -> None:
    torch.manual_seed(0)
    layer = UserHistory(_attribute_schema(), "genre", d=4, history_len=3, init_std=0.5, attributes=("age",),
                        cross_logit=cross).eval()
    layer.set_profile(*user_history(_data([1, 1, 1], [4, 4, 2]), "genre", 3))
    e, a = layer.table.weight.detach(), layer.attribute_table.weight.detach()
    out, c = layer.forward_with_cross({"user_id": torch.tensor([1]), "genre": torch.tensor([2]), "age": torch.tensor([3])})
    p = (2 * e[4] + e[2]) / 3 + a[3]
    torch.testing.assert_close(out[0], p + p * e[2])  # the layer's output does not depend on the option
    expected = {"none": None, "attributes": (a[3] * e[2]).sum(), "profile": (p * e[2]).sum()}[cross]
    if expected is None:
        assert c is None
    else:
        torch.testing.assert_close(c[0], expected)
    with pytest.raises(ValueError, match="needs user attribute fields"):
        UserHistory(movie_schema(), "genre", d=4, cross_logit="attributes")


@pytest.mark.parametrize("name", ["mlp", "share_middle", "star", "ddtcdr", "mmoe", "ple", "cdanet"])
def test_cross_logit_adds_the_cross_to_every_models_logit_and_objective(name: str) -> None:
    from helpers import schemas

    from cdanet.batch import random_batch
    from cdanet.losses import compute_loss
    from cdanet.models import AugmentationNetwork, build_model
    cfg = tiny_config(model=name).with_overrides(['model.history_fields={"movie": "genre"}'])
    g = torch.Generator().manual_seed(3)
    s = schemas()
    batches = {"movie": random_batch(s["movie"], 16, g), "book": random_batch(s["book"], 19, g)}
    genres = s["movie"].field("genre").vocab_size
    profile = torch.randint(1, genres, (50, 10)), torch.rand(50, 10), torch.full((50,), 5.0)
    nets = []
    for cross in ("none", "profile"):
        torch.manual_seed(0)  # the option adds no parameter: both models start from the same weights
        nets.append(build_model(cfg.with_overrides([f"model.cross_logit={cross}"]), s).eval())
        nets[-1].embeddings["movie"].history.set_profile(*profile)
    pairs = [(nets[0], nets[1])]
    if name == "cdanet":  # stage 2 (its new tower from the same seed) keeps stage 1's profile layer and option
        pairs.append(tuple(_seeded(AugmentationNetwork.from_translation, n) for n in nets))
    for plain, crossed in pairs:
        _, c = crossed.embeddings["movie"].forward_with_cross(batches["movie"].features)
        assert c is not None and float(c.detach().abs().mean()) > 1e-3
        with torch.no_grad():
            base, out = plain(batches), crossed(batches)
            torch.testing.assert_close(out["movie"], base["movie"] + c)
            if "book" in base:  # the book domain has no profile: its logits are untouched
                torch.testing.assert_close(out["book"], base["book"])
            assert not torch.equal(compute_loss(plain, batches).total, compute_loss(crossed, batches).total)


def _seeded(fn, *args):
    torch.manual_seed(0)
    return fn(*args)


def test_cross_logit_is_validated() -> None:
    with pytest.raises(ConfigError, match="model.cross_logit 'profile' needs model.history_fields"):
        strict_config().with_overrides(["model.cross_logit=profile"]).validate()
    with pytest.raises(ConfigError, match="model.cross_logit 'attributes' needs model.user_fields"):
        paper_config().with_overrides(["model.cross_logit=attributes"]).validate()
    with pytest.raises(ConfigError, match="expected one of"):
        paper_config().with_overrides(["model.cross_logit=fm"])


def test_a_large_profile_cross_is_scaled_to_a_unit_start() -> None:
    # movie genres' auto std 1.9 at d = 64 would start <p, q> at a std of ~29 logits: scaled to at most ~1
    torch.manual_seed(0)
    wide = UserHistory(movie_schema(), "genre", d=64, history_len=3, init_std=1.9, cross_logit="profile").eval()
    narrow = UserHistory(movie_schema(), "genre", d=64, history_len=3, init_std=0.3, cross_logit="profile").eval()
    assert wide.cross_scale == pytest.approx(1 / (8 * 1.9 ** 2)) and narrow.cross_scale == 1.0
    wide.set_profile(*user_history(_data([1, 1, 1, 2, 2], [4, 4, 2, 5, 3]), "genre", 3))
    out, c = wide.forward_with_cross({"user_id": torch.tensor([1, 2]), "genre": torch.tensor([2, 5])})
    p, q = out / (1 + wide.table.weight[[2, 5]]), wide.table.weight[[2, 5]]  # out = p + p * q = p (1 + q)
    torch.testing.assert_close(c, (p * q).sum(1) * wide.cross_scale)
