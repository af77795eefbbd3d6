"""The optimiser and the process settings the training loop runs with.

* :func:`make_optimizer`: the optimiser of a training stage (dense Adam, as in the paper).
* :func:`retain_heap`: keep freed memory in the process (glibc), so steps do not page-fault.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch
from torch import nn


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Adam:
    """Adam on every trainable parameter; the fused kernel where torch has one for ``device``.

    The fused kernel updates each tensor in one pass instead of ~10 elementwise ops: on CPU it is
    ~7x faster on the embedding tables, which hold nearly all parameters. Dense Adam, as in the
    paper: every table row is updated every step. A lazy (row-wise) update of the looked-up rows only
    was measured and is not used: with torch's CPU gather/scatter ops it cost about twice the fused
    dense update (``docs/architecture.md``, "Training speed").
    """
    params = [p for p in model.parameters() if p.requires_grad]
    fused = (device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)) or None
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)


def retain_heap() -> bool:
    """Keep memory freed by torch in the process's heap instead of returning it to the OS (glibc only).

    Every step allocates and frees the same large tensors: the embedding tables' gradients and the
    activations. glibc hands blocks of this size back to the kernel on ``free``, so the next step
    page-faults them in again and the kernel zeroes every page: ~6k faults and ~8 ms per CDAnet step
    at the benchmark's sizes, ~10% of the step. Raising the mmap and trim thresholds (``mallopt``)
    keeps such blocks in the heap; the process's peak memory is unchanged, it is only not handed
    back until exit. PyTorch's CPU tuning guide gets the same by preloading jemalloc or tcmalloc.
    Idempotent; a no-op (returning False) off glibc or when the user tunes malloc through
    ``MALLOC_*`` / ``GLIBC_TUNABLES`` environment variables.
    """
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))
