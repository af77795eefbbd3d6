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
speed"). A library built ahead of time (``python -m cdanet.native build DIR``, as the image's build
stage does) is loaded from ``$CDANET_NATIVE_LIB``; otherwise the C file is compiled on first use with the system C compiler (``$CC``, else ``cc``, ``gcc``
or ``clang``) into a private cache directory (``$CDANET_NATIVE_CACHE``, else
``$XDG_CACHE_HOME/cdanet/native``, else ``~/.cache/cdanet/native``; ``<tmp>/cdanet-native-<uid>`` when
that one cannot be used), keyed by the source, the flags and the host CPU, and loaded with
:mod:`ctypes`. Where no compiler works, no private folder can be had, or with ``CDANET_NATIVE=0``,
the torch implementation runs instead: same semantics, float rounding aside.

Loading a shared library runs its code, so nothing is loaded that another user could have written
(:func:`_private_dir`, :func:`_trusted`): the folder is created ``0700`` and must be a real
directory owned by this user (group / other permissions are removed if it is ours); the library
must be a regular file owned by this user, writable by no one else, and its SHA-256 must equal the
digest recorded next to it when this code compiled it. A library that fails a check is not loaded
(a warning names it and why) and is rebuilt; a folder that fails one is skipped. A prebuilt library
(:func:`_trusted_prebuilt`) and its folder must be owned by root or this user and writable by no one
else, and it must match the digests recorded by :func:`build`, its source's included.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import math
import os
import platform
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: builds are not serialised between processes
    pass

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
ENV_PREBUILT = "CDANET_NATIVE_LIB"  # a library built ahead of time (`python -m cdanet.native build DIR`)
#: Flags of a library built ahead of time: it runs on CPUs other than the build machine's, so no -march=native.
PORTABLE_FLAGS = (*_BASE_FLAGS, "-fopenmp")
PREBUILT_NAME = "cdanet_native.so"
#: Extra builds next to the portable one, each loaded instead of it where the CPU has the listed features
#: (/proc/cpuinfo flags). x86-64-v3 (AVX2, FMA, ...): the portable build is ~15-20 % slower per training
#: step at Taobao table sizes, v3 level with -march=native (docs/performance.md).
PREBUILT_VARIANTS: tuple[tuple[str, tuple[str, ...], frozenset[str]], ...] = (
    ("x86-64-v3", ("-march=x86-64-v3",),
     frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"})),
)


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
        self.catch_up = cdll.cdanet_catch_up_rows
        self.catch_up.restype = None
        self.catch_up.argtypes = [p, p, p, p, i64, p, i64, i64, f32, f32, f32, f32, f32, ctypes.c_int]
        self.index_add_slots = cdll.cdanet_index_add_slots
        self.index_add_slots.restype, self.index_add_slots.argtypes = i64, [p, i64, p, i64, i64, p, i64, i64, p, i64]
        self.set_flush_denormal = cdll.cdanet_set_flush_denormal
        self.set_flush_denormal.restype, self.set_flush_denormal.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_int]
        self.flush_denormal = cdll.cdanet_flush_denormal
        self.flush_denormal.restype, self.flush_denormal.argtypes = ctypes.c_int, []


def _cpu_signature() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keep = sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))})
    return "\n".join(keep)


def _cache_dirs() -> list[Path]:
    """Where built kernels may be: the configured or per-user cache, then a per-user temporary folder
    (either is left out where it cannot even be named: no home directory, no usable temporary folder)."""
    out = []
    configured = os.environ.get(ENV_CACHE)
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        out.append(Path(configured) if configured else base / "cdanet" / "native")
    except (RuntimeError, KeyError, OSError):  # Path.home() without $HOME and without a passwd entry
        pass
    try:
        out.append(Path(tempfile.gettempdir()) / f"cdanet-native-{_uid()}")
    except OSError:  # FileNotFoundError: "No usable temporary directory found"
        pass
    return out


def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else 0


