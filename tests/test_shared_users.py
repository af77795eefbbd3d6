"""model.shared_users: the target's users read the source's user vectors (a named departure from the paper)."""

from __future__ import annotations

import pytest
import torch
from helpers import schemas

from cdanet.batch import Batch, random_batch
from cdanet.config import ConfigError, tiny_config
from cdanet.contract import OOV_MARKER, processed_vocab_dir, write_vocabularies
from cdanet.data import user_link
from cdanet.losses import compute_loss
from cdanet.models import AugmentationNetwork, build_model

N_MOVIE_USERS, N_BOOK_USERS = schemas()["movie"].field("user_id").vocab_size, schemas()["book"].field("user_id").vocab_size


def _cfg(model: str = "cdanet", shared: bool = True):
    return tiny_config("amazon", model=model).with_overrides([f"model.shared_users={str(shared).lower()}"]).validate()


def _batches(seed: int = 0) -> dict[str, Batch]:
    g = torch.Generator().manual_seed(seed)
    s = schemas()
    return {"movie": random_batch(s["movie"], 32, g), "book": random_batch(s["book"], 40, g)}


def _link(seed: int = 0) -> torch.Tensor:
    """Every third movie user has a book account (a random book index), the others none (0)."""
    g = torch.Generator().manual_seed(seed)
    link = torch.randint(1, N_BOOK_USERS, (N_MOVIE_USERS,), generator=g)
    link[torch.arange(N_MOVIE_USERS) % 3 != 0] = 0
    link[0] = 0
    return link


def test_user_link_maps_raw_user_ids_between_the_vocabularies(tmp_path) -> None:
    s = schemas()
    movie_users = [OOV_MARKER] + [f"u{i}" for i in range(1, N_MOVIE_USERS)]
    book_users = [OOV_MARKER] + [f"u{i}" for i in range(N_BOOK_USERS - 1, 0, -2)] + [
        f"b{i}" for i in range(N_BOOK_USERS - 1 - len(range(N_BOOK_USERS - 1, 0, -2)))]
    for schema, users in ((s["movie"], movie_users), (s["book"], book_users)):
        others = {f.name: [OOV_MARKER] + [f"{f.name}{i}" for i in range(1, f.vocab_size)]
                  for f in schema.fields if f.is_categorical and f.name != "user_id"}
        write_vocabularies(processed_vocab_dir(str(tmp_path), schema), {"user_id": users, **others})
    link = user_link(str(tmp_path), s["book"], s["movie"])
    assert link.shape == (N_MOVIE_USERS,) and link[0] == 0
    for i in range(1, N_MOVIE_USERS):
        raw = movie_users[i]
        assert (book_users[link[i]] == raw) if raw in book_users else link[i] == 0, raw
    assert (link > 0).sum() == sum(u in book_users for u in movie_users[1:]) > 0
    assert user_link(str(tmp_path / "nothing"), s["book"], s["movie"]) is None


def test_the_target_adds_the_linked_source_user_vector() -> None:
    torch.manual_seed(0)
    net = build_model(_cfg(), schemas())
    net.link_users(_link())
    b = _batches()
    h = net.embed(b, ("book", "movie"))
    plain = net.embeddings["movie"](b["movie"].features)
    users = net.user_link[b["movie"].features["user_id"]]
    expected = plain + net.embeddings["book"].table("user_id")[users]
    torch.testing.assert_close(h["movie"], expected)
    torch.testing.assert_close(h["book"], net.embeddings["book"](b["book"].features))  # the source is unchanged


def test_the_link_is_saved_with_the_model_and_checked() -> None:
    net = build_model(_cfg(), schemas())
    net.link_users(_link())
    again = build_model(_cfg(), schemas())
    again.load_state_dict(net.state_dict())
    assert torch.equal(again.user_link, net.user_link)
    with pytest.raises(ValueError, match="source's user vocabulary"):
        net.link_users(torch.full((N_MOVIE_USERS,), N_BOOK_USERS))
    with pytest.raises(ValueError, match="shape"):
        net.link_users(torch.zeros(3, dtype=torch.long))
    plain = build_model(_cfg(shared=False), schemas())
    assert plain.user_link is None and "user_link" not in plain.state_dict()
    with pytest.raises(ValueError, match="without model.shared_users"):
        plain.link_users(_link())


