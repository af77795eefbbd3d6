"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every small JSON / text output of the library (schemas, stats, metrics, history, manifests,
reports, run records) goes through here: the content is written to a temporary file in the same
folder, then moved over the target with ``os.replace``.
"""

from __future__ import annotations

import json
import os


def write_text(path: str, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically; return ``path``."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


def write_json(path: str, obj: object) -> str:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically; return ``path``."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True))