def _private_dir(folder: Path) -> Path | None:
    """``folder``, created ``0700`` when missing; None unless it is a directory (not a symlink) owned
    by this user, with group and other permissions removed, that this user can write."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode):
            logger.warning("not using %s for the native kernels: not a directory (a symlink?)", folder)
            return None
        if st.st_uid != _uid():
            logger.warning("not using %s for the native kernels: owned by uid %d, not by this user (%d)",
                           folder, st.st_uid, _uid())
            return None
        if st.st_mode & 0o077:
            os.chmod(folder, 0o700)  # ours: nobody else needs to see, let alone write, what we load
        if not os.access(folder, os.W_OK | os.X_OK):
            return None
    except OSError as e:
        logger.debug("cannot use %s for the native kernels: %s", folder, e)
        return None
    return folder


def _digest_path(lib: Path) -> Path:
    return lib.with_name(lib.name + ".sha256")


def _owned_file(path: Path, *, directory: bool = False, root_ok: bool = False) -> str | None:
    """Why ``path`` must not be trusted (None when it is a regular file, or with ``directory`` a directory,
    of ours, or with ``root_ok`` of root's, that no one else can write; a symlink is neither)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"cannot stat it ({e.strerror})"
    if not (stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)):
        return "not a directory" if directory else "not a regular file"
    if st.st_uid != _uid() and not (root_ok and st.st_uid == 0):
        return f"owned by uid {st.st_uid}, {'neither root nor' if root_ok else 'not by'} this user ({_uid()})"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _trusted(lib: Path) -> str | None:
    """Why the library ``lib`` must not be loaded, or None when its file, its digest file and its
    SHA-256 (against the digest recorded when this code compiled it) all check out."""
    for path in (lib, _digest_path(lib)):
        why = _owned_file(path)
        if why is not None:
            return f"{path.name}: {why}"
    try:
        recorded = _digest_path(lib).read_text().strip()
        actual = hashlib.sha256(lib.read_bytes()).hexdigest()
    except OSError as e:
        return f"cannot read it ({e.strerror})"
    if recorded != actual:
        return "its SHA-256 differs from the one recorded when it was compiled"
    return None


