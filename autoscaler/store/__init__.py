"""Durable state: owned instances, the action journal, the spend ledger, back-offs, history."""

from .base import JournalEntry, OwnedRecord, Store
from .sqlite import SqliteStore, open_store

__all__ = ["JournalEntry", "OwnedRecord", "SqliteStore", "Store", "open_store"]
