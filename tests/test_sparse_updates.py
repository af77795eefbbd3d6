"""The sparse embedding path: coalesced table gradients and Adam on them (``train.embedding_update``).

Both the C kernels (:mod:`cdanet.native`) and their torch fallbacks are checked against torch's own
dense computations: ``F.embedding_bag`` / ``F.embedding`` gradients and ``torch.optim.Adam``.
"""

from __future__ import annotations

import copy
import shutil

import helpers
import pytest
import torch
import torch.nn.functional as F

import cdanet.native as native
from cdanet.batch import random_batch
from cdanet.config import ConfigError, ExperimentConfig, tiny_config
from cdanet.layers import row_parameters, set_fast_paths
from cdanet.layers.embeddings import _Lookup
from cdanet.losses import compute_loss
from cdanet.models import build_model
from cdanet.training import optim
from cdanet.training.optim import TableAdam, make_optimizer, training_fast_paths


@pytest.fixture(params=["native", "torch"])
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once with the C kernels and once with the torch fallback."""
    if request.param == "native":
        if native.library() is None:
            pytest.skip("no C compiler here")
    else:
        monkeypatch.setattr(native, "library", lambda: None)
    return request.param


def test_the_c_kernels_build_where_there_is_a_compiler() -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here")
    lib = native.library()
    assert lib is not None and lib.path.exists()


@pytest.mark.parametrize("pool", [True, False])
@pytest.mark.parametrize("weighted", [True, False])
def test_coalesced_gradient_equals_the_dense_embedding_gradient(kernels: str, pool: bool, weighted: bool) -> None:
    torch.manual_seed(0)
    rows, e = 40, 5
    weight = torch.randn(rows, e, requires_grad=True)
    idx = torch.randint(0, rows, (64, 4))
    idx[:6] = 9  # a row repeated within and across slots must accumulate
    slot_weights = torch.rand(64, 4) if weighted else None
    grad_out = torch.randn(64, e) if pool else torch.randn(64, 4, e)
    ref = (F.embedding_bag(idx, weight, mode="sum", per_sample_weights=slot_weights) if pool
           else F.embedding(idx, weight) * (slot_weights[..., None] if weighted else 1))
    (dense,) = torch.autograd.grad(ref, weight, grad_out)

    got_rows, values = native.coalesce_grad(idx, grad_out, slot_weights, pool, rows)
    assert torch.equal(got_rows, torch.unique(idx))  # distinct, ascending
    torch.testing.assert_close(values, dense[got_rows])
    untouched = torch.ones(rows, dtype=torch.bool)
    untouched[got_rows] = False
    assert torch.all(dense[untouched] == 0)


def test_sparse_lookup_gradient_is_the_coalesced_dense_one(kernels: str) -> None:
    weight = torch.randn(30, 4, requires_grad=True)
    idx = torch.randint(0, 30, (50, 3))
    slot_weights = torch.rand(50, 3)
    grad_out = torch.randn(50, 4)
    (sparse,) = torch.autograd.grad(_Lookup.apply(weight, idx, slot_weights, True, True), weight, grad_out)
    (dense,) = torch.autograd.grad(_Lookup.apply(weight, idx, slot_weights, True, False), weight, grad_out)
    assert sparse.is_sparse and sparse.is_coalesced()
    torch.testing.assert_close(sparse.to_dense(), dense)


@pytest.mark.parametrize("pool", [True, False])
@pytest.mark.parametrize("weighted", [True, False])
def test_dense_lookup_gradient_is_bitwise_one_index_add_per_slot(pool: bool, weighted: bool) -> None:
    """The C kernel of ``index_add_slots_`` adds in the torch path's order and rounding: equal bits, not close."""
    if native.library() is None:
        pytest.skip("no C compiler here")
    g = torch.Generator().manual_seed(0)
    rows, e, b, s = 30, 64, 512, 11  # a profile table: few rows, each hit hundreds of times per slot
    idx = torch.randint(0, rows, (b, s), generator=g)
    slot_weights = torch.randn(b, s, generator=g) if weighted else None
    grad = torch.randn(b, e, generator=g) if pool else torch.randn(b, s, e, generator=g)
    start = torch.randn(rows, e, generator=g)
    got = native.index_add_slots_(start.clone(), idx, grad, slot_weights, pool)
    want = start.clone()
    for slot in range(s):  # the torch ops the kernel replaces
        rows_grad = grad if pool else grad[:, slot]
        want.index_add_(0, idx[:, slot], rows_grad if slot_weights is None else rows_grad * slot_weights[:, slot, None])
    assert torch.equal(got, want)
    # ... and the same through _Lookup's backward, with the kernel off (the torch path itself)
    weight = torch.randn(rows, e, requires_grad=True)
    (with_c,) = torch.autograd.grad(_Lookup.apply(weight, idx, slot_weights, pool, False), weight, grad)
    library = native.library
    try:
        native.library = lambda: None
        (with_torch,) = torch.autograd.grad(_Lookup.apply(weight, idx, slot_weights, pool, False), weight, grad)
    finally:
        native.library = library
    assert torch.equal(with_c, with_torch)


