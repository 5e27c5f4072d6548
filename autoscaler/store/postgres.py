"""PostgreSQL store, for replicas that share one state: same schema and tests as SQLite.

`postgresql://user:pw@host:5432/db?schema=tdas` keeps the tables in their own schema (created if
missing). Migrations take an advisory lock, so replicas starting together migrate once.

A session that drops (PostgreSQL restarted, the backend terminated, the network cut) is opened
again on the next use, with exponential back-off between failed attempts; meanwhile every use
fails at once with `StoreUnavailableError` and `problem` says why, for /readyz. A statement
that failed with the session is never repeated: its outcome is unknown, so the caller decides.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import structlog
from psycopg import sql
from psycopg.pq import TransactionStatus

from autoscaler.common.logging import register_secret
from autoscaler.common.secrets import mask_secrets

from .sql import SqlStore, schema

_MIGRATION_LOCK = 0x7464_6173  # "tdas"
_log = structlog.get_logger("autoscaler.store")


class StoreUnavailableError(psycopg.OperationalError):
    """The store's session is gone and could not be opened again yet."""


def split_schema(url: str) -> tuple[str, str]:
    """The connection URL without `schema=`, and the schema it named (default `tdas`)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"]
    name = dict(parse_qsl(parts.query)).get("schema", "tdas")
    return urlunsplit(parts._replace(query=urlencode(query))), name


def first_line(exc: BaseException) -> str:
    """psycopg's messages run to several lines (DETAIL, HINT); logs and /readyz want the first."""
    text = str(exc).strip()
    return mask_secrets(text.splitlines()[0])[:160] if text else type(exc).__name__


def session_options(role: str, connect_timeout_s: float) -> dict[str, Any]:
    """Connection options every session of ours uses: a name that says whose it is (pg_stat_activity),
    bounded connects, and TCP settings so a dead peer is noticed in seconds, not hours."""
    return {
        "autocommit": True,
        "connect_timeout": max(1, round(connect_timeout_s)),
        "application_name": f"tdas-{role}:{os.getpid()}:{socket.gethostname()}"[:63],
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 15000,
    }


class PostgresStore(SqlStore):
    placeholder = "%s"
    ids_sql = "(SELECT unnest(%s::text[]))"

    def __init__(
        self,
        url: str,
        connect_timeout_s: float = 10.0,
        *,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self._dsn, self.schema_name = split_schema(url)
        password = urlsplit(self._dsn).password
        if password:
            register_secret(password)
        self.where = f"store schema {self.schema_name}"
        self._connect_timeout_s = connect_timeout_s
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._backoff_s = reconnect_initial_s
        self._retry_at = 0.0
        self.problem: str | None = None  # why the store cannot be used now; None while it can
        super().__init__(self._connect())
        self._migrate()

    def _connect(self) -> psycopg.Connection[Any]:
        connection = psycopg.connect(self._dsn, **session_options("store", self._connect_timeout_s))
        with connection.transaction():  # IF NOT EXISTS is no guard against a replica doing the same at once
            connection.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            connection.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema_name)))
        connection.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema_name)))
        return connection

    def _migrate(self) -> None:
        """Migrations, the version table's creation included, one replica at a time: replicas started
        together would otherwise both create it, and one would die of a duplicate key in pg_type."""
        with self._lock:
            self._x(f"SELECT pg_advisory_lock({_MIGRATION_LOCK})")
            try:
                super()._migrate()
            finally:
                self._x(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK})")

    # -- a session that comes back ------------------------------------------------------------------

    def _live(self) -> psycopg.Connection[Any]:
        """The session, opened again if the last one dropped (not more often than the back-off allows)."""
        db: psycopg.Connection[Any] = self._db
        if not db.closed and not db.broken:
            return db
        now = time.monotonic()
        if now < self._retry_at:
            raise StoreUnavailableError(
                f"{self.where}: {self.problem or 'session lost'}; next try in {self._retry_at - now:.1f}s"
            )
        try:
            db = self._connect()
        except psycopg.Error as exc:
            self._retry_at = now + self._backoff_s
            self._backoff_s = min(self._reconnect_max_s, self._backoff_s * 2)
            self.problem = f"cannot reconnect: {first_line(exc)}"
            _log.warning("store_reconnect_failed", where=self.where, problem=self.problem, retry_in_s=self._backoff_s)
            raise StoreUnavailableError(f"{self.where}: {self.problem}") from None
        self._db = db
        self._backoff_s = self._reconnect_initial_s
        self._retry_at = 0.0
        self.problem = None
        _log.info("store_reconnected", where=self.where)
        return db

    def _lost(self, exc: psycopg.Error) -> None:
        """The session died under a statement: say so (for /readyz); the next use reconnects."""
        if self._db.closed or self._db.broken:
            self.problem = f"session lost: {first_line(exc)}"
            _log.warning("store_session_lost", where=self.where, problem=self.problem)

    def _x(self, statement: str, params: Sequence[object] = ()) -> Any:
        with self._lock:
            self._live()
            try:
                return super()._x(statement, params)
            except psycopg.OperationalError as exc:
                self._lost(exc)
                raise

    def _xmany(self, statement: str, rows: Sequence[Sequence[object]]) -> None:
        with self._lock:
            self._live()
            try:
                super()._xmany(statement, rows)
            except psycopg.OperationalError as exc:
                self._lost(exc)
                raise

    def ping(self) -> None:
        """Raise unless the store answers now (reconnecting if its session dropped)."""
        self._x("SELECT 1")

    # -- the dialect ------------------------------------------------------------------------------

    def _in_transaction(self) -> bool:
        return bool(self._db.info.transaction_status != TransactionStatus.IDLE)

    def _ids(self, ids: Sequence[str]) -> object:
        return list(ids)

    def _migrations(self) -> dict[int, list[str]]:
        return schema("DOUBLE PRECISION", "BIGSERIAL PRIMARY KEY")

    def _lock_for_migration(self) -> None:
        self._x(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
