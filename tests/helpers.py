"""Two small, deliberately different domain schemas shared by the layer, model and loss tests."""

from __future__ import annotations

from cdanet.features import DomainSchema, FieldKind, FieldSpec


def movie_schema() -> DomainSchema:
    return DomainSchema("amazon", "movie", (
        FieldSpec("user_id", FieldKind.CATEGORICAL_ID, vocab_size=50),
        FieldSpec("item_id", FieldKind.CATEGORICAL_ID, vocab_size=40),
        FieldSpec("genre", FieldKind.CATEGORICAL, vocab_size=6),
        FieldSpec("director", FieldKind.CATEGORICAL, vocab_size=9),
        FieldSpec("title", FieldKind.DENSE_VECTOR, dim=6),
    ))


def book_schema() -> DomainSchema:
    return DomainSchema("amazon", "book", (
        FieldSpec("user_id", FieldKind.CATEGORICAL_ID, vocab_size=60),
        FieldSpec("item_id", FieldKind.CATEGORICAL_ID, vocab_size=70),
        FieldSpec("category", FieldKind.MULTI_HOT, vocab_size=12, max_len=3),
        FieldSpec("writer", FieldKind.CATEGORICAL, vocab_size=11),
        FieldSpec("title", FieldKind.DENSE_VECTOR, dim=5),
    ))


def schemas() -> dict[str, DomainSchema]:
    """Heterogeneous inputs: the domains share no field definition (multi-hot only in book)."""
    return {"movie": movie_schema(), "book": book_schema()}
