"""One test class per block of cdanet.layers: shapes, the maths each block claims, bad configs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import book_schema, movie_schema

from cdanet.batch import random_batch
from cdanet.layers import (
    CGC,
    MLP,
    PLE,
    AuxiliaryNetwork,
    DomainEmbedding,
    ExpertBank,
    Gate,
    MMoE,
    PartitionedNorm,
    SharedMLPExtractor,
    StarFCN,
    Tower,
    Translator,
    mix_experts,
)

B, D, E = 16, 8, 4


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1)


class TestDomainEmbedding:
    @pytest.mark.parametrize("combiner", ["linear", "concat", "sum"])
    @pytest.mark.parametrize("schema_fn", [movie_schema, book_schema])
    def test_shapes(self, combiner: str, schema_fn) -> None:
        schema = schema_fn()
        emb = DomainEmbedding(schema, d=D, embedding_dim=E, combiner=combiner)
        batch = random_batch(schema, B, gen())
        width = D if combiner == "linear" else E
        assert emb.field_embeddings(batch.features).shape == (B, 5, width)
        h = emb(batch.features)
        assert h.shape == (B, D) and h.dtype == torch.float32
        if combiner == "linear":
            assert emb.proj is None and emb.weight.shape == (emb.num_rows, D)
        else:
            assert emb.proj.in_features == (5 * E if combiner == "concat" else E)

    @pytest.mark.parametrize("combiner", ["linear", "sum"])
    def test_pooled_combiners_sum_the_field_vectors(self, combiner: str) -> None:
        schema = book_schema()  # has a multi-hot field, so the pooling weights are exercised
        emb = DomainEmbedding(schema, d=D, embedding_dim=E, combiner=combiner)
        batch = random_batch(schema, B, gen())
        summed = emb.field_embeddings(batch.features).sum(dim=1)
        if combiner == "linear":  # h = W x + b: the field vectors' sum plus one bias
            with torch.no_grad():
                emb.bias.normal_()
            torch.testing.assert_close(emb(batch.features), summed + emb.bias)
        else:
            torch.testing.assert_close(emb(batch.features), emb.proj(summed))

    @pytest.mark.parametrize("pool", [False, True])
    def test_lookup_gradient_equals_torch_embedding(self, pool: bool) -> None:
        from cdanet.layers.embeddings import _Lookup

        weight = torch.randn(20, 3, dtype=torch.float64, requires_grad=True)
        idx = torch.randint(0, 20, (50, 4))
        idx[:5] = 7  # repeated rows must accumulate
        slot_weights = torch.rand(50, 4, dtype=torch.float64) if pool else None
        grad_out = torch.randn(50, 3, dtype=torch.float64) if pool else torch.randn(50, 4, 3, dtype=torch.float64)
        ours = _Lookup.apply(weight, idx, slot_weights, pool)
        ref = (F.embedding_bag(idx, weight, mode="sum", per_sample_weights=slot_weights) if pool
               else F.embedding(idx, weight))
        torch.testing.assert_close(ours, ref)
        (g_ours,) = torch.autograd.grad(ours, weight, grad_out)
        (g_ref,) = torch.autograd.grad(ref, weight, grad_out)
        torch.testing.assert_close(g_ours, g_ref)

    def test_table_rows_per_field(self) -> None:
        schema = book_schema()
        emb = DomainEmbedding(schema, d=D, embedding_dim=E)
        assert emb.num_rows == 60 + 70 + 12 + 11
        for f in schema.fields:
            if f.is_categorical:
                assert emb.table(f.name).shape == (f.vocab_size, emb.width)
        assert set(emb.dense) == {"title"}
        with pytest.raises(KeyError, match="genre"):
            emb.table("genre")

    def test_categorical_lookup_reads_its_own_field_rows(self) -> None:
        schema = movie_schema()
        emb = DomainEmbedding(schema, d=D, embedding_dim=E)
        batch = random_batch(schema, B, gen())
        fields = emb.field_embeddings(batch.features)
        pos = emb.field_order.index("director")
        assert torch.equal(fields[:, pos], emb.table("director")[batch.features["director"]])
        # the OOV index 0 of a categorical field is a learned vector, not padding
        assert emb.table("genre")[0].abs().sum() > 0

    def test_multi_hot_mean_ignores_padding_and_empty_rows_are_zero(self) -> None:
        schema = book_schema()
        emb = DomainEmbedding(schema, d=D, embedding_dim=E)
        batch = random_batch(schema, 4, gen())
        batch.features["category"] = torch.tensor([[3, 0, 0], [2, 5, 0], [0, 0, 0], [7, 7, 4]])
        pooled = emb.field_embeddings(batch.features)[:, emb.field_order.index("category")]
        table = emb.table("category")
        expected = torch.stack([
            table[3],
            (table[2] + table[5]) / 2,
            torch.zeros(emb.width),
            (2 * table[7] + table[4]) / 3,
        ])
        torch.testing.assert_close(pooled, expected)
        # the padding row gets no gradient from the pooled output
        pooled.sum().backward()
        grad = emb.weight.grad
        start = 60 + 70 + 11  # fused rows: the categorical fields in schema order, then multi-hot
        assert emb.field_order == ("user_id", "item_id", "writer", "category", "title")
        assert torch.all(grad[start] == 0)
        torch.testing.assert_close(grad[start + 3], torch.ones(emb.width))
        torch.testing.assert_close(grad[start + 7], torch.full((emb.width,), 2 / 3))

    def test_only_own_domain_fields(self) -> None:
        movie_emb = DomainEmbedding(movie_schema(), d=D, embedding_dim=E)
        book_batch = random_batch(book_schema(), B, gen())
        assert set(movie_emb.field_order) == {"user_id", "item_id", "genre", "director", "title"}
        with pytest.raises(KeyError, match="no field 'genre'"):
            movie_emb(book_batch.features)

    def test_bad_inputs_are_named(self) -> None:
        schema = book_schema()
        emb = DomainEmbedding(schema, d=D, embedding_dim=E)
        batch = random_batch(schema, B, gen())
        batch.features["writer"] = batch.features["writer"].clone()
        batch.features["writer"][0] = 11
        with pytest.raises(IndexError, match="'writer'.*vocab_size 11"):
            emb(batch.features)
        batch = random_batch(schema, B, gen())
        batch.features["category"] = batch.features["category"][:, :2]
        with pytest.raises(ValueError, match="'category'.*\\[B, 3\\]"):
            emb(batch.features)
        batch = random_batch(schema, B, gen())
        batch.features["title"] = torch.randn(B, 4)
        with pytest.raises(ValueError, match="'title'.*\\[B, 5\\]"):
            emb(batch.features)

    def test_bad_config(self) -> None:
        with pytest.raises(ValueError, match="combiner"):
            DomainEmbedding(movie_schema(), d=D, embedding_dim=E, combiner="max")
        with pytest.raises(ValueError, match="d and embedding_dim"):
            DomainEmbedding(movie_schema(), d=0, embedding_dim=E)


class TestMLPAndTower:
    def test_mlp(self) -> None:
        mlp = MLP(5, [7, 3], dropout=0.1)
        assert mlp(torch.randn(B, 5)).shape == (B, 3)
        assert sum(isinstance(m, torch.nn.Linear) for m in mlp.modules()) == 2
        assert MLP(5, [])(torch.ones(2, 5)).equal(torch.ones(2, 5))
        with pytest.raises(ValueError, match="widths"):
            MLP(5, [0])

    @pytest.mark.parametrize("depth", [1, 2, 3])
    def test_tower_depth_counts_logit_layer(self, depth: int) -> None:
        tower = Tower(D, 6, depth)
        out = tower(torch.randn(B, D))
        assert out.shape == (B,)
        assert sum(isinstance(m, torch.nn.Linear) for m in tower.modules()) == depth

    def test_tower_bad_depth(self) -> None:
        with pytest.raises(ValueError, match="depth"):
            Tower(D, 6, 0)

    @pytest.mark.parametrize("depth", [1, 2, 3])
    def test_tower_first_with_an_input_map_equals_the_tower_on_the_mapped_rows(self, depth: int) -> None:
        tower = Tower(2 * D, 6, depth).double()
        x = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
        m = torch.randn(2 * D, D, dtype=torch.float64, requires_grad=True)  # e.g. [I ; W] of Eq. 10
        torch.testing.assert_close(tower.rest(tower.first(x @ m.t())), tower(x @ m.t()))
        folded = tower.rest(tower.first(x, input_map=m))
        mapped = tower(x @ m.t())
        torch.testing.assert_close(folded, mapped)
        params = (x, m, *tower.parameters())
        g = torch.randn(B, dtype=torch.float64)
        for got, expected in zip(torch.autograd.grad(folded, params, g), torch.autograd.grad(mapped, params, g),
                                 strict=True):
            torch.testing.assert_close(got, expected)
        assert set(tower.state_dict()) == {f"body.net.{2 * i}.{p}" for i in range(depth - 1) for p in ("weight", "bias")} | {
            "logit.weight", "logit.bias"}


class TestExpertBank:
    def test_equals_independent_mlps(self) -> None:
        k, layers = 3, 3
        bank = ExpertBank(k, 5, D, layers)
        x = torch.randn(B, 5)
        out = bank(x)
        assert out.shape == (k, B, D)
        w1 = bank.first.weight.view(k, D, 5)
        b1 = bank.first.bias.view(k, D)
        for i in range(k):
            y = F.relu(x @ w1[i].t() + b1[i])
            for w, b in zip(bank.weights, bank.biases, strict=True):
                y = F.relu(y @ w[i] + b[i, 0])
            torch.testing.assert_close(out[i], y)

    def test_bad_config(self) -> None:
        with pytest.raises(ValueError, match="K"):
            ExpertBank(0, D, D, 2)
        with pytest.raises(ValueError, match="layers"):
            ExpertBank(2, D, D, 0)


class TestMMoE:
    def test_shapes_gates_and_mixture(self) -> None:
        mmoe = MMoE(("movie", "book"), D, num_experts=3, expert_layers=2, gate_layers=2)
        h = {"movie": torch.randn(B, D), "book": torch.randn(B + 3, D)}
        z = mmoe(h)
        assert z["movie"].shape == (B, D) and z["book"].shape == (B + 3, D)
        g = mmoe.gate_weights(h)
        assert g["book"].shape == (B + 3, 3)
        torch.testing.assert_close(g["book"].sum(1), torch.ones(B + 3))
        f = mmoe.experts(h["book"])
        expected = sum(g["book"][:, i : i + 1] * f[i] for i in range(3))
        torch.testing.assert_close(z["book"], expected)

    def test_fused_domains_equal_separate_calls(self) -> None:
        mmoe = MMoE(("movie", "book"), D, 2, 2, 2)
        h = {"movie": torch.randn(B, D), "book": torch.randn(5, D)}
        both = mmoe(h)
        torch.testing.assert_close(both["book"], mmoe({"book": h["book"]})["book"])
        torch.testing.assert_close(both["movie"], mmoe({"movie": h["movie"]})["movie"])

    def test_gates_are_per_domain(self) -> None:
        mmoe = MMoE(("movie", "book"), D, 2, 2, 2)
        h = torch.randn(B, D)
        assert not torch.allclose(mmoe({"movie": h})["movie"], mmoe({"book": h})["book"])

    def test_bad_config_and_unknown_domain(self) -> None:
        with pytest.raises(ValueError, match="K"):
            MMoE(("movie",), D, 0, 2, 2)
        with pytest.raises(KeyError, match="rec"):
            MMoE(("movie", "book"), D, 2, 2, 2)({"rec": torch.randn(2, D)})


class TestSharedMLPExtractor:
    def test_one_mlp_for_all_domains(self) -> None:
        ext = SharedMLPExtractor(("movie", "book"), D, layers=2)
        h = torch.randn(B, D)
        out = ext({"movie": h, "book": h[:5]})
        assert out["movie"].shape == (B, D)
        torch.testing.assert_close(out["book"], out["movie"][:5])


class TestGate:
    def test_softmax_rows(self) -> None:
        gate = Gate(D, 4, layers=0)
        g = gate(torch.randn(B, D))
        assert g.shape == (B, 4) and torch.all(g > 0)
        torch.testing.assert_close(g.sum(1), torch.ones(B))


class TestMixExperts:
    def test_weighted_sum(self) -> None:
        f = torch.arange(2 * 1 * 3, dtype=torch.float32).view(2, 1, 3)
        g = torch.tensor([[0.25, 0.75]])
        torch.testing.assert_close(mix_experts(f, g), 0.25 * f[0] + 0.75 * f[1])


class TestTranslator:
    def test_orthogonal_init_and_maps(self) -> None:
        tr = Translator(D)
        w = tr.weight.detach()
        torch.testing.assert_close(w.t() @ w, torch.eye(D), atol=1e-5, rtol=0)
        z = torch.randn(B, D)
        torch.testing.assert_close(tr(z), (w @ z.t()).t())
        torch.testing.assert_close(tr.transpose(tr(z)), z, atol=1e-5, rtol=0)
        assert not any(n.endswith("bias") for n, _ in tr.named_parameters())

    def test_bad_config(self) -> None:
        with pytest.raises(ValueError, match="d >= 1"):
            Translator(0)


class TestCGCAndPLE:
    def test_cgc_shapes_and_last_level(self) -> None:
        doms = ("movie", "book")
        x = {"movie": torch.randn(B, D), "book": torch.randn(5, D)}
        out, shared = CGC(doms, D, 6, 2, 1, 2, 1, last=False)(x, x)
        assert out["book"].shape == (5, 6) and shared is not None and shared["movie"].shape == (B, 6)
        out, shared = CGC(doms, D, 6, 2, 1, 2, 1, last=True)(x, x)
        assert shared is None

    def test_ple_rows_use_only_their_domain_specific_experts(self) -> None:
        ple = PLE(("movie", "book"), D, levels=3, n_shared=1, n_specific=2, expert_layers=1, gate_layers=1)
        h = {"movie": torch.randn(B, D), "book": torch.randn(5, D)}
        before = ple(h)
        assert before["movie"].shape == (B, D) and len(ple.levels) == 3
        with torch.no_grad():
            for level in ple.levels:
                for p in level.specific_experts["book"].parameters():
                    p.add_(1.0)
        after = ple(h)
        torch.testing.assert_close(after["movie"], before["movie"])
        assert not torch.allclose(after["book"], before["book"])

    def test_bad_config(self) -> None:
        with pytest.raises(ValueError, match="levels"):
            PLE(("movie", "book"), D, 1, 1, 1, 1, 1)
        with pytest.raises(ValueError, match="shared and specific"):
            CGC(("movie",), D, D, 0, 1, 1, 1, last=True)


class TestStar:
    def test_partitioned_norm_keeps_per_domain_statistics(self) -> None:
        pn = PartitionedNorm(("movie", "book"), D)
        x = torch.randn(64, D) * 3 + 5
        y = pn(x, "movie")
        assert y.shape == (64, D)
        torch.testing.assert_close(y.mean(0), torch.zeros(D), atol=1e-5, rtol=0)
        assert not torch.allclose(pn.norms["movie"].running_mean, torch.zeros(D))
        assert torch.equal(pn.norms["book"].running_mean, torch.zeros(D))
        with torch.no_grad():
            pn.domain_gamma["movie"].fill_(2.0)
            pn.gamma.fill_(3.0)
            pn.beta.fill_(1.0)
        torch.testing.assert_close(pn(x, "movie").std(0, unbiased=False), torch.full((D,), 6.0), rtol=1e-3, atol=0)

    def test_partitioned_norm_single_row_batch(self) -> None:
        pn = PartitionedNorm(("movie",), D)
        before = pn.norms["movie"].running_mean.clone()
        assert pn(torch.randn(1, D), "movie").shape == (1, D)
        assert torch.equal(pn.norms["movie"].running_mean, before)

    def test_star_fcn_weights_are_shared_times_domain(self) -> None:
        fcn = StarFCN(("movie", "book"), [D, 6, 1])
        x = torch.randn(B, D)
        torch.testing.assert_close(fcn(x, "movie"), fcn(x, "book"))  # domain weights start at one
        with torch.no_grad():
            fcn.domain_weights["book"][0].mul_(torch.rand(6, D))
            fcn.domain_biases["book"][1].add_(0.5)
        dw, db = fcn.domain_weights["book"], fcn.domain_biases["book"]
        hidden = F.relu(x @ (fcn.weights[0] * dw[0]).t() + fcn.biases[0] + db[0])
        expected = hidden @ (fcn.weights[1] * dw[1]).t() + fcn.biases[1] + db[1]
        out = fcn(x, "book")
        assert out.shape == (B, 1)
        torch.testing.assert_close(out, expected)
        assert not torch.allclose(out, fcn(x, "movie"))

    def test_auxiliary_network(self) -> None:
        aux = AuxiliaryNetwork(("movie", "book"), D, hidden=5)
        x = torch.randn(B, D)
        assert aux(x, "movie").shape == (B,)
        assert not torch.allclose(aux(x, "movie"), aux(x, "book"))

    def test_bad_config(self) -> None:
        with pytest.raises(ValueError, match="widths"):
            StarFCN(("movie",), [D])

    def test_equals_eq4_for_three_experts(self) -> None:
        f, g = torch.randn(3, B, D), torch.softmax(torch.randn(B, 3), dim=1)
        torch.testing.assert_close(mix_experts(f, g), torch.einsum("kbd,bk->bd", f, g))
