"""Typed options of the preprocessing job, with the paper's defaults (Sec. 5.1.1)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from cdanet.config import DATASETS

#: k of the k-core filter per domain (paper Sec. 5.1.1: 5 / 10 for movie / book and ad / rec).
DEFAULT_K_CORE: Mapping[str, int] = MappingProxyType({"movie": 5, "book": 10, "ad": 5, "rec": 10})


#: Accepted unix seconds, ``[1990-01-01, 2100-01-01)`` UTC (``PreprocessOptions.timestamp_range``): the
#: public files span 1995-2018 (Amazon) and 2017 (Taobao); a value outside is a corrupt field.
DEFAULT_TIMESTAMP_RANGE: tuple[int, int] = (631_152_000, 4_102_444_800)


class PreprocessingError(ValueError):
    """Bad input or options: the message names the file, field or option and the expected format."""


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class AmazonFieldMapping:
    """Where the paper's item fields come from in Amazon metadata (2014, 2018 and 2023 dumps).

    * ``title``: the first non-empty key of ``title_keys``.
    * genre (movie) / category (book), multi-hot: the category list under the first present key of
      ``category_keys`` (2014 nests paths, ``[['Movies & TV', 'Movies']]``; 2018/2023 are flat), every
      path element except the roots in ``root_categories[domain]``, deduplicated in order.
    * director (movie) / writer (book), categorical: a ``details`` entry whose normalised key
      (lower case, without a trailing colon) is in ``person_detail_keys[domain]``, else a top-level
      key of ``person_top_keys[domain]`` (a string or a ``{"name": ...}`` object as in 2023 books),
      else the first non-empty key of ``person_fallback_keys`` (``brand`` in 2018, ``store`` in 2023,
      which name the studio / author for most items). A list of names keeps its first name.
    """

    item_id_keys: tuple[str, ...] = ("parent_asin", "asin")
    title_keys: tuple[str, ...] = ("title",)
    category_keys: tuple[str, ...] = ("categories", "category")
    root_categories: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: _frozen({"movie": ("Movies & TV",), "book": ("Books",)})
    )
    person_detail_keys: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: _frozen(
            {"movie": ("director", "directors", "directed by"), "book": ("author", "authors", "writer", "by")}
        )
    )
    person_top_keys: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: _frozen({"movie": ("director",), "book": ("author",)})
    )
    person_fallback_keys: tuple[str, ...] = ("brand", "store")
    #: Keys of the item id in 2023 review lines; ``parent_asin`` groups the variants of a product.
    review_item_keys: tuple[str, ...] = ("parent_asin", "asin")


@dataclass(frozen=True)
class PreprocessOptions:
    """Everything that shapes the processed data; recorded in each ``schema.json`` ``metadata``.

    Label rules: Amazon ``rating > rating_threshold`` is positive (paper: scores larger than 3);
    Taobao ad ``clk`` is the label; Taobao rec ``behavior_type in positive_behaviors`` is positive
    (paper: buy). ``max_timestamp`` drops later rows; ``window_days`` keeps only rows in the last N
    days up to ``max_timestamp`` (or the newest row) for scheduled retraining on a sliding window.
    """

    k_core: Mapping[str, int] = field(default_factory=lambda: _frozen(DEFAULT_K_CORE))
    rating_threshold: float = 3.0
    rating_range: tuple[float, float] = (0.0, 5.0)
    #: Accepted interaction timestamps, unix seconds ``[low, high)``; a line outside is the dead letter
    #: ``timestamp_out_of_range``. Default 1990-01-01 .. 2100-01-01 UTC (the public files: 1995-2018).
    timestamp_range: tuple[int, int] = DEFAULT_TIMESTAMP_RANGE
    positive_behaviors: tuple[str, ...] = ("buy",)
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    vocab_min_count: int = 1
    multi_hot_max_len: int = 16
    malformed_threshold: float = 0.01
    max_timestamp: int | None = None
    window_days: int | None = None
    #: k-core rounds (a user pass then an item pass) unrolled in one pipeline run; the driver runs
    #: more until a pass removes nothing, so this trades pipeline launches against idle passes.
    kcore_rounds_per_run: int = 3
    #: Hash partitions of the keyed shuffles (dedup, k-core passes, joins).
    num_partitions: int = 16
    #: Lines per parse bundle: parsing runs per chunk, not per element, to keep Beam overhead low.
    chunk_lines: int = 50_000
    glove_member: str | None = None
    amazon: AmazonFieldMapping = field(default_factory=AmazonFieldMapping)
    domains: tuple[str, ...] | None = None

    def with_k_core(self, overrides: Mapping[str, int]) -> PreprocessOptions:
        return replace(self, k_core=_frozen({**self.k_core, **overrides}))

    def validate(self, dataset: str | None = None) -> PreprocessOptions:
        """Raise :class:`PreprocessingError` listing every invalid option; return self when valid."""
        errors: list[str] = []
        for dom, k in self.k_core.items():
            if dom not in DEFAULT_K_CORE:
                errors.append(f"k_core names unknown domain {dom!r}; expected one of {sorted(DEFAULT_K_CORE)}")
            if not isinstance(k, int) or k < 1:
                errors.append(f"k_core[{dom!r}] must be an integer >= 1, got {k!r}")
        lo, hi = self.rating_range
        if not lo <= self.rating_threshold <= hi:
            errors.append(f"rating_threshold {self.rating_threshold} lies outside rating_range {self.rating_range}")
        t_lo, t_hi = self.timestamp_range
        if not (isinstance(t_lo, int) and isinstance(t_hi, int) and 0 <= t_lo < t_hi):
            errors.append(f"timestamp_range must be two unix seconds 0 <= low < high, got {self.timestamp_range}")
        if len(self.split_fractions) != 3 or min(self.split_fractions) <= 0 or abs(sum(self.split_fractions) - 1) > 1e-9:
            errors.append(f"split_fractions must be three positive fractions summing to 1, got {self.split_fractions}")
        if self.vocab_min_count < 1:
            errors.append(f"vocab_min_count must be >= 1, got {self.vocab_min_count}")
        if self.multi_hot_max_len < 1:
            errors.append(f"multi_hot_max_len must be >= 1, got {self.multi_hot_max_len}")
        if not 0 <= self.malformed_threshold <= 1:
            errors.append(f"malformed_threshold must be a fraction in [0, 1], got {self.malformed_threshold}")
        if self.window_days is not None and self.window_days < 1:
            errors.append(f"window_days must be >= 1, got {self.window_days}")
        for name in ("kcore_rounds_per_run", "num_partitions", "chunk_lines"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.positive_behaviors:
            errors.append("positive_behaviors must name at least one behavior_type (pv, buy, cart, fav)")
        if dataset is not None:
            if dataset not in DATASETS:
                errors.append(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
            elif self.domains is not None:
                unknown = sorted(set(self.domains) - set(DATASETS[dataset]))
                if unknown or not self.domains:
                    errors.append(
                        f"domains {list(self.domains)} must be a non-empty subset of {DATASETS[dataset]}"
                    )
        if errors:
            raise PreprocessingError("invalid preprocessing options:\n  - " + "\n  - ".join(errors))
        return self

    def domains_of(self, dataset: str) -> tuple[str, ...]:
        """The domains to preprocess: ``domains`` when set, else every domain of ``dataset`` (``cdanet.config.DATASETS``)."""
        return tuple(self.domains) if self.domains is not None else tuple(DATASETS[dataset])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for the provenance in ``schema.json``)."""
        m = self.amazon
        return {
            "k_core": dict(self.k_core),
            "rating_threshold": self.rating_threshold,
            "rating_range": list(self.rating_range),
            "timestamp_range": list(self.timestamp_range),
            "positive_behaviors": list(self.positive_behaviors),
            "split_fractions": list(self.split_fractions),
            "vocab_min_count": self.vocab_min_count,
            "multi_hot_max_len": self.multi_hot_max_len,
            "malformed_threshold": self.malformed_threshold,
            "max_timestamp": self.max_timestamp,
            "window_days": self.window_days,
            "amazon_field_mapping": {
                "item_id_keys": list(m.item_id_keys),
                "title_keys": list(m.title_keys),
                "category_keys": list(m.category_keys),
                "root_categories": {k: list(v) for k, v in m.root_categories.items()},
                "person_detail_keys": {k: list(v) for k, v in m.person_detail_keys.items()},
                "person_top_keys": {k: list(v) for k, v in m.person_top_keys.items()},
                "person_fallback_keys": list(m.person_fallback_keys),
                "review_item_keys": list(m.review_item_keys),
            },
        }
