"""Losses: Eq. 5-9 and 11 against by-hand recomputation, gradient routing, ablation weights."""

from __future__ import annotations

import pytest
import torch
from helpers import schemas

from cdanet.batch import Batch, random_batch
from cdanet.config import tiny_config
from cdanet.layers import FastPaths, set_fast_paths
from cdanet.losses import OBJECTIVES, augmentation_loss, bce, compute_loss, loss_weights, translation_loss
from cdanet.models import MODELS, AugmentationNetwork, TranslationNetwork, build_model


def batches() -> dict[str, Batch]:
    g = torch.Generator().manual_seed(3)
    s = schemas()
    return {"movie": random_batch(s["movie"], 20, g), "book": random_batch(s["book"], 13, g)}


def close(actual: torch.Tensor, expected: torch.Tensor, msg: str | None = None) -> None:
    """float32 results against float64 hand computations."""
    torch.testing.assert_close(actual.double(), expected.double(), rtol=1e-5, atol=1e-6, msg=msg)


def hand_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = 1.0 / (1.0 + torch.exp(-logits.double()))
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def hand_orth(w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    # Eq. 7 per sample: || W^T (W z) - z ||^2, written column-vector style as in the paper
    total = torch.zeros((), dtype=torch.float64)
    for row in z.double():
        col = row.unsqueeze(1)
        total = total + ((w.double().t() @ (w.double() @ col) - col) ** 2).sum()
    return total / z.shape[0]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class TestEquationFunctions:
    def test_bce(self) -> None:
        logits, y = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 0.0])
        expected = (torch.log(torch.tensor(2.0)) + torch.log1p(torch.exp(torch.tensor(2.0)))
                    + torch.log1p(torch.exp(torch.tensor(-1.0)))) / 3
        close(bce(logits, y), expected)

    def test_translation_and_augmentation_combinations(self) -> None:
        parts = [torch.tensor(v) for v in (0.5, 0.7, 0.9, 1.1, 2.0)]
        close(translation_loss(*parts, alpha=0.01, beta=0.1),
                                   torch.tensor(0.5 + 0.7 + 0.01 * (0.9 + 1.1) + 0.1 * 2.0))
        close(augmentation_loss(torch.tensor(0.6), torch.tensor(4.0), 0.1), torch.tensor(0.6 + 0.4))

    def test_ablation_weights(self) -> None:
        m = tiny_config().model
        assert loss_weights(m) == (m.alpha, m.beta)
        m.ablation = "no_cross"
        assert loss_weights(m) == (0.0, m.beta)
        m.ablation = "no_orth"
        assert loss_weights(m) == (m.alpha, 0.0)


