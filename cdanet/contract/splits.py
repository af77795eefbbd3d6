"""The one reader of processed splits: a domain's parquet shards -> arrow tables.

Every module that reads processed rows (:mod:`cdanet.data`, :mod:`cdanet.validation`,
:mod:`cdanet.evaluation`, serving and the studies) goes through :func:`split_tables` or
:func:`read_split`, so a change of the file layout or of the shard checks happens here only.
Given a :class:`~cdanet.contract.schema.DomainSchema` (rather than a bare domain name) and no column
selection, each shard is checked against it and errors name the shard.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from cdanet.contract.layout import domain_dir, split_files
from cdanet.contract.schema import DataError, DomainSchema


@dataclass(frozen=True)
class SplitTable:
    """One split of one domain as a single arrow table, with the shards it was read from (in order)."""

    table: pa.Table
    files: tuple[str, ...]


def split_tables(
    processed_root: str, domain: DomainSchema | str, split: str, *, columns: Sequence[str] | None = None
) -> Iterator[tuple[str, pa.Table]]:
    """``(path, table)`` per shard of ``<processed_root>/<domain>/<split>*.parquet``, in file order.

    ``domain``: the domain's schema (each whole shard is checked against it: a
    :class:`~cdanet.contract.schema.SchemaError` names the shard) or only its name (no check).
    ``columns``: read only these columns (no schema check). Raises ``FileNotFoundError`` when the
    split has no files and :class:`~cdanet.contract.schema.DataError` for an unreadable shard.
    """
    schema = domain if isinstance(domain, DomainSchema) else None
    for path in split_files(domain_dir(processed_root, _name(domain)), split):
        try:
            table = pq.read_table(path, columns=list(columns) if columns is not None else None)
        except (OSError, pa.ArrowInvalid) as e:
            raise DataError(f"{path} is not a readable parquet file: {e}") from e
        if schema is not None and columns is None:
            schema.check_arrow_schema(table.schema, path)
        yield path, table


def read_split(
    processed_root: str,
    domain: DomainSchema | str,
    split: str,
    *,
    columns: Sequence[str] | None = None,
    limit: int | None = None,
) -> SplitTable:
    """The shards of :func:`split_tables` concatenated into one table (at most ``limit`` rows).

    Shards written by different workers may disagree on nullability or list flavour, so they are
    concatenated with permissive type promotion; shards that cannot be reconciled raise
    :class:`~cdanet.contract.schema.DataError` listing the files. With ``limit``, shards after the
    one that reaches it are not read.
    """
    tables: list[pa.Table] = []
    files: list[str] = []
    for path, table in split_tables(processed_root, domain, split, columns=columns):
        tables.append(table)
        files.append(path)
        if limit is not None and sum(t.num_rows for t in tables) >= limit:
            break
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DataError(
            f"the {split} shards under {domain_dir(processed_root, _name(domain))} have incompatible arrow "
            f"schemas ({e}); files: {files}"
        ) from e
    return SplitTable(table if limit is None else table.slice(0, limit), tuple(files))


def _name(domain: DomainSchema | str) -> str:
    return domain.domain if isinstance(domain, DomainSchema) else domain
