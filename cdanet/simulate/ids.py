"""Raw id strings in the shapes of the real dumps, generated vectorised and collision-free."""

from __future__ import annotations

import numpy as np

BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def distinct_ints(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """``n`` distinct random integers in ``[low, high)`` (int64 [n]), in random order."""
    if high - low < n:
        raise ValueError(f"cannot draw {n} distinct ids from a range of {high - low}")
    if high - low < 4 * n:
        return (low + rng.permutation(high - low)[:n]).astype(np.int64)
    out = np.empty(0, dtype=np.int64)
    while len(out) < n:
        draw = np.concatenate([out, rng.integers(low, high, n - len(out) + n // 16 + 16, dtype=np.int64)])
        _, first = np.unique(draw, return_index=True)
        out = draw[np.sort(first)]
    return out[:n]


def encode(values: np.ndarray, alphabet: str, width: int) -> np.ndarray:
    """Fixed-width positional encoding of non-negative ints; returns a numpy str array [n]."""
    base = len(alphabet)
    values = np.asarray(values, dtype=np.int64)
    if values.size and int(values.max()) >= base ** width:
        raise ValueError(f"value {int(values.max())} does not fit {width} digits of base {base}")
    digits = np.empty((len(values), width), dtype=np.int64)
    rest = values.copy()
    for pos in range(width - 1, -1, -1):
        digits[:, pos] = rest % base
        rest //= base
    table = np.frombuffer(alphabet.encode("ascii"), dtype=np.uint8)
    chars = np.ascontiguousarray(table[digits])
    return chars.view(f"S{width}").ravel().astype(str)


def prefixed(prefix: str, codes: np.ndarray) -> np.ndarray:
    return np.char.add(prefix, codes)


def isbn10(values: np.ndarray) -> np.ndarray:
    """ISBN-10 strings (9 digits + check digit 0-9 or X) for ints in ``[0, 10**9)``, like book asins."""
    body = encode(values, BASE36[:10], 9)
    digits = np.frombuffer(body.astype("S9").tobytes(), dtype=np.uint8).reshape(-1, 9) - ord("0")
    check = (digits * np.arange(10, 1, -1)).sum(axis=1) % 11
    check = (11 - check) % 11
    check_char = np.where(check == 10, "X", check.astype(str))
    return np.char.add(body, check_char)
