"""Where processed data lies on disk: the folder of each domain and the names of its files.

One folder per domain under a processed root::

    <processed_root>/<domain>/schema.json                       the DomainSchema (cdanet.contract.schema)
    <processed_root>/<domain>/stats.json                        counts written by the producer
    <processed_root>/<domain>/<split>-SSSSS-of-NNNNN.parquet    (or <split>.parquet), split in SPLITS
    <processed_root>/<domain>/vocab/<field>.txt                 vocabularies (cdanet.contract.vocab), optional
    <processed_root>/<domain>/items.parquet                     item catalogue (Beam preprocessing only)
    <processed_root>/<domain>/dead_letter-*.jsonl               malformed raw lines (Beam preprocessing only)

Paths are joined with ``os.path.join`` for readers and with any joiner (``FileSystems.join`` for
object stores) for writers: the names here are the contract, not the join.
"""

from __future__ import annotations

import glob
import os

PARQUET_SUFFIX = ".parquet"
SCHEMA_FILENAME = "schema.json"
STATS_FILENAME = "stats.json"
ITEMS_FILENAME = "items" + PARQUET_SUFFIX
#: Folder of a domain's vocabularies, one ``<field>.txt`` per categorical field; a schema's
#: ``metadata["vocab"]["dir"]`` may name another one (see :func:`cdanet.contract.vocab.processed_vocab_dir`).
VOCAB_DIR = "vocab"
DEAD_LETTER_PREFIX = "dead_letter"
SPLITS: tuple[str, ...] = ("train", "validation", "test")


def domain_dir(processed_root: str, domain: str) -> str:
    """``<processed_root>/<domain>``: the folder of one domain's processed files."""
    return os.path.join(processed_root, domain)


def check_split(split: str) -> str:
    """``split`` itself when it names one of :data:`SPLITS`; ``ValueError`` otherwise."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return split


def split_files(domain_dir: str, split: str) -> list[str]:
    """The parquet files of one split, sorted; a clear error if there are none."""
    check_split(split)
    files = sorted(glob.glob(os.path.join(domain_dir, f"{split}-*{PARQUET_SUFFIX}")))
    single = os.path.join(domain_dir, f"{split}{PARQUET_SUFFIX}")
    if os.path.exists(single):
        files = [single, *files]
    if not files:
        raise FileNotFoundError(
            f"no {split} split under {domain_dir}: expected {split}{PARQUET_SUFFIX} or {split}-*{PARQUET_SUFFIX} "
            f"(parquet with the columns of {SCHEMA_FILENAME}) as written by preprocessing"
        )
    return files


def shard_name(split: str, shard: int, shards: int) -> str:
    """``<split>-SSSSS-of-NNNNN.parquet``: the file name of one shard of a split."""
    return f"{check_split(split)}-{shard:05d}-of-{shards:05d}{PARQUET_SUFFIX}"


def vocab_filename(field: str) -> str:
    """``<field>.txt``: the file name of one field's vocabulary inside a vocabulary folder."""
    return f"{field}.txt"