def _find_cc() -> str | None:
    """The C compiler: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _source_digest() -> str:
    return hashlib.sha256(_SOURCE.read_bytes()).hexdigest()


def _trusted_prebuilt(lib: Path) -> str | None:
    """Why the prebuilt library ``lib`` must not be loaded, or None. It must be a regular file in a folder,
    both owned by root or this user and writable by no one else (an image's read-only layer), with the
    digest file that ``build`` wrote beside it: the library's SHA-256 and that of the ``native.c`` it was
    built from, which must be this package's (a library of other kernels would not fit its signatures)."""
    for path, directory in ((lib.parent, True), (lib, False), (_digest_path(lib), False)):
        why = _owned_file(path, directory=directory, root_ok=True)
        if why is not None:
            return f"{path}: {why}"
    try:
        recorded = _digest_path(lib).read_text().split()
        actual = hashlib.sha256(lib.read_bytes()).hexdigest()
    except OSError as e:
        return f"cannot read it ({e.strerror})"
    if len(recorded) != 2 or recorded[0] != actual:
        return "its SHA-256 differs from the one recorded when it was built"
    if recorded[1] != _source_digest():
        return f"it was built from another {_SOURCE.name} than this package's"
    return None


def variant_path(lib: Path, variant: str) -> Path:
    """Where :func:`build` puts ``variant`` of the prebuilt library ``lib`` (``cdanet_native-x86-64-v3.so``)."""
    return lib.with_name(f"{lib.stem}-{variant}{lib.suffix}")


def _compile_prebuilt(cc: str, flags: tuple[str, ...], out: Path) -> str | None:
    """Compile to ``out`` and record the digests; the compiler's error, or None when it worked."""
    done = subprocess.run([cc, *flags, str(_SOURCE), "-o", str(out), "-lm"], capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        return f"{cc} {' '.join(flags)} {_SOURCE.name} failed: {done.stderr.strip()}"
    os.chmod(out, 0o755)
    _digest_path(out).write_text(f"{hashlib.sha256(out.read_bytes()).hexdigest()} {_source_digest()}\n")
    os.chmod(_digest_path(out), 0o644)
    return None


def build(out_dir: str | os.PathLike[str], cc: str | None = None) -> Path:
    """Compile the kernels ahead of time, with :data:`PORTABLE_FLAGS`, to ``out_dir/cdanet_native.so`` and
    record its digest and its source's beside it; point ``$CDANET_NATIVE_LIB`` at it (the image's build
    stage does: the runtime image then needs no compiler). Also builds each of :data:`PREBUILT_VARIANTS`
    that the compiler supports (:func:`variant_path`), which the loader prefers on CPUs that have its
    features. Raises ``RuntimeError`` when the portable build fails."""
    cc = cc or _find_cc()
    if cc is None:
        raise RuntimeError("no C compiler found ($CC, cc, gcc, clang)")
    out = Path(out_dir) / PREBUILT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    error = _compile_prebuilt(cc, PORTABLE_FLAGS, out)
    if error is not None:
        raise RuntimeError(error)
    for name, extra, _ in PREBUILT_VARIANTS:
        error = _compile_prebuilt(cc, (*PORTABLE_FLAGS, *extra), variant_path(out, name))
        if error is not None:  # e.g. not x86: the portable build serves
            logger.info("variant %s not built: %s", name, error)
    return out


def _cpu_flags() -> frozenset[str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    return frozenset(word for ln in lines if ln.startswith("flags") for word in ln.split(":", 1)[-1].split())


def _load_prebuilt(path: Path) -> _Lib | None:
    """The prebuilt kernels: the first variant the CPU can run (:data:`PREBUILT_VARIANTS`), else ``path``."""
    cpu = _cpu_flags()
    candidates = [variant_path(path, name) for name, _, needs in PREBUILT_VARIANTS
                  if needs <= cpu and os.path.lexists(variant_path(path, name))]
    for candidate in (*candidates, path):
        why = _trusted_prebuilt(candidate)
        if why is not None:
            logger.warning("not loading the prebuilt kernels %s (%s=%s): %s", candidate, ENV_PREBUILT, path, why)
            continue
        try:
            return _Lib(ctypes.CDLL(str(candidate)), candidate)
        except (OSError, AttributeError) as e:
            logger.warning("loading the prebuilt kernels %s failed: %s", candidate, e)
    return None


def _compile(cc: str, flags: tuple[str, ...], out: Path) -> bool:
    """Compile the kernels to ``out`` (atomically: a temporary file, then a rename) and record its digest."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        done = subprocess.run([cc, *flags, str(_SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            logger.debug("%s %s failed: %s", cc, " ".join(flags), done.stderr.strip())
            return False
        os.chmod(tmp, 0o700)
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        fd, tmp_digest = tempfile.mkstemp(suffix=".sha256", dir=out.parent)
        with os.fdopen(fd, "w") as fh:
            fh.write(digest + "\n")
        os.replace(tmp_digest, _digest_path(out))
        os.replace(tmp, out)
        return True
    except (OSError, subprocess.SubprocessError) as e:
        logger.debug("%s %s failed: %s", cc, " ".join(flags), e)
        return False
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """Serialise check, build and load among this user's processes (two DDP ranks starting together):
    without it, one could delete the other's half-recorded build and fall back to torch."""
    fd = None
    try:
        fd = os.open(folder / ".build.lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except (OSError, NameError):  # no fcntl (not POSIX) or no locks on this filesystem: build unserialised
        pass
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _load(folder: Path, name: str, cc: str, flags: tuple[str, ...]) -> _Lib | None:
    """The kernels ``folder/name``: loaded if trusted, else (re)built there first."""
    with _build_lock(folder):
        return _load_locked(folder, name, cc, flags)


def _load_locked(folder: Path, name: str, cc: str, flags: tuple[str, ...]) -> _Lib | None:
    path = folder / name
    if os.path.lexists(path):
        why = _trusted(path)
        if why is not None:
            logger.warning("not loading %s: %s; rebuilding it", path, why)
            for stale in (path, _digest_path(path)):
                with contextlib.suppress(OSError):
                    os.unlink(stale)
    if not os.path.lexists(path) and not _compile(cc, flags, path):
        return None
    why = _trusted(path)
    if why is not None:  # e.g. replaced between the build and here: never load it
        logger.warning("not loading %s: %s", path, why)
        return None
    try:
        return _Lib(ctypes.CDLL(str(path)), path)
    except (OSError, AttributeError) as e:
        logger.debug("loading %s failed: %s", path, e)
        return None


def _candidates(cc: str, source: bytes, cpu: bytes) -> list[tuple[tuple[str, ...], str]]:
    """(flags, file name) of each build to try, in order; the name is keyed by source, flags, compiler and CPU."""
    out = []
    for extra in _FLAG_SETS:
        flags = (*_BASE_FLAGS, *extra)
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), cc.encode(), cpu])).hexdigest()[:16]
        out.append((flags, f"native-{key}.so"))
    return out


