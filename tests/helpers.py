"""Shared test fixtures: two small, deliberately different domain schemas, and the configure step as
the pipeline calls it."""

from __future__ import annotations

import functools
import json
import os
import tempfile

import yaml

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


_KFP_TYPES = {"NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "STRING": str, "BOOLEAN": bool, "LIST": list,
              "STRUCT": dict}


@functools.cache
def compiled_spec() -> dict:
    """The compiled pipeline's spec (the first YAML document), compiled once per test session."""
    import pipeline as P

    path = os.path.join(tempfile.mkdtemp(prefix="cdanet-spec-"), "pipeline.yaml")
    with open(P.compile_pipeline(path)) as fh:
        return next(yaml.safe_load_all(fh))  # the second document: kfp-kubernetes settings


def configure_as_compiled(tmp_path, **params):
    """Run the configure component as a cluster would for a run created with ``params``: each input the
    compiled spec wires to a pipeline parameter gets the run's value, else that parameter's compiled
    default. Raw data and GloVe under ``tmp_path``. Returns the frozen
    config JSON (a dict)."""
    from kfp import dsl

    import components as C

    spec = compiled_spec()
    root = spec["root"]["inputDefinitions"]["parameters"]
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    glove = tmp_path / "glove.txt"
    glove.write_text("the 0.1 0.2\n")
    run = {"raw_uri": str(raw), "glove_uri": str(glove), **params}
    kwargs = {}
    for name, wiring in spec["root"]["dag"]["tasks"]["configure"]["inputs"]["parameters"].items():
        source = wiring["componentInputParameter"]
        if source in run:
            kwargs[name] = run[source]
        else:  # the YAML holds every number as a double; the driver hands the component its declared type
            kwargs[name] = _KFP_TYPES[root[source]["parameterType"]](root[source]["defaultValue"])
    config = dsl.Artifact(name="config", uri=str(tmp_path / "config.json"), metadata={})
    C.configure.python_func(config=config, **kwargs)
    with open(config.path) as fh:
        return json.load(fh)
