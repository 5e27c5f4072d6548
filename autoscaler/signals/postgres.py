"""PostgreSQL: the team's own SQL for queued and running jobs, run read-only with a statement timeout.

The transaction is READ ONLY, so a query that would write is refused by the server itself.
"""

from __future__ import annotations

import contextlib
import os
import socket

import psycopg
import structlog
from pydantic import Field

from autoscaler.common.secrets import mask_secrets

from .base import (
    Demand,
    Secret,
    SignalError,
    SignalSource,
    SourceOptions,
    busy_flags,
    whole_count,
    widest,
    width_mix,
)

_log = structlog.get_logger("autoscaler.signals")


class PostgresOptions(SourceOptions):
    dsn: Secret = Field(default=Secret(env="TDAS_POSTGRES_DSN"), description="postgresql://user:pw@host/db")
    query: str = Field(description="one row: queued, running [, queued_gpus, running_gpus]")
    busy_query: str | None = Field(default=None, description="rows of (instance name, busy boolean)")
    width_query: str | None = Field(
        default=None,
        description="rows of (GPUs per job, queued jobs [, running jobs]): the queue's width mix, e.g. "
        "SELECT gpus, count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'running') "
        "FROM jobs GROUP BY gpus",
    )


class PostgresSignal(SignalSource):
    kind = "postgres"
    Options = PostgresOptions
    options: PostgresOptions

    def __init__(self, options: PostgresOptions, name: str | None = None) -> None:
        super().__init__(options, name)
        self._dsn = options.dsn.resolve(f"{self.name}.dsn") or "postgresql://127.0.0.1/postgres"
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            # no startup options and no named prepared statements: both break behind PgBouncer
            self._conn = psycopg.connect(
                self._dsn,
                connect_timeout=max(1, round(self.options.timeout_s)),
                autocommit=False,
                prepare_threshold=None,
            )
            self._conn.read_only = True
        return self._conn

    def interrupt(self) -> None:
        """A read overran its timeout_s on a connection gone quiet: a half-open link, which no
        client timeout of psycopg's and no keepalive ends for hours. Its socket is shut, so the
        stuck read fails on its own thread and the next read connects afresh."""
        conn = self._conn
        if conn is None or conn.closed:
            return
        with contextlib.suppress(OSError, psycopg.Error), socket.socket(fileno=os.dup(conn.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)

    def read(self, now: float) -> Demand:
        timeout_ms = int(self.options.timeout_s * 1000)
        try:
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    cur.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
                    # the user's SQL, in a read-only transaction; binary forces the extended protocol,
                    # which refuses a second statement (a COMMIT that would end the read-only one)
                    cur.execute(self.options.query, binary=True)
                    row = cur.fetchone()
                    busy = None
                    if self.options.busy_query:
                        cur.execute(self.options.busy_query, binary=True)
                        busy = busy_flags(cur.fetchall())
                    widths = None
                    if self.options.width_query:
                        cur.execute(self.options.width_query, binary=True)
                        widths = cur.fetchall()
            finally:
                conn.rollback()
        except psycopg.errors.ReadOnlySqlTransaction:
            raise SignalError(f"{self.name}: refused: the query tries to write; give a read-only SELECT") from None
        except psycopg.errors.QueryCanceled:
            raise SignalError(
                f"{self.name}: query exceeded its {self.options.timeout_s:g}s statement timeout"
            ) from None
        except psycopg.Error as exc:
            self.close()
            raise SignalError(f"{self.name}: {type(exc).__name__}: {mask_secrets(str(exc).strip())[:200]}") from None
        if row is None or len(row) < 2:
            raise SignalError(f"{self.name}: the query must return one row with queued and running")
        try:
            queued, running = whole_count(row[0], "queued"), whole_count(row[1], "running")
            queued_gpus = whole_count(row[2], "queued_gpus") if len(row) > 2 and row[2] is not None else None
            running_gpus = whole_count(row[3], "running_gpus") if len(row) > 3 and row[3] is not None else None
            queued_mix = running_mix = None
            if widths is not None:
                if any(len(w) < 2 for w in widths):
                    raise ValueError("width_query rows must be (gpus, queued [, running])")
                skipped: list[str] = []  # a NULL or fractional width: those jobs count, of unknown width
                queued_mix = width_mix([[w[0], w[1]] for w in widths], "width_query queued", skipped)
                if all(len(w) > 2 for w in widths):
                    running_mix = width_mix([[w[0], w[2]] for w in widths], "width_query running", [])
                if skipped:
                    _log.warning("job_widths_unreadable", source=self.name, rows=len(skipped), first=skipped[0])
            return Demand(
                queued_jobs=queued,
                running_jobs=running,
                observed_at=now,
                queued_gpus=queued_gpus,
                running_gpus=running_gpus,
                busy=busy,
                source=self.name,
                max_job_gpus=widest(queued_mix),
                queued_by_width=queued_mix,
                running_by_width=running_mix,
            )
        except (TypeError, ValueError) as exc:
            raise SignalError(f"{self.name}: the query returned {row!r}: {exc}") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
