"""SQLite store (the default): one file, WAL, every commit synced, so a crash loses nothing acted on."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from .sql import SqlStore, schema

_log = structlog.get_logger("autoscaler.store")
_WRITES = ("BEGIN", "INSERT")  # a transaction's start, and the journal's lone writes outside one


class StoreFileLostError(sqlite3.OperationalError):
    """The store's path no longer names the file that was opened (deleted or replaced)."""


class SqliteStore(SqlStore):
    begin_sql = "BEGIN IMMEDIATE"
    greatest = "MAX"  # SQLite's scalar max
    ids_sql = "(SELECT value FROM json_each(?))"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.where = f"store {self.path}"
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        super().__init__(connection)
        self.problem: str | None = None  # for /readyz, as the PostgreSQL store's
        self._identity = self._file_identity()
        self._migrate()

    def _file_identity(self) -> tuple[int, int] | None:
        if self.path == ":memory:":
            return None
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return None
        return found.st_dev, found.st_ino

    def _x(self, sql: str, params: Sequence[object] = ()) -> Any:
        """Before a write: the path must still name the file we opened. A file deleted (or replaced)
        under an open connection takes every later write into an inode no restart will see, so
        the daemon would act on state it then loses; it stops instead, and /readyz says why."""
        if self._identity is not None and sql.startswith(_WRITES) and self._file_identity() != self._identity:
            if self.problem is None:
                self.problem = (
                    f"{self.path} was deleted or replaced while open; restore it and restart the daemon "
                    "(without it, the new empty store holds until `adopt`)"
                )
                _log.error("store_lost", where=self.where, problem=self.problem)
            raise StoreFileLostError(f"{self.where}: {self.problem}")
        return super()._x(sql, params)

    def _in_transaction(self) -> bool:
        return bool(self._db.in_transaction)

    def _ids(self, ids: Sequence[str]) -> object:
        return json.dumps(list(ids))

    def _migrations(self) -> dict[int, list[str]]:
        return schema("REAL", "INTEGER PRIMARY KEY AUTOINCREMENT")
