"""The optimiser and the process settings the training loop runs with.

* :func:`make_optimizer`: the optimiser of a training stage, Adam (:class:`TableAdam`), with dense
  (default) or lazy updates of the embedding tables; :func:`training_fast_paths`: the blocks' fast
  paths it trains with (sparse row gradients of the tables where it can use them).
* :func:`retain_heap`: keep freed memory in the process (glibc), so steps do not page-fault.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable, Iterable

import torch
from torch import nn

from cdanet import native
from cdanet.config import EMBEDDING_UPDATES
from cdanet.layers import FastPaths, row_parameters


def _sorted_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, values)`` of a sparse ``R x e`` gradient with distinct, ascending rows.

    DomainEmbedding's gradients are built that way, but autograd stores them without the coalesced
    flag, and ``coalesce()`` would then sort them again (~1 ms per table); checking the order is
    far cheaper. A gradient accumulated from several sparse ones is coalesced here.
    """
    rows = grad._indices()[0]
    if not native.strictly_ascending(rows):
        grad = grad.coalesce()
        rows = grad._indices()[0]
    return rows, grad._values()


class TableAdam(torch.optim.Adam):
    """``torch.optim.Adam`` that also takes sparse gradients: those of tables with ``FastPaths.sparse_rows``.

    Parameters with dense gradients get Adam's own update (fused where torch has it). A parameter with
    a sparse ``R x e`` gradient (the looked-up rows and their summed gradients) is updated by
    :func:`cdanet.native.adam_rows_`:

    * ``lazy=False``: exactly Adam on the dense gradient (zero outside the looked-up rows), every row
      every step, without building that gradient (float rounding aside);
    * ``lazy=True``: only the looked-up rows, with the step count of the whole run in the bias
      corrections; the other rows keep their values and moments (TensorFlow's ``LazyAdam``,
      ``torch.optim.SparseAdam``). Dense Adam decays every row's moments every step and keeps moving
      rows that were not looked up on their momentum; lazy Adam skips that, which is most of the
      optimiser's memory traffic when a step looks up ~10k of a table's ~46k rows.

    * ``catch_up=True``: lazy, but a looked-up row first catches up on the steps since its last
      update, as dense Adam would have moved it without a gradient (its momentum, and the L2 pull
      towards zero; :func:`cdanet.native.catch_up_rows_`), and :meth:`flush` brings every row up to
      date before the weights are read. The per-step work is the looked-up rows', as lazy; the result
      is dense Adam's up to ``eps`` without weight decay, and close to it with (``docs/performance.md``).

    The state has Adam's layout (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter; catch-up adds
    each table's ``last`` step per row), so checkpoints load into either optimiser. ``weight_decay`` is
    Adam's L2 term (lazy: on the looked-up rows only).
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-3, weight_decay: float = 0.0,
                 fused: bool | None = None, lazy: bool = False, catch_up: bool = False) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, fused=fused)
        self.lazy, self.catch_up = lazy or catch_up, catch_up

    def load_state_dict(self, state_dict: dict) -> None:  # type: ignore[override]
        super().load_state_dict(state_dict)
        for state in self.state.values():  # torch casts every non-step state tensor to the parameter's dtype
            if "last" in state:
                state["last"] = state["last"].to(torch.int64)

    @torch.no_grad()
    def flush(self) -> None:
        """``catch_up``: bring every row up to the last step, as dense Adam holds it (before the weights
        are read: validation, averaging, checkpoints). A no-op otherwise."""
        if not self.catch_up:
            return
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                state = self.state.get(p)
                if state and "last" in state:
                    native.catch_up_rows_(p, state["exp_avg"], state["exp_avg_sq"], state["last"], None,
                                          upto=int(state["step"].item()), lr=group["lr"], beta1=beta1,
                                          beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("TableAdam.step does not take a closure")
        sparse: list[tuple[nn.Parameter, torch.Tensor]] = []
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                grad = p.grad
                if grad is None or not grad.is_sparse:
                    continue
                rows, values = _sorted_rows(grad)
                state = self.state[p]
                if not state:  # Adam's state layout (fused: a float32 step tensor on the parameter's device)
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = int(state["step"].item())
                if self.catch_up:  # the steps since each looked-up row's last update, then this one
                    if "last" not in state:
                        state["last"] = torch.zeros(p.shape[0], dtype=torch.int64, device=p.device)
                    native.catch_up_rows_(p, state["exp_avg"], state["exp_avg_sq"], state["last"], rows,
                                          upto=step - 1, lr=group["lr"], beta1=beta1, beta2=beta2,
                                          eps=group["eps"], weight_decay=group["weight_decay"])
                    state["last"].index_fill_(0, rows, step)
                native.adam_rows_(p, state["exp_avg"], state["exp_avg_sq"], rows, values,
                           lazy=self.lazy, step=step, lr=group["lr"], beta1=beta1,
                           beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"])
                sparse.append((p, p.grad))
                p.grad = None  # Adam's own step skips parameters without a gradient
        try:
            super().step()
        finally:
            for p, grad in sparse:
                p.grad = grad


#: ``train.embedding_update=auto`` takes ``catchup`` for models whose embedding tables hold at least
#: this many parameters, ``dense`` below. Measured (docs/performance.md, "The catch-up update"): level
#: at the movie-size tables' 6.3M, 1.4x faster at the Taobao preset's 60.6M, where a ``dense`` step
#: streams every row; below, ``dense`` is exact and what the quality figures were measured with.
AUTO_CATCHUP_PARAMETERS = 16_000_000
#: ``train.weight_average_every=0`` (auto) with ``catchup``: take the average every this many steps,
#: as each take first brings every row up to date (a pass over the tables); 1 with the other updates.
CATCHUP_AVERAGE_EVERY = 32


def table_parameters(model: nn.Module) -> int:
    """Parameters in ``model``'s lookup tables (:func:`cdanet.layers.row_parameters`)."""
    sparse, dense = row_parameters(model)
    return sum(p.numel() for p in (*sparse, *dense))


