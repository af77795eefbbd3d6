"""Models: construction and validation, forward contract, stage 1 -> stage 2 transfer, training steps."""

from __future__ import annotations

import pytest
import torch
from helpers import schemas

from cdanet.batch import Batch, random_batch
from cdanet.config import ABLATIONS, MODEL_NAMES, ConfigError, ExperimentConfig, tiny_config
from cdanet.contract import SchemaError
from cdanet.layers import FastPaths, SharedMLPExtractor, set_fast_paths
from cdanet.layers import MMoE as MMoELayer
from cdanet.losses import compute_loss
from cdanet.models import (
    DDTCDR,
    MODELS,
    AugmentationNetwork,
    TranslationNetwork,
    build_model,
)

B = 24


def paper_inputs(target_domain: str | None = None) -> ExperimentConfig:
    """The tiny profile with the paper's inputs only: the stage-transfer tests check exact copies, which
    model.shared_users (folded into the user rows) and model.history_fields (per target) change on purpose
    (tests/test_shared_users.py, tests/test_user_history.py)."""
    return tiny_config(target_domain=target_domain).with_overrides(["model.shared_users=false", "model.history_fields={}"])


def batches(seed: int = 1, n: int = B) -> dict[str, Batch]:
    g = torch.Generator().manual_seed(seed)
    s = schemas()
    # different sizes per domain catch code that assumes equal batches
    return {"movie": random_batch(s["movie"], n, g), "book": random_batch(s["book"], n + 7, g)}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def train_steps(model: torch.nn.Module, steps: int = 3) -> list[float]:
    """A few Adam steps; asserts finite losses and that every trainable parameter in use changed."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for i in range(steps):
        opt.zero_grad()
        out = compute_loss(model, batches(seed=i))
        assert torch.isfinite(out.total)
        assert all(torch.isfinite(v) for v in out.parts.values())
        out.total.backward()
        opt.step()
        losses.append(float(out.total.detach()))
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    used = {n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    assert used, "no parameter received a gradient"
    assert used <= changed, f"parameters with a gradient that Adam did not move: {sorted(used - changed)}"
    return losses


class TestBuildModel:
    @pytest.mark.parametrize("name", MODEL_NAMES)
    def test_forward_contract(self, name: str) -> None:
        cfg = tiny_config(model=name)
        model = build_model(cfg, schemas())
        assert isinstance(model, MODELS[name])
        assert model.cfg is cfg and set(model.schemas) == {"movie", "book"}
        expected = ("movie",) if name == "mlp" else ("book", "movie")
        assert model.train_domains == model.eval_domains == expected
        out = model(batches())
        assert set(out) == set(expected)
        for dom, logits in out.items():
            assert logits.shape == (len(batches()[dom]),) and logits.dtype == torch.float32
        # scoring only the target domain works for every model (evaluation batches one domain)
        assert set(model({"movie": batches()["movie"]})) == {"movie"}

    def test_unknown_model(self) -> None:
        cfg = tiny_config()
        cfg.model.name = "deepfm"
        with pytest.raises(ConfigError, match="unknown model name 'deepfm'"):
            build_model(cfg, schemas())

    def test_k_below_one(self) -> None:
        cfg = tiny_config()
        cfg.model.num_experts = 0
        with pytest.raises(ConfigError, match="K \\(num_experts\\) must be >= 1"):
            build_model(cfg, schemas())

    def test_negative_alpha(self) -> None:
        cfg = tiny_config()
        cfg.model.alpha = -0.1
        with pytest.raises(ConfigError, match="alpha"):
            build_model(cfg, schemas())

    def test_missing_domain_schema(self) -> None:
        with pytest.raises(SchemaError, match="no feature schema for domain\\(s\\) \\['book'\\]"):
            build_model(tiny_config(), {"movie": schemas()["movie"]})

    def test_schema_filed_under_wrong_domain(self) -> None:
        s = schemas()
        with pytest.raises(SchemaError, match="describes domain 'book'"):
            build_model(tiny_config(), {"movie": s["book"], "book": s["book"]})

    def test_not_a_config(self) -> None:
        with pytest.raises(ConfigError, match="ExperimentConfig"):
            build_model({"model": {}}, schemas())  # type: ignore[arg-type]

    def test_scoring_absent_domain_raises(self) -> None:
        model = build_model(tiny_config(model="mlp"), schemas())
        with pytest.raises(KeyError, match="scores domain"):
            model({"book": batches()["book"]})

    def test_embeddings_are_per_domain(self) -> None:
        model = build_model(tiny_config(model="mmoe"), schemas())
        assert set(model.embeddings["book"].field_order) == {"user_id", "item_id", "category", "writer", "title"}
        assert set(model.embeddings["movie"].field_order) == {"user_id", "item_id", "genre", "director", "title"}


class TestTranslationNetwork:
    def test_parts_and_vanilla_logits(self) -> None:
        cfg = tiny_config()
        cfg.model.tower_layers_by_domain = {"book": 3}
        net = build_model(cfg, schemas())
        assert isinstance(net, TranslationNetwork) and isinstance(net.extractor, MMoELayer)
        assert net.towers["book"].depth == 3 and net.towers["movie"].depth == cfg.model.tower_layers
        b = batches()
        z = net.latents(b)
        assert z["movie"].shape == (B, cfg.model.d) and z["book"].shape == (B + 7, cfg.model.d)
        torch.testing.assert_close(net.latent("book", b["book"]), z["book"])
        out = net(b)
        torch.testing.assert_close(out["movie"], net.tower("movie", z["movie"]))
        w = net.translators["movie"].weight
        torch.testing.assert_close(net.translate("movie", z["movie"]), z["movie"] @ w.t())
        assert net.other("movie") == "book"

    def test_no_mmoe_ablation_uses_one_shared_mlp(self) -> None:
        cfg = tiny_config().with_overrides({"model.ablation": "no_mmoe"})
        net = build_model(cfg, schemas())
        assert isinstance(net.extractor, SharedMLPExtractor)
        linears = [m for m in net.extractor.modules() if isinstance(m, torch.nn.Linear)]
        assert len(linears) == cfg.model.expert_layers
        assert all(lin.in_features == lin.out_features == cfg.model.d for lin in linears)


class TestStageTransfer:
    def trained_stage1(self, cfg: ExperimentConfig | None = None) -> TranslationNetwork:
        net = build_model(cfg or paper_inputs(), schemas())
        train_steps(net, steps=2)  # move the weights away from their initialisation
        return net

    def test_copies_embedding_extractor_and_translator(self) -> None:
        net = self.trained_stage1()
        aug = AugmentationNetwork.from_translation(net)
        t = "movie"
        assert aug.train_domains == aug.eval_domains == (t,)
        assert list(aug.embeddings) == [t]
        for name, value in net.embeddings[t].state_dict().items():
            assert torch.equal(aug.embeddings[t].state_dict()[name], value), name
        src = net.extractor.state_dict()
        dst = aug.extractor.state_dict()
        assert set(dst) == {k for k in src if not k.startswith("gates.book.")}
        for name, value in dst.items():
            assert torch.equal(value, src[name]), name
        assert torch.equal(aug.translator.weight, net.translators[t].weight)
        b = batches()
        torch.testing.assert_close(aug.latent(b[t]), net.latent(t, b[t]))

    def test_new_tower_is_fresh_and_reads_2d(self) -> None:
        net = self.trained_stage1()
        aug = AugmentationNetwork.from_translation(net)
        d = net.cfg.model.d
        first = next(m for m in aug.tower.modules() if isinstance(m, torch.nn.Linear))
        assert first.in_features == 2 * d
        old_first = next(m for m in net.towers["movie"].modules() if isinstance(m, torch.nn.Linear))
        assert not torch.equal(first.weight[:, :d], old_first.weight)
        assert aug.tower.depth == net.towers["movie"].depth

    @pytest.mark.parametrize("paths", [FastPaths(), FastPaths.none()], ids=["fast", "equation"])
    def test_score_is_the_tower_on_the_augmented_latent(self, paths: FastPaths) -> None:
        aug = AugmentationNetwork.from_translation(self.trained_stage1()).double()
        set_fast_paths(aug, paths)
        z = torch.randn(B, aug.cfg.model.d, dtype=torch.float64, requires_grad=True)
        score, explicit = aug.score(z), aug.tower(aug.augment(z))  # R^aug(z ⊕ W z), Eq. 10-11
        torch.testing.assert_close(score, explicit)
        params = (z, aug.translator.weight, *aug.tower.parameters())
        for got, expected in zip(torch.autograd.grad(score.sum(), params), torch.autograd.grad(explicit.sum(), params),
                                 strict=True):
            torch.testing.assert_close(got, expected)

    def test_deep_copy(self) -> None:
        net = self.trained_stage1()
        snapshot = {k: v.clone() for k, v in net.state_dict().items()}
        aug = AugmentationNetwork.from_translation(net)
        with torch.no_grad():
            for p in aug.parameters():
                p.add_(1.0)
        train_steps(aug, steps=1)
        for k, v in net.state_dict().items():
            assert torch.equal(v, snapshot[k]), k

    def test_either_domain_as_target(self) -> None:
        cfg = paper_inputs(target_domain="book")
        assert cfg.target_domain == "book"
        net = self.trained_stage1(cfg)
        aug = AugmentationNetwork.from_translation(net)
        assert aug.eval_domains == ("book",)
        assert torch.equal(aug.translator.weight, net.translators["book"].weight)
        out = aug(batches())
        assert set(out) == {"book"} and out["book"].shape == (B + 7,)
        # a stage-1 net trained with movie as target can also feed a book-target stage 2
        net_movie = self.trained_stage1()
        aug_book = AugmentationNetwork.from_translation(net_movie, paper_inputs(target_domain="book"))
        assert torch.equal(aug_book.translator.weight, net_movie.translators["book"].weight)

    def test_fresh_matches_transferred_architecture(self) -> None:
        cfg = tiny_config()
        net = build_model(cfg, schemas())
        aug = AugmentationNetwork.from_translation(net)
        fresh = AugmentationNetwork.fresh(cfg, schemas())
        assert {k: v.shape for k, v in aug.state_dict().items()} == {k: v.shape for k, v in fresh.state_dict().items()}
        fresh.load_state_dict(aug.state_dict())  # a saved stage 2 reloads into fresh(cfg, schemas)
        assert not torch.equal(
            AugmentationNetwork.fresh(cfg, schemas()).translator.weight, net.translators["movie"].weight
        )

    def test_mismatched_stage2_config(self) -> None:
        net = build_model(tiny_config(), schemas())
        with pytest.raises(ConfigError, match="extractor"):
            AugmentationNetwork.from_translation(net, tiny_config().with_overrides({"model.ablation": "no_mmoe"}))
        with pytest.raises(ConfigError, match="architecture"):
            AugmentationNetwork.from_translation(net, tiny_config().with_overrides({"model.d": 16}))
        with pytest.raises(TypeError, match="TranslationNetwork"):
            AugmentationNetwork.from_translation(build_model(tiny_config(model="mmoe"), schemas()))


class TestDDTCDR:
    def test_mapping_links_the_domains(self) -> None:
        model = build_model(tiny_config(model="ddtcdr"), schemas())
        assert isinstance(model, DDTCDR)
        b = batches()
        before = model(b)
        with torch.no_grad():
            model.mapping.weight.mul_(2.0)
        after = model(b)
        for dom in ("movie", "book"):
            assert not torch.allclose(before[dom], after[dom])
        h = model.embeddings["book"](b["book"].features)
        torch.testing.assert_close(
            model.transfer("book", h), model.encoders["movie"](h @ model.mapping.weight.t())
        )


class TestTraining:
    @pytest.mark.parametrize("name", MODEL_NAMES)
    def test_every_model_trains(self, name: str) -> None:
        model = build_model(tiny_config(model=name), schemas())
        losses = train_steps(model, steps=3)
        assert len(losses) == 3

    @pytest.mark.parametrize("ablation", ABLATIONS)
    def test_every_ablation_trains(self, ablation: str) -> None:
        cfg = tiny_config().with_overrides({"model.ablation": ablation})
        if ablation == "no_translation":
            stage2 = AugmentationNetwork.fresh(cfg, schemas())
        else:
            net = build_model(cfg, schemas())
            train_steps(net, steps=2)
            if ablation == "no_augmentation":
                # the translation network itself is evaluated on the target domain
                out = net({"movie": batches()["movie"]})
                assert set(out) == {"movie"} and torch.isfinite(out["movie"]).all()
                return
            stage2 = AugmentationNetwork.from_translation(net, cfg)
        train_steps(stage2, steps=2)
