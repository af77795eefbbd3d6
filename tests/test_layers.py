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
    FastPaths,
    Gate,
    MMoE,
    PartitionedNorm,
    SharedMLPExtractor,
    StarFCN,
    Tower,
    Translator,
    mix_experts,
    row_parameters,
    set_fast_paths,
)
from cdanet.layers.translator import _GramPairing

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
    @pytest.mark.parametrize("form", ["translated", "augmented", "own_and_translated"])
    def test_tower_fast_paths_equal_their_equations(self, depth: int, form: str) -> None:
        # R(W z), R(z ⊕ W z) and (R(x), R(W z)): the folded fast path against the literal equation,
        # values and the gradients of every input and parameter.
        in_dim = 2 * D if form == "augmented" else D
        tower, tr = Tower(in_dim, 6, depth).double(), Translator(D).double()
        with torch.no_grad():
            tr.weight.add_(0.3 * torch.randn(D, D, dtype=torch.float64))  # off orthogonal
        x = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
        z = torch.randn(B + 3, D, dtype=torch.float64, requires_grad=True)
        equation = {
            "translated": lambda: (tower(tr(z)),),  # Eq. 5-6
            "augmented": lambda: (tower(torch.cat([z, tr(z)], dim=1)),),  # Eq. 10-11
            "own_and_translated": lambda: (tower(x), tower(tr(z))),  # Eq. 8 and 5/6
        }[form]()
        results = {}
        for fast in (True, False):
            tower.fast = fast
            call = getattr(tower, form)
            results[fast] = call(x, z, tr) if form == "own_and_translated" else (call(z, tr),)
        params = (x, z, tr.weight, *tower.parameters())
        for got_fast, got_eq, expected in zip(results[True], results[False], equation, strict=True):
            torch.testing.assert_close(got_eq, expected, rtol=0, atol=0)  # the equation form is the equation
            torch.testing.assert_close(got_fast, expected)
            g = torch.randn(expected.shape, dtype=torch.float64)
            grads = [torch.autograd.grad(out, params, g, retain_graph=True, allow_unused=True, materialize_grads=True)
                     for out in (got_fast, expected)]
            for a, b in zip(*grads, strict=True):
                torch.testing.assert_close(a, b)
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

    @pytest.mark.parametrize("fast", [True, False])
    def test_orthogonality_loss_fixed_values_and_batch_size_invariance(self, fast: bool) -> None:
        tr = Translator(2)
        tr.fast = fast
        with torch.no_grad():
            tr.weight.copy_(2.0 * torch.eye(2))
        z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        # W^T W z - z = 3 z, squared norm 9 for each unit row
        torch.testing.assert_close(tr.orthogonality_loss(z), torch.tensor(9.0))
        torch.testing.assert_close(tr.orthogonality_loss(z.repeat(5, 1)), torch.tensor(9.0))
        tr = Translator(4)  # orthogonal at init
        tr.fast = fast
        assert float(tr.orthogonality_loss(torch.randn(7, 4)).detach()) < 1e-10

    def test_orthogonality_loss_equation_form_is_eq_7(self) -> None:
        tr = Translator(4).double()
        tr.fast = False
        with torch.no_grad():
            tr.weight.copy_(torch.randn(4, 4, dtype=torch.float64))
        z = torch.randn(6, 4, dtype=torch.float64)
        w = tr.weight.detach()
        per_sample = [((w.t() @ (w @ row.unsqueeze(1)) - row.unsqueeze(1)) ** 2).sum() for row in z]  # column vectors
        torch.testing.assert_close(tr.orthogonality_loss(z).detach(), torch.stack(per_sample).mean())

    def test_orthogonality_loss_gram_form_equals_the_equation_with_its_gradients(self) -> None:
        tr = Translator(8).double()
        with torch.no_grad():
            tr.weight.copy_(torch.randn(8, 8, dtype=torch.float64))
        z = torch.randn(300, 8, dtype=torch.float64, requires_grad=True)
        values = {}
        for fast in (True, False):
            tr.fast = fast
            loss = tr.orthogonality_loss(z)
            values[fast] = (loss, *torch.autograd.grad(loss, (tr.weight, z)))
        for got, expected in zip(values[True], values[False], strict=True):
            torch.testing.assert_close(got, expected)

    def test_gram_pairing_gradients_for_any_square_matrix(self) -> None:
        # orthogonality_loss passes a symmetric A; the one-GEMM backward Z (A + A^T) / B holds for any A.
        a = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
        z = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(_GramPairing.apply, (a, z))
        torch.testing.assert_close(_GramPairing.apply(a, z), (z @ a * z).sum() / 9)

    def test_gram_pairing_backward_with_autocast_dtypes(self) -> None:
        # Under autocast A (from W's matmuls) can be half while Z stays float32; the backward runs
        # without autocast and must still produce each input's own dtype.
        a = torch.randn(4, 4, dtype=torch.float16, requires_grad=True)
        z = torch.randn(6, 4, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.float16):
            value = _GramPairing.apply(a, z)
        value.float().backward()
        assert z.grad is not None and z.grad.dtype == torch.float32 and torch.isfinite(z.grad).all()
        assert a.grad is not None and a.grad.dtype == torch.float16

    def test_orthogonality_penalty(self) -> None:
        tr = Translator(3)
        with torch.no_grad():
            tr.weight.copy_(torch.eye(3))
        assert float(tr.orthogonality_penalty().detach()) == 0.0
        with torch.no_grad():
            tr.weight.mul_(2.0)
        torch.testing.assert_close(tr.orthogonality_penalty(), torch.tensor(27.0))  # 9 entries of (4 - 1)^2


class TestFastPaths:
    def test_set_fast_paths_switches_every_block(self) -> None:
        model = torch.nn.ModuleDict({"tower": Tower(D, 6, 2), "translator": Translator(D),
                                     "embedding": DomainEmbedding(movie_schema(), D, E)})
        built = FastPaths(folded_maps=model["tower"].fast, gram_orth=model["translator"].fast,
                          sparse_rows=model["embedding"].sparse_grad)
        assert built == FastPaths()  # what a freshly built block uses
        set_fast_paths(model, FastPaths.none())
        assert not model["tower"].fast and not model["translator"].fast
        set_fast_paths(model, FastPaths(folded_maps=False, gram_orth=True, sparse_rows=True))
        assert not model["tower"].fast and model["translator"].fast and model["embedding"].sparse_grad
        sparse, dense = row_parameters(model)
        assert sparse == [model["embedding"].weight] and dense == []


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
