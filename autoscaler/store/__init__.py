"""Durable state: owned instances, the action journal, the spend ledger, back-offs, history."""

from __future__ import annotations

from .base import FencedError, GuardMemoryStore, Journal, JournalEntry, OwnedRecord, Ownership, SpendLedger, Store
from .sqlite import SqliteStore


def open_store(url: str) -> Store:
    """`sqlite:///PATH` (or a bare path) or `postgresql://user:pw@host/db[?schema=NAME]`."""
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    if url.startswith("sqlite:///"):
        return SqliteStore(url.removeprefix("sqlite:///") or ":memory:")
    if "://" in url:
        raise ValueError(f"unsupported store url {url!r}; use sqlite:///PATH or postgresql://...")
    return SqliteStore(url)


__all__ = [
    "FencedError",
    "GuardMemoryStore",
    "Journal",
    "JournalEntry",
    "OwnedRecord",
    "Ownership",
    "SpendLedger",
    "SqliteStore",
    "Store",
    "open_store",
]