def resolve_embedding_update(embedding_update: str, weight_average_every: int, model: nn.Module) -> tuple[str, int]:
    """``train.embedding_update`` and ``train.weight_average_every`` with ``auto`` (and 0) decided for ``model``.

    ``auto`` is ``catchup`` from :data:`AUTO_CATCHUP_PARAMETERS` table parameters on, else ``dense``;
    a ``weight_average_every`` of 0 is :data:`CATCHUP_AVERAGE_EVERY` with ``catchup``, else 1. Explicit
    values are returned as they are. Deterministic in the model's table sizes, so a resumed run decides
    as the interrupted one did.
    """
    if embedding_update not in EMBEDDING_UPDATES:
        raise ValueError(f"unknown embedding_update {embedding_update!r}; expected one of {EMBEDDING_UPDATES}")
    if embedding_update == "auto":
        embedding_update = "catchup" if table_parameters(model) >= AUTO_CATCHUP_PARAMETERS else "dense"
    if weight_average_every == 0:
        weight_average_every = CATCHUP_AVERAGE_EVERY if embedding_update == "catchup" else 1
    return embedding_update, weight_average_every


def _check_resolved(embedding_update: str) -> None:
    if embedding_update not in EMBEDDING_UPDATES or embedding_update == "auto":
        raise ValueError(f"embedding_update must be one of {EMBEDDING_UPDATES[1:]} (resolve 'auto' with "
                         f"resolve_embedding_update first), got {embedding_update!r}")


def training_fast_paths(device: torch.device, embedding_update: str = "dense") -> FastPaths:
    """The blocks' fast paths for training on ``device`` with :func:`make_optimizer`'s ``embedding_update``.

    Every fast path of the dense math is on. The tables' gradients are sparse rows
    (``FastPaths.sparse_rows``) for ``lazy``, which updates only the rows a step looked up, and for
    ``dense`` on CPU when the C kernels of :mod:`cdanet.native` are available: then neither the
    backward nor the optimiser builds a dense ``R x e`` gradient. Otherwise they are dense and Adam's
    fused kernel updates the tables. Measured in ``docs/performance.md``, "Training speed".
    """
    _check_resolved(embedding_update)
    sparse = embedding_update in ("lazy", "catchup") or (device.type == "cpu" and native.library() is not None)
    return FastPaths(sparse_rows=sparse)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, device: torch.device,
                   embedding_update: str = "dense") -> TableAdam:
    """Adam on every trainable parameter; the fused kernel where torch has one for ``device``.

    The fused kernel updates each tensor in one pass instead of ~10 elementwise ops: on CPU it is
    ~7x faster on the embedding tables, which hold nearly all parameters.

    ``embedding_update`` (``train.embedding_update``): ``dense`` updates every table row every step,
    as ``torch.optim.Adam`` does; ``lazy`` only the rows the step looked up (see :class:`TableAdam`).
    Tables whose gradients arrive as sparse rows (:func:`cdanet.layers.row_parameters`; the trainer
    selects them with :func:`training_fast_paths`) are updated by the row kernels, the rest by Adam.
    ``lazy`` needs every table's gradient as sparse rows, and raises ``ValueError`` otherwise.
    """
    _check_resolved(embedding_update)
    lazy, catch_up = embedding_update == "lazy", embedding_update == "catchup"
    _, dense_rows = row_parameters(model)
    if (lazy or catch_up) and dense_rows:
        raise ValueError(
            f"embedding_update={embedding_update!r} needs the embedding tables' gradients as sparse rows: call "
            "set_fast_paths(model, training_fast_paths(device, embedding_update)) before make_optimizer"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    fused = (device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)) or None
    return TableAdam(params, lr=lr, weight_decay=weight_decay, fused=fused, lazy=lazy, catch_up=catch_up)


#: glibc's malloc thresholds :func:`retain_heap` sets; the images set the same through glibc's
#: environment variables (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, docker/Dockerfile*).
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30


def retain_heap() -> bool:
    """Keep memory freed by torch in the process's heap instead of returning it to the OS (glibc only).

    Every step allocates and frees the same large tensors: the embedding tables' gradients and the
    activations. glibc hands blocks of this size back to the kernel on ``free``, so the next step
    page-faults them in again and the kernel zeroes every page: ~6k faults and ~8 ms per CDAnet step
    at the benchmark's sizes, ~10% of the step. Raising the mmap and trim thresholds (``mallopt``)
    keeps such blocks in the heap; the process's peak memory is unchanged, it is only not handed
    back until exit. PyTorch's CPU tuning guide gets the same by preloading jemalloc or tcmalloc.
    The images set these thresholds through glibc's environment variables, which glibc reads at
    process start; this call is for processes started without them (a laptop, CI). Idempotent; a no-op (returning False) off glibc or when the user tunes malloc through
    ``MALLOC_*`` / ``GLIBC_TUNABLES`` environment variables.
    """
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(mallopt(m_trim_threshold, TRIM_THRESHOLD))
