"""Leader election on PostgreSQL, for replicas sharing one store.

The leader holds a session-level advisory lock on a connection of its own: if the process dies
or its connection is cut, PostgreSQL releases the lock and another replica takes it at its next
cycle. Each new leader bumps a fencing token in the `leadership` table; every journal intent is
written only while its token is still current, so a deposed leader's late call never happens.
"""

from __future__ import annotations

import contextlib
import hashlib

import psycopg
import structlog
from psycopg import sql

from autoscaler.store.postgres import PostgresStore, split_schema

_log = structlog.get_logger("autoscaler.leader")


class LeaderElector:
    def __init__(self, url: str, election: str, store: PostgresStore) -> None:
        self._dsn, self._schema = split_schema(url)
        self.election = election
        self._key = int.from_bytes(hashlib.sha256(f"tdas:{election}".encode()).digest()[:8], "big", signed=True)
        self._store = store
        self._conn: psycopg.Connection | None = None
        self.token: int | None = None

    @property
    def is_leader(self) -> bool:
        return self.token is not None

    def ensure(self) -> bool:
        """Called before every cycle: keep leadership if the lock's session is alive, else try to take it."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=5)
                self._conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self._schema)))
            if self.token is not None:
                self._conn.execute("SELECT 1")  # the session lives, so the lock is still ours
                return True
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
            if not row or not row[0]:
                return False
            bumped = self._conn.execute(
                "INSERT INTO leadership (name, token) VALUES (%s, 1)"
                " ON CONFLICT (name) DO UPDATE SET token = leadership.token + 1 RETURNING token",
                (self.election,),
            ).fetchone()
            assert bumped is not None
            self.token = int(bumped[0])
            self._store.fencing = (self.election, self.token)
            _log.info("became_leader", election=self.election, fencing_token=self.token)
            return True
        except psycopg.Error as exc:
            if self.token is not None:
                _log.warning("lost_leadership", election=self.election, reason=str(exc).strip()[:200])
            self.step_down()
            return False

    def step_down(self) -> None:
        self.token = None
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
