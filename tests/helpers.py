"""Two small, deliberately different domain schemas shared by the layer, model and loss tests."""

from __future__ import annotations

from cdanet.contract import DomainSchema, FieldKind, FieldSpec


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


def configure(tmp_path, **overrides):
    """``steps.configure`` as the pipeline calls it, with a raw folder and a GloVe file under ``tmp_path``:
    the tiny profile unless ``overrides`` say otherwise. Returns the ``steps.PipelineConfig``."""
    from cdanet import steps

    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    glove = tmp_path / "glove.txt"
    glove.write_text("the 0.1 0.2\n")
    kwargs = dict(dataset="amazon", target_domain="", raw_uri=str(raw), glove_uri=str(glove), profile="tiny",
                  alpha=None, beta=None, num_experts=2, latent_dim=8, max_epochs=1, batch_size=64,
                  learning_rate=0.001, seed=0, extra_overrides=[], min_auc=0.6, tolerance=0.0,
                  baseline_margin=0.005)
    return steps.configure(**{**kwargs, **overrides})
