"""The contract files of a finished domain: vocabularies, ``schema.json`` and ``stats.json``.

Written into the domain's staged folder (:class:`~cdanet.preprocessing.staging.DomainRun` ``out``)
after the features run, in the formats of :mod:`cdanet.contract`; the parquet splits, the
catalogue and the dead letters are already there, written by the Beam runs.
"""

from __future__ import annotations

import json
from typing import Any

from apache_beam.io.filesystems import FileSystems

from cdanet.contract import (
    OOV_MARKER,
    SCHEMA_FILENAME,
    STATS_FILENAME,
    VOCAB_DIR,
    DomainSchema,
    FieldKind,
    FieldSpec,
    vocab_filename,
    vocabulary_bytes,
)
from cdanet.preprocessing.composites import label_rule
from cdanet.preprocessing.options import PreprocessingError, PreprocessOptions
from cdanet.preprocessing.staging import DomainRun, write_bytes, write_text
from cdanet.preprocessing.stats import domain_stats


def finish_domain(run: DomainRun, dataset: str, o: PreprocessOptions, glove_path: str | None) -> dict[str, Any]:
    """Write vocab files, schema.json and stats.json into the staged domain folder; return the stats."""
    counts, lay = run.counts, run.layout
    glove_dim = counts.glove.get("dim", 0)
    fields: list[FieldSpec] = []
    for f in lay.fields:
        if f.kind is FieldKind.DENSE_VECTOR:
            fields.append(FieldSpec(f.name, f.kind, dim=glove_dim, description=f.description))
            continue
        values = run.vocabs.get(f.name, [])
        if not values:
            raise PreprocessingError(
                f"field {f.name!r} of domain {run.domain} has no value in the training split (raw column "
                f"{f.column!r}); check the raw files and the field mapping (AmazonFieldMapping for Amazon metadata)"
            )
        max_len = 0
        if f.kind is FieldKind.MULTI_HOT:
            max_len = max(1, min(o.multi_hot_max_len, counts.max_len.get(f.name, 1)))
        fields.append(FieldSpec(f.name, f.kind, vocab_size=len(values) + 1, max_len=max_len, description=f.description))
        write_bytes(FileSystems.join(run.out, VOCAB_DIR, vocab_filename(f.name)),
                    vocabulary_bytes(f.name, [OOV_MARKER, *values]))
    interactions = run.inputs.get("interactions")
    assert interactions is not None
    stats = domain_stats(
        counts, dataset=dataset, domain=run.domain, file_paths=[f.path for f in run.inputs.files],
        interactions_path=interactions.path, has_user_features=run.inputs.get("users") is not None,
        k=run.k, last_pass=run.last_pass, fields=fields,
    )
    metadata = {
        "created_by": "cdanet.preprocessing",
        "k_core": run.k,
        "label_rule": label_rule(lay, o).describe(),
        "raw_files": {f.role: f.path for f in run.inputs.files},
        "raw_formats": {f.role: f.fmt.name for f in run.inputs.files},
        "split": {"fractions": list(o.split_fractions), "order": "timestamp, user_id, item_id",
                  "cut_keys": run.cuts},
        "vocab": {"dir": VOCAB_DIR, "oov_marker": OOV_MARKER, "min_count": o.vocab_min_count, "built_on": "train"},
        "options": o.to_dict(),
    }
    if lay.has_titles:
        metadata["glove"] = {"file": glove_path, "member": o.glove_member, "dim": glove_dim,
                             "tokenizer": "lower-case runs of letters", "pooling": "mean; zeros when no known word"}
    schema = DomainSchema(dataset=dataset, domain=run.domain, fields=tuple(fields), metadata=metadata)
    write_text(FileSystems.join(run.out, SCHEMA_FILENAME), schema.to_json())
    write_text(FileSystems.join(run.out, STATS_FILENAME), json.dumps(stats, indent=2, sort_keys=True))
    return stats
