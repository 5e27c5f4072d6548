"""Leader election on PostgreSQL, for replicas sharing one store: a lock and a lease (DESIGN rule 15).

- The leader holds a session-level advisory lock on a connection of its own: if the process dies
  or that session is cut, PostgreSQL releases the lock and another replica takes it at its next
  cycle (fast failover after a crash).
- The lock alone cannot tell a frozen leader (SIGSTOP, a wedged cycle) from a live one, so
  leadership is also a lease: the `leadership` row's `expires_at`, renewed by the leader at each
  cycle and before each API call. Once it has lapsed (on the database's clock), a follower ends
  the holder's session, so its lock goes with it, and takes over.
- A leader whose lease has lapsed on its own (monotonic) clock, whose lock session is gone, or
  whose store does not answer stands down and makes no call: `check_before_call` is run by the
  client right before each attempt goes on the wire, retries and waits included.
- Each new leader bumps the fencing token; journal intents are written only while it is current.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from typing import Any

import psycopg
import structlog
from psycopg import sql

from autoscaler.store import FencedError
from autoscaler.store.postgres import PostgresStore, first_line, session_options, split_schema

_log = structlog.get_logger("autoscaler.leader")

_DB_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
_TAKEOVER_WAIT_S = 2.0  # for the ended session's lock to be released


def _renewal_margin(lease_s: float) -> float:
    """What must be left of a lease just renewed for a call to go out on it."""
    return min(5.0, 0.1 * lease_s)


def advisory_key(schema: str, election: str) -> int:
    """The advisory lock's key. Advisory locks are database-wide, so the schema is part of it:
    fleets (and test runs) keeping their state in separate schemas never wait on each other."""
    digest = hashlib.sha256(f"tdas:{schema}:{election}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_ids(key: int) -> tuple[int, int]:
    """How pg_locks shows a bigint advisory key: (classid, objid), with objsubid 1."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


