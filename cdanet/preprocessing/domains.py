"""The domain definitions of preprocessing: each domain's label source, fields and their source columns.

The two domains of a dataset have different fields (heterogeneous inputs, paper Sec. 3 and
5.1.1); this module is the one place that lists them, and the one place that names a domain's
label, for preprocessing. Which domains a dataset has is ``cdanet.config.DATASETS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

import pyarrow as pa

from cdanet.contract import CATEGORICAL_KINDS, ITEM_FIELD, USER_FIELD, DomainSchema, FieldKind, FieldSpec
from cdanet.preprocessing.formats import PROFILE_FIELDS


@dataclass(frozen=True)
class FieldSource:
    """A schema field and the column of the joined interaction table it is encoded from."""

    name: str
    kind: FieldKind
    column: str
    description: str

    @property
    def is_categorical(self) -> bool:
        return self.kind in CATEGORICAL_KINDS


class LabelSource(str, Enum):
    """The raw signal a domain's binary label comes from (paper Sec. 5.1.1); the column it is read from."""

    RATING = "rating"  # rating > PreprocessOptions.rating_threshold (Amazon)
    CLICK = "clk"  # clk > 0 (Taobao ad)
    BEHAVIOR = "behavior"  # behavior_type in PreprocessOptions.positive_behaviors (Taobao rec)


@dataclass(frozen=True)
class DomainLayout:
    """The fields of one domain and its label source; ``catalogue_columns`` are row columns that describe the item."""

    dataset: str
    domain: str
    label: LabelSource
    fields: tuple[FieldSource, ...]
    catalogue_columns: tuple[str, ...] = ()

    @property
    def has_titles(self) -> bool:
        return any(f.kind is FieldKind.DENSE_VECTOR for f in self.fields)

    def categorical(self) -> tuple[FieldSource, ...]:
        return tuple(f for f in self.fields if f.is_categorical)

    def arrow_schema(self) -> pa.Schema:
        """The parquet schema of the splits (arrow types do not depend on vocabulary sizes)."""
        placeholder = DomainSchema(
            dataset=self.dataset,
            domain=self.domain,
            fields=tuple(
                FieldSpec(f.name, f.kind, vocab_size=2 if f.is_categorical else 0,
                          dim=1 if f.kind is FieldKind.DENSE_VECTOR else 0,
                          max_len=1 if f.kind is FieldKind.MULTI_HOT else 0)
                for f in self.fields
            ),
        )
        return placeholder.arrow_schema()


def _ids(item: str) -> tuple[FieldSource, FieldSource]:
    return (
        FieldSource(USER_FIELD, FieldKind.CATEGORICAL_ID, USER_FIELD, "user id"),
        FieldSource(ITEM_FIELD, FieldKind.CATEGORICAL_ID, ITEM_FIELD, f"{item} id"),
    )


_TITLE = "mean GloVe vector of the title words"

LAYOUTS: Mapping[str, DomainLayout] = MappingProxyType({
    "movie": DomainLayout("amazon", "movie", LabelSource.RATING, (
        *_ids("movie (asin)"),
        FieldSource("genre", FieldKind.MULTI_HOT, "categories", "movie genres (category paths without the root)"),
        FieldSource("director", FieldKind.CATEGORICAL, "person", "movie director (details, else brand/store)"),
        FieldSource("title", FieldKind.DENSE_VECTOR, "title", _TITLE),
    )),
    "book": DomainLayout("amazon", "book", LabelSource.RATING, (
        *_ids("book (asin)"),
        FieldSource("category", FieldKind.MULTI_HOT, "categories", "book categories (category paths without the root)"),
        FieldSource("writer", FieldKind.CATEGORICAL, "person", "book writer (details/author, else brand/store)"),
        FieldSource("title", FieldKind.DENSE_VECTOR, "title", _TITLE),
    )),
    "ad": DomainLayout("taobao", "ad", LabelSource.CLICK, (
        *_ids("ad (adgroup_id)"),
        *(FieldSource(f, FieldKind.CATEGORICAL, f, f"user profile: {f}") for f in PROFILE_FIELDS),
        FieldSource("category", FieldKind.CATEGORICAL, "category", "ad category (cate_id)"),
        FieldSource("brand", FieldKind.CATEGORICAL, "brand", "ad brand (NULL -> OOV)"),
        FieldSource("campaign", FieldKind.CATEGORICAL, "campaign", "ad campaign_id"),
        FieldSource("customer", FieldKind.CATEGORICAL, "customer", "advertiser (customer)"),
        FieldSource("price_bucket", FieldKind.CATEGORICAL, "price_bucket", "floor(log2(price + 1))"),
        FieldSource("pid", FieldKind.CATEGORICAL, "pid", "ad slot (pid)"),
    )),
    "rec": DomainLayout("taobao", "rec", LabelSource.BEHAVIOR, (
        *_ids("item"),
        FieldSource("category", FieldKind.CATEGORICAL, "category", "item category (category_id)"),
    ), catalogue_columns=("category",)),
})
