"""Row kernels of the sparse embedding path: coalescing looked-up rows, and Adam on a table from them.

An embedding table's gradient can be kept as the list of distinct looked-up rows with their summed
gradients (a coalesced sparse tensor) instead of a dense table that is mostly zeros
(:mod:`cdanet.training.optim`). Two operations do the work:

* :func:`coalesce_grad`: from a lookup's ``B x S`` row ids and its output gradient to ``(rows, values)``;
* :func:`adam_rows_`: one Adam step of a table and its two moment tables from such a gradient: on the
  listed rows only (lazy), or on every row as dense Adam would (without building the dense gradient);
* :func:`index_add_slots_`: a lookup's gradient into a dense table (the small profile tables), in the
  order and rounding of one ``index_add_`` per slot.

Each has a torch implementation, and on CPU a C one (``native.c``) that does the same in one pass over
the data instead of torch's gather / update / scatter (measured in ``docs/performance.md``, "Training
speed"). The C file is compiled on first use with the system C compiler (``$CC``, else ``cc``, ``gcc``
or ``clang``) into a cache directory (``$CDANET_NATIVE_CACHE``, else ``~/.cache/cdanet/native``), keyed
by the source, the flags and the host CPU (a temporary folder when that one is not writable), and
loaded with :mod:`ctypes`. Where no compiler works, or with ``CDANET_NATIVE=0``, the torch
implementation runs instead: same semantics, float rounding aside.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("native.c")
_BASE_FLAGS = ("-O3", "-fno-math-errno", "-fPIC", "-shared")
# Tried in this order; a compiler that refuses one set gets the next (no -march=native off x86/gcc-likes,
# no OpenMP on compilers without it: the kernels then run on one thread).
_FLAG_SETS = (("-march=native", "-fopenmp"), ("-fopenmp",), ("-march=native",), ())
ENV_SWITCH = "CDANET_NATIVE"  # "0" turns the C kernels off
ENV_CACHE = "CDANET_NATIVE_CACHE"


class _Lib:
    """The loaded kernels with their ctypes signatures."""

    def __init__(self, cdll: ctypes.CDLL, path: Path) -> None:
        p, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
        self.path = path
        self.coalesce = cdll.cdanet_coalesce_rows
        self.coalesce.restype, self.coalesce.argtypes = i64, [p, i64, i64, p, p]
        self.ascending = cdll.cdanet_strictly_ascending
        self.ascending.restype, self.ascending.argtypes = ctypes.c_int, [p, i64]
        self.accumulate = cdll.cdanet_accumulate_rows
        self.accumulate.restype, self.accumulate.argtypes = None, [p, i64, i64, p, i64, i64, p, p, p, i64]
        self.lazy_adam = cdll.cdanet_lazy_adam_rows
        self.lazy_adam.restype = None
        self.lazy_adam.argtypes = [p, p, p, i64, p, i64, p, f32, f32, f32, f32, f32, f32, f32, ctypes.c_int]
        self.dense_adam = cdll.cdanet_dense_adam_rows
        self.dense_adam.restype = None
        self.dense_adam.argtypes = [p, p, p, i64, i64, p, i64, p, f32, f32, f32, f32, f32, f32, f32, ctypes.c_int]
        self.index_add_slots = cdll.cdanet_index_add_slots
        self.index_add_slots.restype, self.index_add_slots.argtypes = i64, [p, i64, p, i64, i64, p, i64, i64, p, i64]


def _cpu_signature() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keep = sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))})
    return "\n".join(keep)


def _cache_dirs() -> list[Path]:
    """Where built kernels may be: the configured or per-user cache, then a per-user temporary folder."""
    configured = os.environ.get(ENV_CACHE)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return [Path(configured) if configured else base / "cdanet" / "native",
            Path(tempfile.gettempdir()) / f"cdanet-native-{uid}"]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _compile(cc: str, flags: tuple[str, ...], out: Path) -> bool:
    """Compile the kernels to ``out`` (atomically: a temporary file, then a rename)."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        done = subprocess.run([cc, *flags, str(_SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            logger.debug("%s %s failed: %s", cc, " ".join(flags), done.stderr.strip())
            return False
        os.replace(tmp, out)
        return True
    except (OSError, subprocess.SubprocessError) as e:
        logger.debug("%s %s failed: %s", cc, " ".join(flags), e)
        return False
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> _Lib | None:
    """The compiled kernels, building them on first use; None where they are off or cannot be built."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        logger.warning("no C compiler found ($CC, cc, gcc, clang): the sparse embedding path uses torch ops")
        return None
    source, cpu = _SOURCE.read_bytes(), _cpu_signature().encode()
    folders = _cache_dirs()
    for extra in _FLAG_SETS:
        flags = (*_BASE_FLAGS, *extra)
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), cc.encode(), cpu])).hexdigest()[:16]
        name = f"native-{key}.so"
        path = next((f / name for f in folders if (f / name).exists()), None)
        if path is None:
            # A read-only cache (e.g. a container's home) falls through to the temporary folder.
            target = next((f for f in folders if _writable(f)), None)
            if target is None or not _compile(cc, flags, target / name):
                continue
            path = target / name
        try:
            return _Lib(ctypes.CDLL(str(path)), path)
        except (OSError, AttributeError) as e:
            logger.debug("loading %s failed: %s", path, e)
    logger.warning("could not build %s with %s: the sparse embedding path uses torch ops", _SOURCE.name, cc)
    return None


def _native_for(*tensors: Tensor | None) -> _Lib | None:
    """The C kernels if every given tensor is on the CPU (dtypes are checked by the callers)."""
    if any(t is not None and t.device.type != "cpu" for t in tensors):
        return None
    return library()


def index_add_slots_(out: Tensor, index: Tensor, grad: Tensor, slot_weights: Tensor | None,
                     pooled: bool) -> Tensor:
    """``out[index[b, s]] += w[b, s] * grad[b(, s)]`` over all (b, s), one ``index_add_`` per slot; returns ``out``.

    The gradient of a lookup into the rows of ``out`` (shapes as in :func:`coalesce_grad`). Accumulation
    runs slot by slot, in index order within a slot: deterministic on CPU. On CPU the C kernel does the
    same adds in the same order in one pass (bitwise the same sums: the weighted rows are rounded before
    the add, as the torch ops' separate multiply rounds them), instead of a multiply and an
    ``index_add_`` dispatch per slot, which cost ~0.3 ms each at 4096 rows even on a 30-row table
    (torch's CPU ``index_add_`` sorts its indices first).
    """
    lib = _native_for(out, index, grad, slot_weights)
    if (lib is not None and out.dtype == grad.dtype == torch.float32 and index.dtype == torch.int64
            and out.is_contiguous() and out.dim() == 2 and (slot_weights is None or slot_weights.dtype == torch.float32)):
        b, s = index.shape
        e = out.shape[1]
        if (tuple(grad.shape) != ((b, e) if pooled else (b, s, e))
                or (slot_weights is not None and tuple(slot_weights.shape) != (b, s))):
            raise ValueError(f"index_add_slots_: index {list(index.shape)}, grad {list(grad.shape)} and weights "
                             f"{None if slot_weights is None else list(slot_weights.shape)} do not fit a "
                             f"{'pooled' if pooled else 'per-slot'} lookup into {list(out.shape)}")
        index, grad = index.contiguous(), grad.contiguous()
        weights = None if slot_weights is None else slot_weights.contiguous()
        gsb, gss = (e, 0) if pooled else (s * e, e)
        if lib.index_add_slots(out.data_ptr(), out.shape[0], index.data_ptr(), b, s, grad.data_ptr(), gsb, gss,
                               None if weights is None else weights.data_ptr(), e) < 0:
            raise _out_of_range(index, out.shape[0])
        return out
    for slot in range(index.shape[1]):
        g = grad if pooled else grad[:, slot]
        if slot_weights is not None:
            g = g * slot_weights[:, slot, None]
        out.index_add_(0, index[:, slot], g)
    return out


def _out_of_range(idx: Tensor, num_rows: int) -> IndexError:
    return IndexError(f"row ids outside [0, {num_rows}) in a table lookup's indices "
                      f"(values {int(idx.min())}..{int(idx.max())})")


def coalesce_grad(idx: Tensor, grad: Tensor, slot_weights: Tensor | None, pooled: bool,
                  num_rows: int) -> tuple[Tensor, Tensor]:
    """The gradient of a table lookup as ``(rows, values)``: distinct rows (ascending) and their summed gradients.

    ``idx``: ``B x S`` row ids in ``[0, num_rows)``; ``grad``: the lookup's output gradient, ``B x e`` for a
    pooled lookup (``sum_s w[b, s] * table[idx[b, s]]``) or ``B x S x e`` per slot; ``slot_weights``:
    ``B x S`` or None (all ones). Returns ``rows`` (``n``, int64) and ``values`` (``n x e``): together the
    coalesced sparse gradient of the ``num_rows x e`` table.
    """
    b, s = idx.shape
    e = grad.shape[-1]
    lib = _native_for(idx, grad, slot_weights)
    if (lib is not None and grad.dtype == torch.float32 and idx.dtype == torch.int64 and num_rows < 2**31
            and (slot_weights is None or slot_weights.dtype == torch.float32)):
        idx, grad = idx.contiguous(), grad.contiguous()
        weights = None if slot_weights is None else slot_weights.contiguous()
        pos = torch.empty(num_rows, dtype=torch.int32)
        uniq = torch.empty(idx.numel(), dtype=torch.int64)
        n = lib.coalesce(idx.data_ptr(), idx.numel(), num_rows, pos.data_ptr(), uniq.data_ptr())
        if n < 0:
            raise _out_of_range(idx, num_rows)
        values = torch.zeros(n, e, dtype=torch.float32)
        gsb, gss = (e, 0) if pooled else (s * e, e)
        lib.accumulate(idx.data_ptr(), b, s, grad.data_ptr(), gsb, gss,
                       None if weights is None else weights.data_ptr(), pos.data_ptr(), values.data_ptr(), e)
        return uniq[:n], values
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_rows):
        raise _out_of_range(idx, num_rows)
    rows, inverse = torch.unique(idx, sorted=True, return_inverse=True)
    return rows, index_add_slots_(grad.new_zeros(rows.numel(), e), inverse, grad, slot_weights, pooled)


def strictly_ascending(rows: Tensor) -> bool:
    """Whether the 1-d ``rows`` are distinct and in ascending order (a coalesced sparse tensor's rows)."""
    lib = _native_for(rows)
    if lib is not None and rows.dtype == torch.int64 and rows.is_contiguous():
        return bool(lib.ascending(rows.data_ptr(), rows.numel()))
    return rows.numel() < 2 or bool((rows[1:] > rows[:-1]).all())


@torch.no_grad()
def adam_rows_(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, rows: Tensor, values: Tensor, *,
               lazy: bool, step: int, lr: float, beta1: float, beta2: float, eps: float,
               weight_decay: float) -> None:
    """One Adam step (``torch.optim.Adam``'s formulas, L2 weight decay) of a table with a sparse gradient.

    ``param``, ``exp_avg``, ``exp_avg_sq``: ``R x e``, updated in place; ``rows``: the distinct rows with a
    gradient, ascending (``n``, int64); ``values``: their gradients (``n x e``); ``step``: the step count
    after this step (bias corrections).

    * ``lazy=True``: only ``rows`` are updated; the others keep their values and moments (TensorFlow's
      ``LazyAdam``, ``torch.optim.SparseAdam``).
    * ``lazy=False``: every row is updated as ``torch.optim.Adam`` would with the dense gradient (zero
      outside ``rows``): in C, one streaming pass without building that gradient; otherwise with torch
      ops on the densified gradient.
    """
    bc1, bc2_sqrt = 1.0 - beta1**step, math.sqrt(1.0 - beta2**step)
    rows = rows.contiguous()
    if not strictly_ascending(rows):
        raise ValueError("adam_rows_ needs distinct rows in ascending order (a coalesced sparse gradient's)")
    tables = (param, exp_avg, exp_avg_sq, values)
    lib = _native_for(*tables)
    if (lib is not None and rows.dtype == torch.int64
            and all(t.dtype == torch.float32 and t.is_contiguous() for t in tables)):
        args = (rows.data_ptr(), rows.numel(), values.data_ptr(), lr, beta1, beta2, eps, weight_decay, bc1,
                bc2_sqrt, torch.get_num_threads())
        if lazy:
            lib.lazy_adam(param.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(), param.shape[1], *args)
        else:
            lib.dense_adam(param.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(), param.shape[0],
                           param.shape[1], *args)
        return
    if lazy:
        p, m, v = param.index_select(0, rows), exp_avg.index_select(0, rows), exp_avg_sq.index_select(0, rows)
        g = values.to(p.dtype)
    else:
        p, m, v = param, exp_avg, exp_avg_sq
        g = torch.zeros_like(param).index_copy_(0, rows, values.to(param.dtype))
    if weight_decay:
        g = g + weight_decay * p
    m.lerp_(g, 1.0 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
    p.addcdiv_(m, (v.sqrt() / bc2_sqrt).add_(eps), value=-lr / bc1)
    if lazy:
        param.index_copy_(0, rows, p)
        exp_avg.index_copy_(0, rows, m)
        exp_avg_sq.index_copy_(0, rows, v)
