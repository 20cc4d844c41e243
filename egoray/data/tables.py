"""Input tables: found and checked from their Parquet schema before a job starts (no rows read)."""

from __future__ import annotations

from collections.abc import Iterable

from egoray import storage
from egoray.data.raw import InputError


def table_source(url: str) -> str:
    """An ingest output reads its ``narrations/``; anything else is the table itself."""
    narrations = storage.join(url, "narrations")
    return narrations if storage.exists(narrations) else url


def table_columns(url: str, needed: Iterable[str], what: str = "table") -> tuple[str, list[str]]:
    """``(source, column names)`` of the table at ``url``; a missing table or column is one
    :class:`InputError` naming it (``what`` says what the table should have been)."""
    source = table_source(url)
    if not storage.exists(source):
        raise InputError(f"input not found: {url}")
    try:
        names = storage.parquet_schema(source).names
    except storage.StorageError as e:
        raise InputError(f"cannot read {what}: {e}") from None
    missing = [c for c in needed if c not in names]
    if missing:
        raise InputError(f"{source}: not a {what} (missing {missing}; found {names})")
    return source, names
