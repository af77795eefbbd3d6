"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file output of the library that is not a whole directory (schemas, stats, metrics, history,
manifests, reports, run records, predictions, checkpoints, plots, simulated raw files) goes through
here: the content is written to a temporary file in the same folder, then moved over the target with
``os.replace``; a failed write removes the temporary file and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path`` to write to; on success it replaces ``path``.

    On an exception the temporary file is removed and ``path`` is untouched. The temporary name
    ends in ``.tmp-<pid>``, so writers that infer a format from the extension need it passed.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically; return ``path``."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def write_json(path: str, obj: object) -> str:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically; return ``path``."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True))
