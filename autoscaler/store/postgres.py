"""PostgreSQL store, for replicas that share one state: same schema and tests as SQLite.

`postgresql://user:pw@host:5432/db?schema=tdas` keeps the tables in their own schema (created if
missing). Migrations take an advisory lock, so replicas starting together migrate once.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from autoscaler.logging import register_secret

from .sql import SqlStore, schema

_MIGRATION_LOCK = 0x7464_6173  # "tdas"


def split_schema(url: str) -> tuple[str, str]:
    """The connection URL without `schema=`, and the schema it named (default `tdas`)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"]
    name = dict(parse_qsl(parts.query)).get("schema", "tdas")
    return urlunsplit(parts._replace(query=urlencode(query))), name


class PostgresStore(SqlStore):
    placeholder = "%s"
    ids_sql = "(SELECT unnest(%s::text[]))"

    def __init__(self, url: str, connect_timeout_s: float = 10.0) -> None:
        dsn, self.schema_name = split_schema(url)
        password = urlsplit(dsn).password
        if password:
            register_secret(password)
        self.where = f"store schema {self.schema_name}"
        connection = psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, round(connect_timeout_s)))
        connection.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema_name)))
        connection.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema_name)))
        super().__init__(connection)
        self._migrate()

    def _in_transaction(self) -> bool:
        return bool(self._db.info.transaction_status != TransactionStatus.IDLE)

    def _ids(self, ids: Sequence[str]) -> object:
        return list(ids)

    def _migrations(self) -> dict[int, list[str]]:
        return schema("DOUBLE PRECISION", "BIGSERIAL PRIMARY KEY")

    def _lock_for_migration(self) -> None:
        self._x(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
