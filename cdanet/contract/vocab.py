"""Vocabularies: their file format, reading and writing them, and re-encoding rows between two of them.

Preprocessing writes one vocabulary per categorical field next to the splits,
``<processed_root>/<domain>/vocab/<field>.txt`` (:mod:`cdanet.contract.layout`): UTF-8, one value per
``\n``-terminated line, line i = the raw value encoded as index i, line 0 = the OOV marker
(``<OOV>``). A model directory carries copies in the same format (:mod:`cdanet.artifacts`). Daily
retraining rebuilds them, so the same index can mean another raw value tomorrow; :func:`remap_table`
re-encodes rows from one vocabulary into another by raw value.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cdanet.contract.layout import VOCAB_DIR, domain_dir, vocab_filename
from cdanet.contract.schema import DataError, DomainSchema, FieldKind, FieldSpec, SchemaError, non_null_column

logger = logging.getLogger(__name__)

Vocabulary = tuple[str, ...]
"""Raw values by index: ``vocab[i]`` is the value encoded as index ``i``; ``vocab[0]`` is the OOV marker."""

OOV_MARKER = "<OOV>"  # default line 0; a schema's metadata["vocab"]["oov_marker"] overrides it


class VocabularyError(DataError):
    """A vocabulary file is missing, unreadable, or does not fit the schema it is used with."""


def _vocab_meta(schema: DomainSchema) -> Mapping[str, object]:
    meta = schema.metadata.get("vocab")
    return meta if isinstance(meta, Mapping) else {}


def processed_vocab_dir(processed_root: str, schema: DomainSchema) -> str:
    """``<processed_root>/<domain>/vocab``: where preprocessing writes the domain's vocabularies."""
    return os.path.join(domain_dir(processed_root, schema.domain), str(_vocab_meta(schema).get("dir", VOCAB_DIR)))


def read_vocabulary(path: str, spec: FieldSpec, oov_marker: str = OOV_MARKER) -> Vocabulary:
    """Read one vocabulary file and check it against ``spec`` (line count, OOV line, uniqueness)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError as e:
        raise VocabularyError(
            f"no vocabulary for field {spec.name!r} at {path}: expected a UTF-8 text file with one raw value "
            f"per line (line i = value of index i, line 0 = {oov_marker!r}) as written by preprocessing"
        ) from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise VocabularyError(f"{path} is not UTF-8 text ({e}); vocabulary files are UTF-8, one value per line") from e
    # Split on "\n" only: str.splitlines would also split values containing \r, \x1c or \u2028.
    values = tuple((text[:-1] if text.endswith("\n") else text).split("\n"))
    if len(values) != spec.vocab_size:
        raise VocabularyError(
            f"{path} has {len(values)} line(s) but field {spec.name!r} has vocab_size {spec.vocab_size} in its "
            f"schema (line 0 {oov_marker!r} plus one line per value); the vocabulary and schema.json are out of sync"
        )
    if values[0] != oov_marker:
        raise VocabularyError(f"{path}: line 0 is {values[0]!r}, expected the OOV marker {oov_marker!r}")
    if len(set(values[1:])) != len(values) - 1:
        dupes = sorted(v for v, n in Counter(values[1:]).items() if n > 1)
        raise VocabularyError(
            f"{path}: {len(dupes)} value(s) appear on more than one line, e.g. {dupes[0]!r}; "
            "each raw value needs exactly one index"
        )
    return values


def read_vocabularies(vocab_dir: str, schema: DomainSchema) -> dict[str, Vocabulary]:
    """The vocabulary of every categorical field of ``schema`` from ``<vocab_dir>/<field>.txt``."""
    marker = str(_vocab_meta(schema).get("oov_marker", OOV_MARKER))
    return {
        spec.name: read_vocabulary(os.path.join(vocab_dir, vocab_filename(spec.name)), spec, marker)
        for spec in schema.fields
        if spec.is_categorical
    }


def load_vocabularies(processed_root: str, schema: DomainSchema) -> dict[str, Vocabulary] | None:
    """The vocabularies of one processed domain, or None when it has no vocab folder at all.

    Data written without vocabularies (e.g. :mod:`cdanet.synthetic`) gives None; a vocab folder
    that lacks a field's file, or whose files do not fit the schema, raises :class:`VocabularyError`.
    """
    vocab_dir = processed_vocab_dir(processed_root, schema)
    if not os.path.isdir(vocab_dir):
        return None
    return read_vocabularies(vocab_dir, schema)


def vocabulary_bytes(name: str, values: Sequence[str]) -> bytes:
    """The file content of field ``name``'s vocabulary ``values`` (``values[0]`` is the OOV marker)."""
    bad = next((v for v in values if "\n" in v), None)
    if bad is not None:
        raise VocabularyError(f"vocabulary of field {name!r}: value {bad!r} contains a newline and cannot be stored")
    return ("\n".join(values) + "\n").encode("utf-8")


def write_vocabularies(vocab_dir: str, vocabs: Mapping[str, Sequence[str]]) -> None:
    """Write ``<vocab_dir>/<field>.txt`` in the preprocessing format (the inverse of :func:`read_vocabularies`)."""
    os.makedirs(vocab_dir, exist_ok=True)
    for name, values in vocabs.items():
        content = vocabulary_bytes(name, values)
        with open(os.path.join(vocab_dir, vocab_filename(name)), "wb") as fh:
            fh.write(content)