def test_dense_lookup_gradient_kernel_checks_rows_and_shapes_before_writing() -> None:
    if native.library() is None:
        pytest.skip("no C compiler here")
    untouched = torch.zeros(10, 2)
    with pytest.raises(IndexError, match=r"outside \[0, 10\)"):  # the bad row comes last: nothing written before
        native.index_add_slots_(untouched, torch.tensor([[1, 2], [3, 10]]), torch.ones(2, 2), None, True)
    with pytest.raises(IndexError):
        native.index_add_slots_(untouched, torch.tensor([[1, 2], [3, -1]]), torch.ones(2, 2), None, True)
    with pytest.raises(ValueError, match="do not fit"):  # per-slot gradient rows missing
        native.index_add_slots_(untouched, torch.tensor([[1, 2]]), torch.ones(1, 2), None, False)
    with pytest.raises(ValueError, match="do not fit"):
        native.index_add_slots_(untouched, torch.tensor([[1, 2]]), torch.ones(1, 2), torch.ones(1, 3), True)
    assert not untouched.any()


def _adam_reference(p, m, v, grad, step, lr, betas, eps, wd):
    """One step of torch.optim.Adam on a dense copy whose moments start at (m, v) after ``step - 1`` steps."""
    param = torch.nn.Parameter(p.clone())
    opt = torch.optim.Adam([param], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    opt.state[param] = {"step": torch.tensor(float(step - 1)), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
    param.grad = grad.clone()
    opt.step()
    return param.detach(), opt.state[param]["exp_avg"], opt.state[param]["exp_avg_sq"]


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("lazy", [True, False])
def test_adam_rows_match_torch_adam(kernels: str, weight_decay: float, lazy: bool) -> None:
    torch.manual_seed(1)
    rows, e, step = 50, 8, 7
    p, m, v = torch.randn(rows, e), 0.01 * torch.randn(rows, e), 0.01 * torch.rand(rows, e)
    touched = torch.tensor([0, 3, 4, 17, 49])
    values = torch.randn(len(touched), e)
    dense_grad = torch.zeros(rows, e)
    dense_grad[touched] = values
    ref_p, ref_m, ref_v = _adam_reference(p, m, v, dense_grad, step, 1e-2, (0.9, 0.999), 1e-8, weight_decay)

    p2, m2, v2 = p.clone(), m.clone(), v.clone()
    native.adam_rows_(p2, m2, v2, touched, values, lazy=lazy, step=step, lr=1e-2, beta1=0.9, beta2=0.999,
                      eps=1e-8, weight_decay=weight_decay)
    for got, ref in ((p2, ref_p), (m2, ref_m), (v2, ref_v)):
        torch.testing.assert_close(got[touched], ref[touched])
    others = torch.ones(rows, dtype=torch.bool)
    others[touched] = False
    assert not torch.equal(ref_p[others], p[others])  # dense Adam keeps moving them on momentum
    if lazy:
        for got, before in ((p2, p), (m2, m), (v2, v)):
            assert torch.equal(got[others], before[others])  # lazy: not touched at all
    else:
        for got, ref in ((p2, ref_p), (m2, ref_m), (v2, ref_v)):
            torch.testing.assert_close(got, ref)  # every row, as torch.optim.Adam


def test_dense_adam_rows_split_across_threads_match_one_thread(kernels: str) -> None:
    # The C kernel gives each thread a contiguous range of rows and finds its first gradient row by
    # binary search; ranges must neither skip nor repeat rows, whatever the thread count.
    torch.manual_seed(2)
    rows, e = 1003, 4
    touched = torch.randperm(rows)[:300].sort().values
    values = torch.randn(300, e)
    results = []
    for threads in (1, 2, 3):
        p, m, v = torch.ones(rows, e), torch.full((rows, e), 0.1), torch.full((rows, e), 0.01)
        with _threads(threads):
            native.adam_rows_(p, m, v, touched, values, lazy=False, step=3, lr=1e-2, beta1=0.9, beta2=0.999,
                              eps=1e-8, weight_decay=0.0)
        results.append((p, m, v))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


class _threads:
    def __init__(self, n: int) -> None:
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self) -> None:
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


def _tiny_cdanet() -> tuple[torch.nn.Module, dict]:
    schemas = helpers.schemas()
    return build_model(tiny_config("amazon", model="cdanet"), schemas).train(), schemas


def _train(model, schemas, update: str, steps: int) -> TableAdam:
    set_fast_paths(model, training_fast_paths(torch.device("cpu"), update))  # as the trainer does
    opt = make_optimizer(model, 0.01, 0.0, torch.device("cpu"), update)
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        batches = {d: random_batch(schemas[d], 16, gen) for d in ("movie", "book")}
        opt.zero_grad(set_to_none=True)
        compute_loss(model, batches).total.backward()
        opt.step()
    return opt


def test_lazy_and_dense_adam_agree_on_the_first_step_and_then_differ(kernels: str) -> None:
    # From zero moments, rows a step did not look up get no update from dense Adam either, so one
    # step is the same; after that, dense Adam keeps moving rows on their momentum and lazy does not.
    torch.manual_seed(0)
    model, schemas = _tiny_cdanet()
    lazy, dense = copy.deepcopy(model), copy.deepcopy(model)
    opt = _train(lazy, schemas, "lazy", 1)
    _train(dense, schemas, "dense", 1)
    assert isinstance(opt, TableAdam) and opt.lazy
    sparse_rows, dense_rows = row_parameters(lazy)
    assert sparse_rows and not dense_rows and all(p.grad.is_sparse for p in sparse_rows)
    for (name, a), b in zip(lazy.named_parameters(), dense.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    _train(lazy, schemas, "lazy", 2)
    _train(dense, schemas, "dense", 2)
    tables = [n for n, _ in lazy.named_parameters() if n.startswith("embeddings.") and n.endswith(".weight")]
    assert tables
    lazy_p, dense_p = dict(lazy.named_parameters()), dict(dense.named_parameters())
    assert any(not torch.allclose(lazy_p[n], dense_p[n]) for n in tables)


def test_dense_update_equals_torch_adam_on_dense_gradients(kernels: str) -> None:
    # train.embedding_update=dense: sparse table gradients (with the C kernels) or dense ones (without),
    # the same training as torch.optim.Adam with the dense gradients of the _Lookup backward.
    torch.manual_seed(0)
    model, schemas = _tiny_cdanet()
    ours, ref = copy.deepcopy(model), copy.deepcopy(model)
    opt = _train(ours, schemas, "dense", 3)
    assert not opt.lazy
    sparse_rows, dense_rows = row_parameters(ours)
    assert (sparse_rows and not dense_rows) if kernels == "native" else (dense_rows and not sparse_rows)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01, fused=True)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        batches = {d: random_batch(schemas[d], 16, gen) for d in ("movie", "book")}
        ref_opt.zero_grad(set_to_none=True)
        compute_loss(ref, batches).total.backward()
        ref_opt.step()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_optimizer_state_loads_into_adam_and_back() -> None:
    model, schemas = _tiny_cdanet()
    opt = _train(model, schemas, "lazy", 2)
    state = opt.state_dict()
    dense = torch.optim.Adam(model.parameters(), lr=0.01)
    dense.load_state_dict(state)
    again = TableAdam(model.parameters(), lr=0.01)
    again.load_state_dict(dense.state_dict())
    for a, b in zip(opt.state.values(), again.state.values(), strict=True):
        assert a.keys() == b.keys() == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_embedding_update_is_rejected() -> None:
    model, _ = _tiny_cdanet()
    with pytest.raises(ValueError, match="embedding_update"):
        make_optimizer(model, 0.01, 0.0, torch.device("cpu"), "sparse")
    with pytest.raises(ValueError, match="embedding_update"):
        training_fast_paths(torch.device("cpu"), "sparse")
    cfg = ExperimentConfig()
    cfg.train.embedding_update = "sparse"
    with pytest.raises(ConfigError, match="embedding_update"):
        cfg.validate()


def test_auto_update_is_catchup_from_a_table_size_on(monkeypatch) -> None:
    model, _ = _tiny_cdanet()
    size = optim.table_parameters(model)
    assert size == sum(p.numel() for p in (*row_parameters(model)[0], *row_parameters(model)[1])) > 0
    assert optim.resolve_embedding_update("auto", 0, model) == ("dense", 1)  # tiny tables
    assert optim.resolve_embedding_update("lazy", 0, model) == ("lazy", 1)
    assert optim.resolve_embedding_update("dense", 7, model) == ("dense", 7)  # explicit values stay
    monkeypatch.setattr(optim, "AUTO_CATCHUP_PARAMETERS", size)
    assert optim.resolve_embedding_update("auto", 0, model) == ("catchup", optim.CATCHUP_AVERAGE_EVERY)
    assert optim.resolve_embedding_update("auto", 4, model) == ("catchup", 4)
    monkeypatch.setattr(optim, "AUTO_CATCHUP_PARAMETERS", size + 1)
    assert optim.resolve_embedding_update("auto", 0, model) == ("dense", 1)
    for unresolved in ("auto", "sparse"):  # the optimiser takes a decided update only
        with pytest.raises(ValueError, match="resolve 'auto'"):
            make_optimizer(model, 0.01, 0.0, torch.device("cpu"), unresolved)
    with pytest.raises(ValueError, match="unknown embedding_update 'sparse'"):
        optim.resolve_embedding_update("sparse", 0, model)
    with pytest.raises(ConfigError, match=r"train\.weight_average_every must be >= 1, or 0 for auto, got -1"):
        ExperimentConfig().with_overrides(["train.weight_average_every=-1"]).validate()


def test_lazy_updates_need_sparse_row_gradients() -> None:
    model, _ = _tiny_cdanet()  # as built: dense table gradients
    with pytest.raises(ValueError, match="sparse rows"):
        make_optimizer(model, 0.01, 0.0, torch.device("cpu"), "lazy")
    assert training_fast_paths(torch.device("cpu"), "lazy").sparse_rows
    assert not training_fast_paths(torch.device("cuda"), "dense").sparse_rows


@pytest.mark.parametrize("lazy", [False, True])
def test_uncoalesced_sparse_gradients_are_summed_per_row(kernels: str, lazy: bool) -> None:
    # A table used twice in one graph gets its two sparse gradients concatenated, rows repeated and
    # out of order; the optimiser must sum them per row like the dense gradient does.
    torch.manual_seed(4)
    table = torch.nn.Parameter(torch.randn(10, 3))
    ref = torch.nn.Parameter(table.detach().clone())
    rows = torch.tensor([[7, 2, 7, 0]])
    values = torch.randn(4, 3)
    table.grad = torch.sparse_coo_tensor(rows, values, (10, 3), check_invariants=True)
    ref.grad = table.grad.to_dense()
    TableAdam([table], lr=0.1, lazy=lazy).step()
    torch.optim.Adam([ref], lr=0.1).step()
    torch.testing.assert_close(table.detach(), ref.detach())  # first step: lazy and dense agree


def test_strictly_ascending(kernels: str) -> None:
    assert native.strictly_ascending(torch.tensor([0, 2, 9]))
    assert native.strictly_ascending(torch.tensor([], dtype=torch.long))
    assert native.strictly_ascending(torch.tensor([4]))
    assert not native.strictly_ascending(torch.tensor([0, 2, 2]))
    assert not native.strictly_ascending(torch.tensor([3, 1]))


@pytest.fixture
def fresh_library():
    """``native.library()`` rebuilt from scratch inside the test, and again for the tests after it."""
    native.library.cache_clear()
    yield native.library
    native.library.cache_clear()


def test_native_switch_turns_the_kernels_off(fresh_library, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    assert fresh_library() is None


def test_unusable_compiler_falls_back_to_torch_ops(fresh_library, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    with caplog.at_level("WARNING", logger="cdanet.native"):
        assert fresh_library() is None
    assert "uses torch ops" in caplog.text
    # ... and the sparse path still computes the right thing
    rows, values = native.coalesce_grad(torch.tensor([[3, 1], [3, 0]]), torch.ones(2, 2), None, True, 5)
    assert rows.tolist() == [0, 1, 3] and values.tolist() == [[1, 1], [1, 1], [2, 2]]


def test_unwritable_cache_builds_in_a_temporary_folder(fresh_library, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(native.ENV_CACHE, str(blocker / "cache"))  # cannot be created: its parent is a file
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    lib = fresh_library()
    assert lib is not None and lib.path.parent.parent == tmp_path / "tmp"
    # A second process finds the built file instead of compiling again.
    native.library.cache_clear()
    assert fresh_library().path == lib.path


def test_kernels_reject_what_would_corrupt_memory(kernels: str) -> None:
    with pytest.raises(IndexError):
        native.coalesce_grad(torch.tensor([[1, 10]]), torch.ones(1, 2), None, True, 10)
    table, m, v = torch.zeros(5, 2), torch.zeros(5, 2), torch.zeros(5, 2)
    with pytest.raises(ValueError, match="ascending"):
        native.adam_rows_(table, m, v, torch.tensor([3, 1]), torch.ones(2, 2), lazy=False, step=1, lr=0.1,
                          beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)


def _table_run(mode: str, weight_decay: float, steps: int = 600, rows: int = 400) -> torch.Tensor:
    """A table trained on sparse row gradients where row r is looked up with probability 0.5^(r/50):
    frequent rows first, rows seen a few times in the whole run last."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(rows, 8) * 0.05)
    opt = TableAdam([w], lr=1e-3, weight_decay=weight_decay, lazy=mode == "lazy", catch_up=mode == "catchup")
    gen = torch.Generator().manual_seed(1)
    probs = 0.5 ** (torch.arange(rows) / 50.0)
    for _ in range(steps):
        looked_up = torch.nonzero(torch.rand(rows, generator=gen) < probs).flatten()
        grads = torch.randn(len(looked_up), 8, generator=gen) * 1e-3 + 2e-4 * torch.arange(8)
        w.grad = torch.sparse_coo_tensor(looked_up[None], grads, (rows, 8), check_invariants=False)
        opt.step()
    opt.flush()
    return w.detach()


def _row_errors(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (x - ref).norm(dim=1) / ref.norm(dim=1)


def test_catch_up_moves_skipped_rows_as_dense_adam_without_weight_decay(kernels: str) -> None:
    # Between two look-ups dense Adam keeps moving a row on its momentum (m / sqrt(v) decaying as
    # (beta1 / sqrt(beta2))^j); catch-up applies that in closed form when the row is next looked up
    # or flushed. Without weight decay that is dense Adam up to eps and rounding; lazy Adam skips it.
    dense, lazy, caught_up = (_table_run(mode, 0.0) for mode in ("dense", "lazy", "catchup"))
    assert _row_errors(caught_up, dense).max() < 0.03
    assert _row_errors(lazy, dense).median() > 0.1


def test_catch_up_shrinks_rarely_seen_rows_as_dense_adams_weight_decay_does(kernels: str) -> None:
    # With L2 weight decay dense Adam pulls every row towards zero every step, by the gradient
    # wd * p divided by the row's decaying second moment: rows seen rarely shrink. Lazy Adam never
    # shrinks them (their norm ends far above dense Adam's); catch-up approximates the pull.
    dense, lazy, caught_up = (_table_run(mode, 1e-4) for mode in ("dense", "lazy", "catchup"))
    rare = slice(300, None)
    assert lazy[rare].norm() / dense[rare].norm() > 1.5
    assert 0.8 < caught_up[rare].norm() / dense[rare].norm() < 1.25
    assert _row_errors(caught_up, dense).median() < 0.1 < _row_errors(lazy, dense).median()


def test_catch_up_trains_a_model_with_sparse_row_gradients() -> None:
    model, schemas = _tiny_cdanet()
    opt = _train(model, schemas, "catchup", 3)
    assert opt.catch_up and opt.lazy
    tables = [p for p in row_parameters(model)[0]]
    assert tables and all("last" in opt.state[p] for p in tables)
    opt.flush()
    assert all(bool((opt.state[p]["last"] == opt.state[p]["step"].long()).all()) for p in tables)
    # A checkpoint's optimiser state resumes with the rows' last steps intact (torch would cast them
    # to the parameters' float dtype).
    again = make_optimizer(model, 0.01, 0.0, torch.device("cpu"), "catchup")
    again.load_state_dict(opt.state_dict())
    for p in tables:
        assert again.state[p]["last"].dtype == torch.int64
        assert torch.equal(again.state[p]["last"], opt.state[p]["last"])


@pytest.mark.parametrize("weight_decay", [0.0, 1e-4])
@pytest.mark.parametrize("some_rows", [False, True])
def test_catch_up_kernel_matches_the_torch_formulas(weight_decay: float, some_rows: bool) -> None:
    if native.library() is None:
        pytest.skip("no C compiler here")
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(300, 16, generator=gen) * 0.05
    m = torch.randn(300, 16, generator=gen) * 1e-4
    v = torch.rand(300, 16, generator=gen) * 1e-7
    v[:20] = 0.0  # rows never looked up: no moments, weight decay pulls them to zero
    m[:20] = 0.0
    last = torch.randint(0, 5000, (300,), generator=gen)
    rows = torch.arange(0, 300, 3) if some_rows else None
    args = dict(upto=5000, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=weight_decay)
    ours = [t.clone() for t in (p, m, v, last)]
    native.catch_up_rows_(*ours, rows, **args)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "library", lambda: None)
        ref = [t.clone() for t in (p, m, v, last)]
        native.catch_up_rows_(*ref, rows, **args)
    assert torch.equal(ours[3], ref[3])
    if some_rows:
        untouched = torch.ones(300, dtype=torch.bool)
        untouched[rows] = False
        assert torch.equal(ours[0][untouched], p[untouched]) and torch.equal(ours[3][untouched], last[untouched])
    assert not torch.equal(ours[0], p)
    for a, b in zip(ours[:3], ref[:3], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7 * float(b.abs().max()))


def test_flush_denormal_sets_every_torch_thread_and_restores_the_mode() -> None:
    if native.library() is None:
        pytest.skip("no C compiler here")
    subnormal = torch.full((1 << 20,), 1e-39)  # large enough that torch splits it over its threads
    assert bool((subnormal * 1.0 == subnormal).all())  # IEEE by default: kept as it is
    threads = torch.get_num_threads()
    with native.flush_denormal() as every:
        assert every
        # Read as zero on every thread that computed a part (with 2+ threads, not the caller's alone).
        assert bool((subnormal * 1.0 == 0).all()), f"some of {threads} threads still keep denormals"
        assert (torch.full((4,), 1e-30) * 1e-10).abs().max() == 0  # written as zero
    assert bool((subnormal * 1.0 == subnormal).all())
    with native.flush_denormal(False) as every:
        assert not every and bool((subnormal * 1.0 == subnormal).all())
