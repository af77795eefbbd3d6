"""Typed counts of one domain's preprocessing, and the ``stats.json`` built from them.

The Beam steps emit counts as :data:`~cdanet.preprocessing.io.Stat` pairs (a key path and a value,
summed per key by the run that emits them); the driver files each run's sums into one
:class:`DomainCounts` per domain with :meth:`DomainCounts.record`, and everything after that (the
malformed check, the k-core loop, ``stats.json``) reads typed fields instead of key tuples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cdanet.contract import SPLITS, FieldSpec
from cdanet.preprocessing.kcore import pass_column

_MALFORMED = "malformed:"


@dataclass
class FileCounts:
    """The lines of one raw file: read, header, blank, parsed, and malformed by reason."""

    lines: int = 0
    header: int = 0
    blank: int = 0
    parsed: int = 0
    malformed: dict[str, int] = field(default_factory=dict)

    @property
    def data_lines(self) -> int:
        return self.lines - self.header - self.blank

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    def to_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "header": self.header, "blank": self.blank, "parsed": self.parsed,
                "malformed": dict(self.malformed)}


@dataclass
class KCorePass:
    """One k-core pass: rows it removed, rows and kept keys (users or items) after it."""

    removed: int = 0
    rows: int = 0
    users: int = 0
    items: int = 0


@dataclass
class RowDrops:
    """Interaction rows dropped before the k-core: after ``max_timestamp``, outside the window, duplicates."""

    dropped_after_max_timestamp: int = 0
    dropped_outside_window: int = 0
    duplicates: int = 0

    @property
    def total(self) -> int:
        return self.dropped_after_max_timestamp + self.dropped_outside_window + self.duplicates


@dataclass
class SplitCounts:
    rows: int = 0
    positives: int = 0


@dataclass
class DomainCounts:
    """Everything the steps counted for one domain.

    ``item_features`` / ``user_features`` (:mod:`.join`), ``glove`` and ``title``
    (:mod:`.glove`) are open counters, reported in ``stats.json`` as the steps name them.
    """

    files: dict[str, FileCounts] = field(default_factory=dict)
    kcore: dict[int, KCorePass] = field(default_factory=dict)
    rows: RowDrops = field(default_factory=RowDrops)
    splits: dict[str, SplitCounts] = field(default_factory=dict)
    max_len: dict[str, int] = field(default_factory=dict)
    item_features: dict[str, int] = field(default_factory=dict)
    user_features: dict[str, int] = field(default_factory=dict)
    glove: dict[str, int] = field(default_factory=dict)
    title: dict[str, int] = field(default_factory=dict)

    def record(self, key: Sequence[str], value: int) -> None:
        """File one summed count under its typed field (a later run's value replaces an earlier one)."""
        kind, *rest = key
        if kind == "file":
            path, name = rest
            counts = self.files.setdefault(path, FileCounts())
            if name.startswith(_MALFORMED):
                counts.malformed[name.removeprefix(_MALFORMED)] = value
            else:
                setattr(counts, _known(FileCounts, name, key), value)
        elif kind == "kcore":
            tag, name = rest
            setattr(self.kcore.setdefault(int(tag), KCorePass()), _known(KCorePass, name, key), value)
        elif kind == "rows":
            setattr(self.rows, _known(RowDrops, rest[0], key), value)
        elif kind == "split":
            split, name = rest
            setattr(self.splits.setdefault(split, SplitCounts()), _known(SplitCounts, name, key), value)
        elif kind == "max_len":
            self.max_len[rest[0]] = value
        elif kind in ("item_features", "user_features", "glove", "title"):
            getattr(self, kind)[rest[0]] = value
        else:
            raise ValueError(f"unknown preprocessing count {tuple(key)!r}")

    def file(self, path: str) -> FileCounts:
        return self.files.get(path, FileCounts())

    def removed_by_pass(self) -> dict[int, int]:
        return {p: c.removed for p, c in self.kcore.items()}

    def kcore_pass(self, pass_no: int) -> KCorePass:
        return self.kcore.get(pass_no, KCorePass())

    def split(self, name: str) -> SplitCounts:
        return self.splits.get(name, SplitCounts())


def _known(cls: type, name: str, key: Sequence[str]) -> str:
    if name not in cls.__dataclass_fields__:
        raise ValueError(f"unknown preprocessing count {tuple(key)!r}")
    return name


def domain_stats(
    counts: DomainCounts,
    *,
    dataset: str,
    domain: str,
    file_paths: Sequence[str],
    interactions_path: str,
    has_user_features: bool,
    k: int,
    last_pass: int,
    fields: Sequence[FieldSpec],
) -> dict[str, Any]:
    """The ``stats.json`` of one domain (see ``docs/preprocessing.md``)."""
    files = {p: counts.file(p) for p in file_paths}
    main = files[interactions_path]
    kcore_passes = [
        {"pass": p, "filter": pass_column(p), "removed": counts.kcore[p].removed, "rows": counts.kcore[p].rows}
        for p in sorted(counts.kcore)
    ]
    effective = [x for x in kcore_passes if x["removed"]]
    splits = {n: counts.split(n).rows for n in SPLITS}
    total_rows = sum(splits.values())
    positives = {n: counts.split(n).positives for n in SPLITS}
    vocab_sizes = {f.name: f.vocab_size for f in fields if f.vocab_size}
    drops = counts.rows
    out: dict[str, Any] = {
        "dataset": dataset,
        "domain": domain,
        "files": {p: c.to_dict() for p, c in files.items()},
        "rows": {
            "read": main.lines - main.header,
            "blank": main.blank,
            "malformed": dict(main.malformed),
            "malformed_total": main.malformed_total,
            "parsed": main.parsed,
            "dropped_after_max_timestamp": drops.dropped_after_max_timestamp,
            "dropped_outside_window": drops.dropped_outside_window,
            "duplicates": drops.duplicates,
            "after_dedup": main.parsed - drops.total,
            "after_kcore": counts.kcore_pass(last_pass).rows,
            **splits,
        },
        "positives": {"total": sum(positives.values()), **positives},
        # Over all splits: the column the pipeline's stats table (and a reader of stats.json) shows.
        "positive_rate": round(sum(positives.values()) / total_rows, 6) if total_rows else 0.0,
        "users": counts.kcore_pass(last_pass - 1).users,
        "items": counts.kcore_pass(last_pass).items,
        "vocab_sizes": vocab_sizes,
        "input_feature_dim": sum(vocab_sizes.values()) + sum(f.dim for f in fields),
        "kcore": {"k": k, "passes": kcore_passes, "passes_run": len(kcore_passes),
                  "rounds_with_removals": (max((x["pass"] for x in effective), default=0) + 1) // 2,
                  "converged": True},
        "item_features": dict(counts.item_features),
    }
    if has_user_features:
        out["user_features"] = dict(counts.user_features)
    if counts.title:
        title = dict(counts.title)
        title["zero_vectors"] = title.get("without_title", 0) + title.get("without_known_word", 0)
        out["title_vectors"] = title
        out["glove"] = dict(counts.glove)
    return out