def vocab_fingerprint(vocabs: Mapping[str, Sequence[str]]) -> str:
    """A stable hash of the (field -> values) mapping, to detect a changed vocabulary cheaply."""
    payload = json.dumps({name: list(values) for name, values in vocabs.items()}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def encode_values(vocab: Sequence[str], values: Sequence[str | None] | np.ndarray | pa.Array) -> np.ndarray:
    """Raw values -> int64 indices ``[N]`` under ``vocab``; unknown and missing values -> OOV 0.

    For serving callers that hold raw values (e.g. a writer's name) and a model's vocabulary.
    """
    index = pc.index_in(pa.array(values, pa.string()), value_set=pa.array(vocab[1:], pa.string()))
    # index_in gives the position in vocab[1:] (null when absent): +1 turns it into the index.
    return pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1


def vocab_lookup(vocab_from: Sequence[str], vocab_to: Sequence[str]) -> np.ndarray:
    """int64 ``[len(vocab_from)]``: ``lookup[i]`` = the index in ``vocab_to`` of ``vocab_from[i]``, 0 if absent.

    Index 0 (OOV) always maps to 0, whatever string the OOV markers are.
    """
    lookup = np.zeros(len(vocab_from), dtype=np.int64)
    lookup[1:] = encode_values(vocab_to, vocab_from[1:])
    return lookup


def structural_differences(
    schema_from: DomainSchema, schema_to: DomainSchema, names: tuple[str, str] = ("the source", "the target")
) -> list[str]:
    """What keeps rows of ``schema_from`` from being re-encoded into ``schema_to``; empty when nothing does.

    Field names, kinds and dense dims must agree. Vocabulary sizes may differ (that is what
    re-encoding resolves), and so may ``max_len``: lists are cut to the target's ``max_len``
    when loaded, as for any over-long list. ``names`` label the two schemas in the messages.
    """
    src, dst = names
    problems: list[str] = []
    names_from, names_to = set(schema_from.field_names), set(schema_to.field_names)
    if names_to - names_from:
        problems.append(f"fields {sorted(names_to - names_from)} of {dst} are missing from {src}")
    if names_from - names_to:
        problems.append(f"fields {sorted(names_from - names_to)} of {src} are unknown to {dst}")
    for name in sorted(names_from & names_to):
        a, b = schema_from.field(name), schema_to.field(name)
        if a.kind is not b.kind:
            problems.append(f"field {name!r} is {a.kind.value} in {src} but {b.kind.value} in {dst}")
        elif a.kind is FieldKind.DENSE_VECTOR and a.dim != b.dim:
            problems.append(f"dense field {name!r} has dim {a.dim} in {src} but {b.dim} in {dst}")
    return problems


def _checked_vocab(vocabs: Mapping[str, Sequence[str]], spec: FieldSpec, which: str) -> Sequence[str]:
    vocab = vocabs.get(spec.name)
    if vocab is None:
        raise VocabularyError(f"the {which} vocabularies lack categorical field {spec.name!r}")
    if len(vocab) != spec.vocab_size:
        raise VocabularyError(
            f"the {which} vocabulary of field {spec.name!r} has {len(vocab)} entries, but its schema says "
            f"vocab_size {spec.vocab_size}"
        )
    return vocab


def remap_table(
    table: pa.Table,
    schema_from: DomainSchema,
    vocab_from: Mapping[str, Sequence[str]],
    schema_to: DomainSchema,
    vocab_to: Mapping[str, Sequence[str]],
    source: str = "<table>",
) -> pa.Table:
    """Re-encode processed rows from one set of vocabularies into another, by raw value.

    Every ``categorical_id`` / ``categorical`` index and every element of a ``multi_hot`` list is
    replaced by the index its raw value has in ``vocab_to``; values ``vocab_to`` does not know, and
    OOV, become 0. Dense vectors, label, timestamp, raw ids and any other column pass through
    unchanged, in the same column order. Vectorised: one int64 lookup array per field
    (:func:`vocab_lookup`), gathered with numpy.

    Raises :class:`~cdanet.contract.schema.SchemaError` when the schemas differ structurally
    (:func:`structural_differences`), :class:`VocabularyError` when a vocabulary is missing or does
    not fit its schema, and :class:`DataError` (naming ``source``) for nulls or indices outside
    ``schema_from``'s vocabulary.
    """
    problems = structural_differences(schema_from, schema_to)
    if problems:
        raise SchemaError(
            f"{source}: rows of domain {schema_from.domain!r} cannot be re-encoded into the other schema: "
            + "; ".join(problems)
        )
    schema_from.check_feature_columns(table.schema, source)
    unknown: dict[str, int] = {}
    for spec in schema_from.fields:
        if not spec.is_categorical:
            continue
        lookup = vocab_lookup(_checked_vocab(vocab_from, spec, "source"),
                              _checked_vocab(vocab_to, schema_to.field(spec.name), "target"))
        unknown[spec.name] = int((lookup[1:] == 0).sum())
        col = non_null_column(table, spec.name, source)
        if spec.kind is FieldKind.MULTI_HOT:
            flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
            spec.check_indices(flat, source)
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            list_type = pa.LargeListArray if offsets[-1] > np.iinfo(np.int32).max else pa.ListArray
            offsets_type = pa.int64() if list_type is pa.LargeListArray else pa.int32()
            new = list_type.from_arrays(pa.array(offsets, offsets_type), pa.array(lookup[flat], pa.int64()))
        else:
            values = col.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
            spec.check_indices(values, source)
            new = pa.array(lookup[values], pa.int64())
        at = table.schema.get_field_index(spec.name)
        table = table.set_column(at, pa.field(spec.name, new.type, nullable=table.schema.field(at).nullable), new)
    logger.info("%s: re-encoded domain %r by raw value; values of the source vocabularies unknown to the target "
                "(now OOV 0): %s", source, schema_from.domain, unknown)
    return table