def test_stage2_folds_the_link_into_the_target_user_rows() -> None:
    # The augmentation network has no link: the linked source vectors are added into the target's user rows,
    # so its z_t equals the translation network's z_t for every target row.
    torch.manual_seed(0)
    net = build_model(_cfg(), schemas())
    net.link_users(_link())
    compute_loss(net, _batches()).total.backward()  # weights as after training: not all equal to init
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net.eval()
    aug = AugmentationNetwork.from_translation(net)
    aug.eval()
    b = _batches(1)
    torch.testing.assert_close(aug.latent(b["movie"]), net.latent("movie", b["movie"]))
    assert aug.user_link is None


def test_gradients_reach_the_source_user_rows_from_target_rows() -> None:
    net = build_model(_cfg(), schemas())
    net.link_users(_link())
    b = _batches()
    h = net.embed({"movie": b["movie"]}, ("movie",))["movie"]
    h.sum().backward()
    grad = net.embeddings["book"].weight.grad  # the book user rows come first in its fused table
    rows = net.user_link[b["movie"].features["user_id"]].unique()
    touched = grad[: N_BOOK_USERS].abs().sum(1).nonzero().flatten()
    assert set(touched.tolist()) == set(rows.tolist())


def test_single_domain_models_and_other_combiners() -> None:
    mlp = build_model(_cfg("mlp"), schemas())
    assert mlp.user_link is None  # the single-domain baseline has no source to link to
    mmoe = build_model(_cfg("mmoe"), schemas())
    assert mmoe.user_link is not None
    with pytest.raises(ConfigError, match="shared_users needs embedding_combiner 'linear'"):
        _cfg().with_overrides(["model.embedding_combiner=concat"]).validate()


# model.id_cross: <u, i> of the row's user and item vectors goes to the logit (the FM term on the ids).

def _id_cross(net, dom: str, batch: Batch, linked: torch.Tensor | None = None) -> torch.Tensor:
    emb = net.embeddings[dom]
    u = emb.table("user_id")[batch.features["user_id"]]
    if linked is not None:
        u = u + linked
    return (u * emb.table("item_id")[batch.features["item_id"]]).sum(1)


@pytest.mark.parametrize("name", ["mlp", "share_middle", "star", "ddtcdr", "mmoe", "ple", "cdanet"])
def test_id_cross_adds_user_dot_item_to_every_models_own_logits(name: str) -> None:
    nets = []
    for on in ("false", "true"):
        torch.manual_seed(0)  # the option adds no parameter: both models start from the same weights
        net = build_model(_cfg(name).with_overrides([f"model.id_cross={on}"]), schemas())
        with torch.no_grad():  # ids far from their small init, so the cross is not ~0
            for emb in net.embeddings.values():
                emb.weight.normal_(0, 0.5)
        if net.user_link is not None:
            net.link_users(_link())
        nets.append(net.eval())
    plain, crossed = nets
    b = _batches()
    with torch.no_grad():
        base, out = plain(b), crossed(b)
        for dom in base:
            linked = None
            if crossed.user_link is not None and dom == "movie":
                linked = crossed.embeddings["book"].table("user_id")[crossed.user_link[b["movie"].features["user_id"]]]
            c = _id_cross(crossed, dom, b[dom], linked)
            assert float(c.abs().mean()) > 1e-2
            torch.testing.assert_close(out[dom], base[dom] + c)
    assert not torch.equal(compute_loss(plain, b).total, compute_loss(crossed, b).total)


def test_stage2_keeps_the_id_cross_with_the_folded_user_rows() -> None:
    torch.manual_seed(0)
    net = build_model(_cfg().with_overrides(["model.id_cross=true"]), schemas())
    net.link_users(_link())
    with torch.no_grad():
        net.embeddings["movie"].weight.normal_(0, 0.5)
        net.embeddings["book"].weight.normal_(0, 0.5)
    net.eval()
    aug = AugmentationNetwork.from_translation(net).eval()
    b = _batches(1)
    _, stage1 = net.embed_with_cross(b, ("book", "movie"))
    _, stage2 = aug.latent_and_cross(b["movie"])
    torch.testing.assert_close(stage2, stage1["movie"])  # same <u, i>: the link is folded into the user rows


def test_id_cross_is_validated() -> None:
    with pytest.raises(ConfigError, match="model.id_cross needs embedding_combiner 'linear'"):
        _cfg().with_overrides(["model.id_cross=true", "model.shared_users=false",
                               "model.embedding_combiner=concat"]).validate()
    from helpers import movie_schema

    from cdanet.contract import DomainSchema
    from cdanet.layers.embeddings import DomainEmbedding
    no_item = DomainSchema("amazon", "movie", tuple(f for f in movie_schema().fields if f.name != "item_id"))
    with pytest.raises(ValueError, match=r"id_cross of domain 'movie' needs categorical fields \['item_id'\]"):
        DomainEmbedding(no_item, 8, 8, id_cross=True)