class LeaderElector:
    def __init__(self, url: str, election: str, store: PostgresStore, *, lease_s: float = 90.0) -> None:
        if not lease_s > 0:
            raise ValueError(f"lease_s must be positive, not {lease_s!r}")
        self._dsn, self._schema = split_schema(url)
        self.election = election
        self._key = advisory_key(self._schema, election)
        self._lock_ids = lock_ids(self._key)
        self._store = store
        self.lease_s = lease_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._conn: psycopg.Connection[Any] | None = None
        self._renewed_at: float | None = None  # monotonic time just before the last renewal was sent
        self._mutex = threading.RLock()
        self.token: int | None = None
        self.problem: str | None = None  # why this replica cannot lead (store unreachable); for /readyz

    def set_lease(self, lease_s: float) -> None:
        """A reload's lease: the local check uses it at once, the database from the next renewal."""
        if not lease_s > 0:
            raise ValueError(f"lease_s must be positive, not {lease_s!r}")
        # no lock: a renewal stuck on a store that does not answer holds it, and the reload (on the
        # main thread) would wait with it, SIGTERM unheard; one float is written whole
        self.lease_s = lease_s

    @property
    def is_leader(self) -> bool:
        return self.token is not None

    def leading_now(self) -> bool:
        """Read without the elector's lock, which a renewal stuck on an unanswering store holds: a
        token, and a lease that has not lapsed on this process's clock."""
        renewed_at = self._renewed_at
        return self.token is not None and renewed_at is not None and time.monotonic() - renewed_at < self.lease_s

    # -- each cycle ---------------------------------------------------------------------------------

    def ensure(self) -> bool:
        """Called before every cycle: renew the lease if we lead, else try to take leadership."""
        with self._mutex:
            try:
                self._store.ping()  # leadership needs a live store: a leader cut off from it stands down
                conn = self._connection()
                if self.token is not None:
                    self._renew(conn, "cycle")
                    self.problem = None
                    return True
                self.problem = None
                return self._acquire(conn)
            except FencedError as exc:
                _log.warning("lost_leadership", election=self.election, reason=str(exc))
                self.step_down()
                return False
            except psycopg.Error as exc:
                self.problem = f"store unreachable: {first_line(exc)}"
                if self.token is not None:
                    _log.warning("lost_leadership", election=self.election, reason=self.problem)
                self.step_down()
                return False

    def check_before_call(self, operation: str) -> None:
        """The client's hook, right before an attempt goes on the wire: raise FencedError unless we
        still lead under a lease that has not lapsed; renewing it proves the lock session lives."""
        with self._mutex:
            if self.token is None:
                raise FencedError(f"{operation}: not sent: this replica is not the leader")
            try:
                self._renew(self._connection(), operation)
            except FencedError as exc:
                _log.warning("lost_leadership", election=self.election, reason=str(exc), operation=operation)
                self.step_down()
                raise
            except psycopg.Error as exc:
                reason = f"{operation}: not sent: the leader's session is gone ({first_line(exc)})"
                _log.warning("lost_leadership", election=self.election, reason=reason)
                self.step_down()
                raise FencedError(reason) from None

    def step_down(self, timeout: float | None = None) -> bool:
        """Close the lock's session: PostgreSQL releases the lock, a follower takes it.

        With `timeout` (shutdown), False when another thread still holds the elector in a store call
        that does not return (a store that stopped answering): this replica stops leading anyway,
        and the session ends with the process, so the lease lapses for the next leader."""
        if not self._mutex.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            self.token = None  # refused at the next check, whenever the stuck call returns
            return False
        try:
            self.token = None
            self._renewed_at = None  # the store keeps the old token: a stray intent is refused, not unfenced
            if self._conn is not None:
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
            self._conn = None
            return True
        finally:
            self._mutex.release()

    # -- the machinery ------------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self.token is not None:  # the lock went with the old session
                raise FencedError(f"the session holding the lock of {self.election!r} is gone")
            self._conn = psycopg.connect(self._dsn, **session_options("leader", 5.0))
            self._conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self._schema)))
        return self._conn

    def _renew(self, conn: psycopg.Connection[Any], why: str) -> None:
        """Extend our lease, if it has not lapsed and our token is still current; else FencedError."""
        assert self.token is not None
        now = time.monotonic()
        if self._renewed_at is None or now - self._renewed_at >= self.lease_s:
            lapsed = "never held" if self._renewed_at is None else f"{now - self._renewed_at - self.lease_s:.1f}s ago"
            raise FencedError(f"{why}: not sent: the lease of {self.election!r} lapsed {lapsed} (frozen?)")
        row = conn.execute(
            f"UPDATE leadership SET expires_at = {_DB_NOW} + %s"  # noqa: S608
            f" WHERE name = %s AND token = %s AND expires_at > {_DB_NOW} RETURNING token",
            (self.lease_s, self.election, self.token),
        ).fetchone()
        if row is None:
            raise FencedError(f"{why}: not sent: token {self.token} of {self.election!r} is no longer current")
        # The reply may come late (a stalled network, a freeze): the lease runs from before the
        # UPDATE, so one that lapsed while we waited for its answer is no lease to call on.
        waited = time.monotonic() - now
        if waited >= self.lease_s - _renewal_margin(self.lease_s):
            raise FencedError(
                f"{why}: not sent: renewing the lease of {self.election!r} took {waited:.1f}s of its"
                f" {self.lease_s:g}s; another replica may lead by now"
            )
        self._renewed_at = now  # taken before the UPDATE: our idea of the expiry is never later than the database's

    def _acquire(self, conn: psycopg.Connection[Any]) -> bool:
        if not self._try_lock(conn) and not self._take_over_lapsed(conn):
            return False
        started = time.monotonic()
        bumped = conn.execute(
            f"INSERT INTO leadership (name, token, expires_at, holder) VALUES (%s, 1, {_DB_NOW} + %s, %s)"  # noqa: S608
            " ON CONFLICT (name) DO UPDATE SET token = leadership.token + 1, expires_at = excluded.expires_at,"
            " holder = excluded.holder RETURNING token",
            (self.election, self.lease_s, self.holder),
        ).fetchone()
        assert bumped is not None
        self.token = int(bumped[0])
        self._renewed_at = started
        self._store.fence(self.election, self.token)
        _log.info("became_leader", election=self.election, fencing_token=self.token, lease_s=self.lease_s)
        return True

    def _try_lock(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
        return bool(row and row[0])

    def _take_over_lapsed(self, conn: psycopg.Connection[Any]) -> bool:
        """The lock is held; if its holder's lease has lapsed, end the holder's session and take the lock."""
        row = conn.execute(
            f"SELECT expires_at, {_DB_NOW}, holder FROM leadership WHERE name = %s",  # noqa: S608
            (self.election,),
        ).fetchone()
        if row is None or row[0] is None or row[0] > row[1]:
            return False  # a live leader (or one from before leases, whose lock still speaks for it)
        expires_at, db_now, holder = row
        pids = [
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
                " AND classid::bigint = %s AND objid::bigint = %s AND pid <> pg_backend_pid()",
                self._lock_ids,
            ).fetchall()
        ]
        _log.warning(
            "taking_over_lapsed_lease",
            election=self.election,
            holder=holder,
            lapsed_s=round(db_now - expires_at, 1),
            ending_sessions=pids,
        )
        try:
            for pid in pids:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        except psycopg.errors.InsufficientPrivilege:
            _log.error(
                "cannot_take_over",
                election=self.election,
                reason="not allowed to end the frozen leader's session: run every replica as the same"
                " database role, or grant it pg_signal_backend",
            )
            return False
        deadline = time.monotonic() + _TAKEOVER_WAIT_S
        while time.monotonic() < deadline:
            if self._try_lock(conn):
                return True
            time.sleep(0.05)
        return False
