"""How much data a simulation writes: named scales and explicit overrides.

Row counts are RAW rows (before k-core filtering and before injected malformed/duplicate lines).
The target domains (movie, ad) are sparse: fewer rows and fewer interactions per user than their
source domains (book, rec), as in the paper's Table 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Domains of each dataset family: (sparse target, rich source), as in :data:`cdanet.config.DATASETS`.
DOMAINS: dict[str, tuple[str, str]] = {"amazon": ("movie", "book"), "taobao": ("ad", "rec")}
ALL_DOMAINS: tuple[str, ...] = ("movie", "book", "ad", "rec")


@dataclass(frozen=True)
class SimulationSizes:
    """Raw sizes per domain plus the cross-domain user overlap.

    ``user_overlap`` is the fraction of the target domain's users (movie, ad) who also appear in
    the source domain (book, rec) with the same raw id and the same latent taste. ``glove_words``
    is the number of distractor words in the GloVe file on top of the title vocabulary.
    """

    movie_rows: int
    movie_users: int
    movie_items: int
    book_rows: int
    book_users: int
    book_items: int
    ad_rows: int
    ad_users: int
    ad_items: int
    rec_rows: int
    rec_users: int
    rec_items: int
    user_overlap: float = 0.6
    glove_words: int = 20_000

    def rows(self, domain: str) -> int:
        return int(getattr(self, f"{domain}_rows"))

    def users(self, domain: str) -> int:
        return int(getattr(self, f"{domain}_users"))

    def items(self, domain: str) -> int:
        return int(getattr(self, f"{domain}_items"))

    def shared_users(self, dataset: str) -> int:
        """Users present in both domains of ``dataset`` (bounded by the source domain's users)."""
        target, source = DOMAINS[dataset]
        return min(int(round(self.user_overlap * self.users(target))), self.users(source))

    def validate(self) -> SimulationSizes:
        """Raise ``ValueError`` listing every inconsistent size; return self when valid."""
        errors: list[str] = []
        for d in ALL_DOMAINS:
            rows, users, items = self.rows(d), self.users(d), self.items(d)
            if users < 1 or items < 8:
                errors.append(f"{d}: needs >= 1 user and >= 8 items (one per latent topic), got {users} users, {items} items")
            elif rows < users:
                errors.append(f"{d}_rows={rows} is below {d}_users={users} (every user has >= 1 row)")
            elif rows > users * items // 2:
                errors.append(
                    f"{d}_rows={rows} leaves no room for distinct (user, item) pairs: "
                    f"at most {users * items // 2} for {users} users x {items} items"
                )
        if not 0.0 <= self.user_overlap <= 1.0:
            errors.append(f"user_overlap must be in [0, 1], got {self.user_overlap}")
        if self.glove_words < 0:
            errors.append(f"glove_words must be >= 0, got {self.glove_words}")
        if errors:
            raise ValueError("invalid simulation sizes:\n  - " + "\n  - ".join(errors))
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _sizes(movie: tuple[int, int, int], book: tuple[int, int, int], ad: tuple[int, int, int],
           rec: tuple[int, int, int], glove_words: int) -> SimulationSizes:
    return SimulationSizes(*movie, *book, *ad, *rec, glove_words=glove_words)


_MEDIUM_TAOBAO = ((400_000, 40_000, 30_000), (1_600_000, 50_000, 80_000))

#: (rows, users, items) per domain for each named scale.
SCALES: dict[str, SimulationSizes] = {
    # Unit tests: the whole simulation of both datasets runs in well under 2 s, and every domain
    # still keeps hundreds of rows with both classes in each chronological split after k-core.
    "tiny": _sizes((3_000, 220, 110), (9_000, 280, 220), (4_000, 300, 140), (11_000, 330, 260), 1_500),
    # The main command's default.
    "small": _sizes((30_000, 2_500, 1_500), (120_000, 4_000, 4_000), (40_000, 4_000, 2_500),
                    (160_000, 5_000, 6_000), 20_000),
    "medium": _sizes((300_000, 25_000, 12_000), (1_200_000, 40_000, 35_000), *_MEDIUM_TAOBAO, 60_000),
    # The preprocessing benchmark: the paper's movie domain size (about 2.1M rating rows).
    "movie": _sizes((2_100_000, 36_000, 20_000), (4_200_000, 60_000, 55_000), *_MEDIUM_TAOBAO, 100_000),
    # Table 1 of the paper, inflated so that k-core filtering lands near the published sizes.
    "paper": _sizes((2_500_000, 36_000, 20_000), (10_500_000, 63_000, 56_000), (5_300_000, 170_000, 200_000),
                    (18_000_000, 225_000, 450_000), 400_000),
}

#: Override keys accepted on top of a scale: every field, plus ``n_users`` (all four domains).
OVERRIDE_KEYS: tuple[str, ...] = (*(f.name for f in dataclasses.fields(SimulationSizes)), "n_users")


def resolve_sizes(scale: str, overrides: Mapping[str, Any] | None = None) -> SimulationSizes:
    """The sizes of a named scale with ``overrides`` applied, validated.

    >>> resolve_sizes("tiny", {"movie_rows": 5000}).movie_rows
    5000
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {sorted(SCALES)}")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if unknown:
        raise ValueError(f"unknown size overrides {unknown}; expected any of {list(OVERRIDE_KEYS)}")
    if "n_users" in overrides:
        n = overrides.pop("n_users")
        for d in ALL_DOMAINS:
            overrides.setdefault(f"{d}_users", n)
    typed: dict[str, Any] = {}
    for key, value in overrides.items():
        kind = float if key == "user_overlap" else int
        try:
            typed[key] = kind(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"size override {key}={value!r} is not a {kind.__name__}") from e
        if kind is int and typed[key] != float(value):
            raise ValueError(f"size override {key}={value!r} must be a whole number")
    return dataclasses.replace(SCALES[scale], **typed).validate()