@functools.cache
def library() -> _Lib | None:
    """The compiled kernels, building them on first use; None where they are off or cannot be built."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    prebuilt = os.environ.get(ENV_PREBUILT)
    if prebuilt:
        lib = _load_prebuilt(Path(prebuilt))
        if lib is not None:
            return lib
    cc = _find_cc()
    if cc is None:
        logger.warning("no C compiler found ($CC, cc, gcc, clang): the sparse embedding path uses torch ops")
        return None
    try:
        source, cpu = _SOURCE.read_bytes(), _cpu_signature().encode()
        candidates = _cache_dirs()
        folders = [f for f in (_private_dir(d) for d in candidates) if f is not None]
    except OSError as e:
        logger.warning("cannot prepare the native kernels (%s): the sparse embedding path uses torch ops", e)
        return None
    if not folders:
        logger.warning("no private folder to build %s in (%s): the sparse embedding path uses torch ops",
                       _SOURCE.name, ", ".join(str(d) for d in candidates) or "no cache or temporary folder")
        return None
    for flags, name in _candidates(cc, source, cpu):
        # A read-only cache (e.g. a container's home) falls through to the temporary folder.
        for folder in folders:
            lib = _load(folder, name, cc, flags)
            if lib is not None:
                return lib
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


def catch_up_rows_(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, last: Tensor, rows: Tensor | None, *,
                   upto: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """Bring rows from their last update to step ``upto`` as dense Adam would have moved them without a gradient.

    ``last`` (``R``, int64) holds each row's last step (0: never; its moments are then zero);
    ``rows`` the rows to bring up to date (``None``: all), ascending. Between two steps in which a
    row was looked up, dense Adam (``torch.optim.Adam``, L2 ``weight_decay``) keeps moving it: on
    its momentum, and, with weight decay, towards zero by the gradient ``wd * p`` that Adam divides
    by the row's decaying second moment. Over ``k`` such steps, with ``q = beta2 ** -0.5`` and
    ``r = beta1 * q``, this applies in closed form (bias corrections ``lr' = lr sqrt(1 - beta2^s) /
    (1 - beta1^s)`` taken near the row's last update for the momentum, at ``upto`` for the decay)

    * the momentum: ``p -= lr' * m / (sqrt(v) + eps) * sum_{j<=k} r^j``;
    * the decay: ``p *= exp(-lr' * wd / (sqrt(v) + eps) * sum_{j<=k} (1 - beta1^j) q^j)``, the
      solution of ``dp/dj = -lr' * wd * p * q^j / sqrt(v)`` (``p`` held in the momentum's part);
    * the moments: ``m = beta1^k m + (1 - beta1^k) wd p``, ``v = beta2^k v + (1 - beta2^k) (wd p)^2``.

    Exact up to ``eps`` and the bias corrections without weight decay; with it, an approximation of
    the same order (``tests/test_optim.py`` compares it with dense Adam).
    """
    tables = (param, exp_avg, exp_avg_sq)
    lib = _native_for(*tables, last, rows)
    if (lib is not None and last.dtype == torch.int64 and last.is_contiguous()
            and (rows is None or (rows.dtype == torch.int64 and rows.is_contiguous()))
            and all(t.dtype == torch.float32 and t.is_contiguous() for t in tables)):
        n = param.shape[0] if rows is None else rows.numel()
        lib.catch_up(param.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(), last.data_ptr(), param.shape[1],
                     None if rows is None else rows.data_ptr(), n, upto, lr, beta1, beta2, eps, weight_decay,
                     torch.get_num_threads())
        return
    idx = torch.arange(param.shape[0], device=param.device) if rows is None else rows
    k = (upto - last.index_select(0, idx)).clamp_(min=0)
    moving = k > 0
    if not bool(moving.any()):
        return
    idx, k = idx[moving], k[moving].double().clamp_(max=1e5)  # q^1e5 = e^50: finite in float64
    q = beta2**-0.5
    r = beta1 * q
    momentum = r * (1.0 - r**k) / (1.0 - r)
    decay = q * (q**k - 1.0) / (q - 1.0) - momentum
    # Bias corrections: the momentum's steps lie within ~1 / (1 - r) steps of the row's last update,
    # the decay's weight grows towards upto; each takes its corrections there.
    def corrections(at: Tensor) -> Tensor:  # lr * sqrt(1 - beta2^s) / (1 - beta1^s), per row
        return lr * (1.0 - beta2**at).sqrt() / (1.0 - beta1**at)

    p, m, v = param.index_select(0, idx), exp_avg.index_select(0, idx), exp_avg_sq.index_select(0, idx)
    denom = v.sqrt().add_(eps)
    near = (upto - k + torch.clamp(k, max=1.0 / (1.0 - r))).clamp_(min=1.0)
    p.addcdiv_(m * (momentum * corrections(near)).to(p.dtype).unsqueeze(1), denom, value=-1.0)
    if weight_decay:
        rate = (weight_decay * (decay * corrections(torch.full_like(k, float(upto)))).to(p.dtype).unsqueeze(1)) / denom
        # Adam moves a coordinate by at most about lr' per step (|m| <= sqrt(v)): once sqrt(v) has
        # decayed to wd |p|, the decay is a descent of lr' per step, not faster.
        floor = (p.abs() - (k * corrections(torch.full_like(k, float(upto)))).to(p.dtype).unsqueeze(1)).clamp_(min=0.0)
        shrunk = torch.where(rate < 30.0, p.abs() * torch.exp(-rate.clamp(max=30.0)), 0.0)
        p.copy_(p.sign() * torch.maximum(shrunk, floor))
    p.masked_fill_(p.abs() < 1e-30, 0.0)  # no subnormal results: they slow every later step
    b1k, b2k = (beta1**k).to(p.dtype).unsqueeze(1), (beta2**k).to(p.dtype).unsqueeze(1)
    m.mul_(b1k).add_((1.0 - b1k) * weight_decay * p)
    v.mul_(b2k).add_((1.0 - b2k) * (weight_decay * p) ** 2)
    v.masked_fill_(v < 1e-30, 0.0)
    param.index_copy_(0, idx, p)
    exp_avg.index_copy_(0, idx, m)
    exp_avg_sq.index_copy_(0, idx, v)
    last.index_fill_(0, idx, upto)


def main(argv: list[str] | None = None) -> int:
    """``python -m cdanet.native build DIR``: compile the kernels ahead of time (see :func:`build`)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m cdanet.native", description=main.__doc__)
    parser.add_argument("verb", choices=["build"])
    parser.add_argument("out_dir", help=f"folder for {PREBUILT_NAME} and its digest file")
    args = parser.parse_args(argv)
    try:
        path = build(args.out_dir)
    except (RuntimeError, OSError) as e:
        print(f"cdanet.native: error: {e}", file=sys.stderr)
        return 1
    print(f"built {path}; use it with {ENV_PREBUILT}={path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


@contextlib.contextmanager
def flush_denormal(enabled: bool = True) -> Iterator[bool]:
    """Inside the block, floats below 1.2e-38 (denormals) are read and written as zero on this thread
    and on torch's intra-op threads (x86 MXCSR flush-to-zero and denormals-are-zero, as TensorFlow
    sets by default); the previous mode is restored after it. Yields True if every thread was set.

    Why: in training, rows that are rarely looked up decay towards zero (weight decay, momentum), and
    arithmetic on denormal values is ~5-30x slower on x86. At the Taobao preset's tables, stage 1's
    steps slowed from ~34 ms to over 100 ms within half an epoch and a validation from 4 s to 39 s
    (docs/performance.md). ``torch.set_flush_denormal`` alone sets the calling thread only, so the
    C library sets the others in an OpenMP team of ``torch.get_num_threads()`` threads: torch's own
    pool, as the process has one libgomp. Without the C library (no compiler) only this thread is set
    and this yields False.
    """
    if not enabled:
        yield False
        return
    lib = library()
    threads = torch.get_num_threads()
    was_on = bool(lib.flush_denormal()) if lib is not None else False
    torch.set_flush_denormal(True)
    every = lib is not None and lib.set_flush_denormal(1, threads) == threads
    try:
        yield every
    finally:
        if not was_on:
            if lib is not None:
                lib.set_flush_denormal(0, threads)
            torch.set_flush_denormal(False)
