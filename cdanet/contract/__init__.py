"""The data contract: the feature schema, the processed disk layout and the vocabularies.

Everything that writes or reads processed data asks this package, never a literal path or format:

* :mod:`.schema`: :class:`DomainSchema` / :class:`FieldSpec` (one typed schema per domain), the
  contract's errors and value checks;
* :mod:`.layout`: the folder of each domain and the names of its files (schema, stats, split shards,
  vocabularies, catalogue, dead letters);
* :mod:`.splits`: the one reader of processed splits (:func:`read_split`, :func:`split_tables`);
* :mod:`.vocab`: the vocabulary file format, reading and writing it, and re-encoding rows between
  two vocabularies (:func:`remap_table`).
"""

from cdanet.contract.layout import (
    DEAD_LETTER_PREFIX,
    ITEMS_FILENAME,
    PARQUET_SUFFIX,
    SCHEMA_FILENAME,
    SPLITS,
    STATS_FILENAME,
    VOCAB_DIR,
    domain_dir,
    shard_name,
    split_files,
    vocab_filename,
)
from cdanet.contract.schema import (
    CATEGORICAL_KINDS,
    ITEM_FIELD,
    OOV_INDEX,
    SCHEMA_VERSION,
    USER_FIELD,
    USER_PROFILE_FIELDS,
    DataError,
    DomainSchema,
    FieldKind,
    FieldSpec,
    SchemaError,
    load_schemas,
    non_null_column,
)
from cdanet.contract.splits import SplitTable, read_split, split_tables
from cdanet.contract.vocab import (
    OOV_MARKER,
    Vocabulary,
    VocabularyError,
    encode_values,
    load_vocabularies,
    processed_vocab_dir,
    read_vocabularies,
    read_vocabulary,
    remap_table,
    structural_differences,
    vocab_fingerprint,
    vocab_lookup,
    vocabulary_bytes,
    write_vocabularies,
)

__all__ = [
    "CATEGORICAL_KINDS", "DEAD_LETTER_PREFIX", "ITEMS_FILENAME", "OOV_INDEX", "OOV_MARKER",
    "PARQUET_SUFFIX", "SCHEMA_FILENAME", "SCHEMA_VERSION", "SPLITS", "STATS_FILENAME", "USER_FIELD", "USER_PROFILE_FIELDS",
    "VOCAB_DIR", "DataError", "DomainSchema", "FieldKind", "FieldSpec", "ITEM_FIELD", "SchemaError",
    "SplitTable", "Vocabulary", "VocabularyError", "domain_dir", "encode_values", "load_schemas",
    "load_vocabularies", "non_null_column", "processed_vocab_dir", "read_split", "read_vocabularies",
    "read_vocabulary", "remap_table", "shard_name", "split_files", "split_tables", "structural_differences",
    "vocab_filename", "vocab_fingerprint", "vocab_lookup", "vocabulary_bytes", "write_vocabularies",
]