class TestTranslationObjective:
    def test_equals_hand_recomputation_of_eq_5_to_9(self) -> None:
        cfg = tiny_config().with_overrides({"model.alpha": 0.3, "model.beta": 0.2})
        net = build_model(cfg, schemas())
        assert isinstance(net, TranslationNetwork)
        b = batches()
        out = compute_loss(net, b)
        s, t = "book", "movie"
        assert (net.source, net.target) == (s, t)
        with torch.no_grad():
            z = {d: net.latent(d, b[d]) for d in (s, t)}
            w = {d: net.translators[d].weight for d in (s, t)}
            y = {d: b[d].label for d in (s, t)}
            vani_s = hand_bce(net.towers[s](z[s]), y[s])
            vani_t = hand_bce(net.towers[t](z[t]), y[t])
            cross_t = hand_bce(net.towers[s](z[t] @ w[t].t()), y[t])  # Eq. 5: R_s(W_t z_t) vs y_t
            cross_s = hand_bce(net.towers[t](z[s] @ w[s].t()), y[s])  # Eq. 6: R_t(W_s z_s) vs y_s
            orth = hand_orth(w[s], z[s]) + hand_orth(w[t], z[t])  # Eq. 7
        expected = {"vani_s": vani_s, "vani_t": vani_t, "cross_s": cross_s, "cross_t": cross_t, "orth": orth}
        assert set(out.parts) == set(expected)
        for k, v in expected.items():
            close(out.parts[k], v, msg=k)
            assert not out.parts[k].requires_grad
        total = vani_s + vani_t + 0.3 * (cross_s + cross_t) + 0.2 * orth  # Eq. 9
        close(out.total, total)

    def test_orth_term_is_nonzero_after_perturbing_translators(self) -> None:
        net = build_model(tiny_config(), schemas())
        assert float(compute_loss(net, batches()).parts["orth"]) < 1e-8  # orthogonal at init
        with torch.no_grad():
            net.translators["movie"].weight.mul_(1.5)
        assert float(compute_loss(net, batches()).parts["orth"]) > 1e-3

    @pytest.mark.parametrize(
        ("alpha", "beta", "reaches"),
        [(0.5, 0.0, True), (0.0, 0.5, True), (0.0, 0.0, False)],
    )
    def test_gradient_reaches_translators_only_through_cross_and_orth(
        self, alpha: float, beta: float, reaches: bool
    ) -> None:
        cfg = tiny_config().with_overrides({"model.alpha": alpha, "model.beta": beta})
        net = build_model(cfg, schemas())
        with torch.no_grad():  # off orthogonal, so that L^orth has a non-zero gradient
            for tr in net.translators.values():
                tr.weight.add_(0.1 * torch.randn_like(tr.weight))
        compute_loss(net, batches()).total.backward()
        for d, tr in net.translators.items():
            if reaches:
                assert tr.weight.grad is not None and tr.weight.grad.abs().sum() > 0, d
            else:
                assert tr.weight.grad is None, d
        assert all(p.grad is not None for p in net.towers.parameters())

    @pytest.mark.parametrize("ablation", ["no_cross", "no_orth"])
    def test_ablations_drop_their_term(self, ablation: str) -> None:
        cfg = tiny_config().with_overrides({"model.alpha": 0.5, "model.beta": 0.5, "model.ablation": ablation})
        net = build_model(cfg, schemas())
        out = compute_loss(net, batches())
        p = out.parts
        kept = p["orth"] * 0.5 if ablation == "no_cross" else (p["cross_s"] + p["cross_t"]) * 0.5
        close(out.total.detach(), p["vani_s"] + p["vani_t"] + kept)

    @pytest.mark.parametrize("ablation", ["none", "no_cross", "no_orth"])
    @pytest.mark.parametrize("stage", [1, 2])
    def test_fast_paths_give_the_equations_loss_and_gradients(self, stage: int, ablation: str) -> None:
        cfg = tiny_config().with_overrides({"model.alpha": 0.3, "model.beta": 0.2, "model.dropout": 0.0,
                                            "model.ablation": ablation})
        net = build_model(cfg, schemas())
        with torch.no_grad():  # off orthogonal, so that every term has a gradient
            for tr in net.translators.values():
                tr.weight.add_(0.1 * torch.randn_like(tr.weight))
        model = net if stage == 1 else AugmentationNetwork.from_translation(net)
        results = {}
        for paths in (FastPaths(), FastPaths.none()):
            set_fast_paths(model, paths)
            model.zero_grad(set_to_none=True)
            out = compute_loss(model, batches())
            out.total.backward()
            results[paths] = (out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        (fast, fast_grads), (equation, equation_grads) = results.values()
        close(fast.total.detach(), equation.total.detach())
        for k in equation.parts:
            close(fast.parts[k], equation.parts[k], msg=k)
        assert fast_grads.keys() == equation_grads.keys()
        for n, g in equation_grads.items():
            torch.testing.assert_close(fast_grads[n], g, rtol=1e-4, atol=1e-6, msg=n)

    def test_missing_domain_batch(self) -> None:
        net = build_model(tiny_config(), schemas())
        with pytest.raises(KeyError, match="lack \\['book'\\]"):
            compute_loss(net, {"movie": batches()["movie"]})


class TestAugmentationObjective:
    def test_equals_hand_recomputation_of_eq_10_11(self) -> None:
        cfg = tiny_config().with_overrides({"model.beta": 0.25})
        net = build_model(cfg, schemas())
        aug = AugmentationNetwork.from_translation(net)
        with torch.no_grad():
            aug.translator.weight.add_(0.1 * torch.randn_like(aug.translator.weight))
        b = batches()
        out = compute_loss(aug, b)
        with torch.no_grad():
            z = aug.latent(b["movie"])
            w = aug.translator.weight
            z_aug = torch.cat([z, z @ w.t()], dim=1)  # Eq. 10
            l_aug = hand_bce(aug.tower(z_aug), b["movie"].label)  # Eq. 11
            orth = hand_orth(w, z)
        close(out.parts["aug"], l_aug)
        close(out.parts["orth"], orth)
        close(out.total, l_aug + 0.25 * orth)
        close(aug(b)["movie"], aug.tower(z_aug))

    def test_no_orth_ablation_gives_no_translator_gradient_from_orth(self) -> None:
        cfg = tiny_config().with_overrides({"model.ablation": "no_orth"})
        aug = AugmentationNetwork.fresh(cfg, schemas())
        out = compute_loss(aug, batches())
        close(out.total.detach(), out.parts["aug"])
        out.total.backward()
        assert aug.translator.weight.grad is not None  # through W z in the augmented input


class TestBaselineObjectives:
    def test_two_domain_sum_of_bce(self) -> None:
        model = build_model(tiny_config(model="mmoe"), schemas())
        b = batches()
        out = compute_loss(model, b)
        with torch.no_grad():
            logits = model(b)
            expected_s = hand_bce(logits["book"], b["book"].label)
            expected_t = hand_bce(logits["movie"], b["movie"].label)
        close(out.parts["bce_s"], expected_s)
        close(out.total, expected_s + expected_t)

    def test_single_domain_mlp(self) -> None:
        model = build_model(tiny_config(model="mlp"), schemas())
        out = compute_loss(model, {"movie": batches()["movie"]})
        assert set(out.parts) == {"bce_t"}

    def test_ddtcdr_orthogonality_weight(self) -> None:
        cfg = tiny_config(model="ddtcdr").with_overrides({"model.ddtcdr_orth_weight": 0.5})
        model = build_model(cfg, schemas())
        with torch.no_grad():
            model.mapping.weight.mul_(1.2)
        out = compute_loss(model, batches())
        x = model.mapping.weight.detach().double()
        reg = ((x.t() @ x - torch.eye(x.shape[0], dtype=torch.float64)) ** 2).sum()
        close(out.parts["orth"], reg)
        close(out.total.detach(), out.parts["bce_s"] + out.parts["bce_t"] + 0.5 * out.parts["orth"])

    def test_every_model_names_a_known_objective(self) -> None:
        assert {cls.objective for cls in (*MODELS.values(), AugmentationNetwork)} <= set(OBJECTIVES)

    def test_unknown_model_type(self) -> None:
        with pytest.raises(TypeError, match="Linear"):
            compute_loss(torch.nn.Linear(2, 2), batches())
