"""SQLite store (the default): one file, WAL, every commit synced, so a crash loses nothing acted on."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from .sql import SqlStore, schema


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
        self._migrate()

    def _in_transaction(self) -> bool:
        return bool(self._db.in_transaction)

    def _ids(self, ids: Sequence[str]) -> object:
        return json.dumps(list(ids))

    def _migrations(self) -> dict[int, list[str]]:
        return schema("REAL", "INTEGER PRIMARY KEY AUTOINCREMENT")
