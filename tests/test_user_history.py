"""model.history_fields: a user's profile over an item field and its match with the row's item."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import movie_schema

from cdanet.config import ConfigError, paper_config, strict_config, tiny_config
from cdanet.data import DomainData, user_history
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
