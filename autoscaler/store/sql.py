"""The store on SQL, one implementation for SQLite and PostgreSQL: they differ only in how they
connect, their column types, placeholders, and a few spellings (see the subclass attributes)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from autoscaler.common.clock import CLOCK_SLACK_S
from autoscaler.common.secrets import mask_secrets
from autoscaler.core.money import Spend
from autoscaler.core.shape import OwnedShape

from .base import FencedError, JournalEntry, OwnedRecord

SCHEMA_VERSION = 5


def schema(float_type: str, serial: str) -> dict[int, list[str]]:
    """Migrations by version; every statement is portable but for the two types named."""
    f = float_type
    return {
        1: [
            f"""CREATE TABLE instances (
                id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at {f} NOT NULL, offer_key TEXT,
                status TEXT, status_since {f}, idle_since {f}, busy INTEGER, retiring_for TEXT,
                storage_rate {f} NOT NULL DEFAULT 0, last_rate {f}, last_accrued_at {f}, start_refused_at {f})""",
            f"""CREATE TABLE journal (
                id {serial}, cycle_id TEXT NOT NULL, at {f} NOT NULL, kind TEXT NOT NULL,
                name TEXT, instance_id TEXT, offer_key TEXT, gpus INTEGER NOT NULL DEFAULT 0,
                hourly_price {f} NOT NULL DEFAULT 0, replaces TEXT, reason TEXT NOT NULL DEFAULT '',
                outcome TEXT, outcome_at {f}, error TEXT, fencing_token BIGINT)""",
            "CREATE INDEX journal_name ON journal(name)",
            f"""CREATE TABLE ledger (day TEXT NOT NULL, instance_id TEXT NOT NULL, usd {f} NOT NULL,
                PRIMARY KEY (day, instance_id))""",
            f"CREATE TABLE backoffs (offer_key TEXT PRIMARY KEY, until {f} NOT NULL, reason TEXT)",
            f"CREATE TABLE history (at {f} NOT NULL, desired INTEGER, active INTEGER NOT NULL)",
            "CREATE INDEX history_at ON history(at)",
            "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT)",
            "CREATE TABLE leadership (name TEXT PRIMARY KEY, token BIGINT NOT NULL)",
        ],
        2: ["CREATE INDEX journal_instance ON journal(instance_id)"],  # an instance's latest action
        3: [  # rule 12: what an instance is comes from our own record; rule 11: absence is not deletion
            "ALTER TABLE instances ADD COLUMN shape TEXT",
            f"ALTER TABLE instances ADD COLUMN expected_rate {f}",
            f"ALTER TABLE instances ADD COLUMN seen_rate {f}",
            f"ALTER TABLE instances ADD COLUMN detail_at {f}",
            f"ALTER TABLE instances ADD COLUMN absent_since {f}",
            "ALTER TABLE journal ADD COLUMN shape TEXT",
        ],
        4: [  # leadership is a lease (DESIGN rule 15): renewed by the leader, lapsed when it freezes
            f"ALTER TABLE leadership ADD COLUMN expires_at {f}",
            "ALTER TABLE leadership ADD COLUMN holder TEXT",
        ],
        5: [  # orphans bill too: the budgets count them (a store restored from an older backup)
            f"CREATE TABLE orphan_accrual (id TEXT PRIMARY KEY, last_rate {f} NOT NULL, last_accrued_at {f} NOT NULL)",
        ],
    }


def _entry(row: Sequence[Any]) -> JournalEntry:
    return dataclasses.replace(JournalEntry(*row[:13]), shape=_shape(row[13]), outcome_at=row[14])


def _record(row: Sequence[Any]) -> OwnedRecord:
    """One `instances` row; built field by field, since a thousand are read every cycle."""
    return OwnedRecord(
        id=row[0],
        name=row[1],
        created_at=row[2],
        offer_key=row[3],
        status=row[4],
        status_since=row[5],
        idle_since=row[6],
        retiring_for=row[7],
        storage_rate=row[8],
        start_refused_at=row[9],
        last_rate=row[10],
        shape=_shape(row[11]),
        expected_rate=row[12],
        seen_rate=row[13],
        detail_at=row[14],
        absent_since=row[15],
    )


@functools.lru_cache(maxsize=4096)
def _shape(text: str | None) -> OwnedShape | None:
    """Most of a fleet shares a handful of shapes: each is parsed once (OwnedShape is frozen)."""
    return OwnedShape.from_json(text)


@functools.lru_cache(maxsize=64)
def _day_name(day_index: int) -> str:
    return datetime.fromtimestamp(day_index * 86400, tz=UTC).strftime("%Y-%m-%d")


def _day(ts: float) -> str:
    """The UTC date of a time; cached per day, since a cycle charges a thousand instances at once."""
    return _day_name(int(ts // 86400))


def _charge(charges: dict[tuple[str, str], float], instance_id: str, rate: float, since: float, now: float) -> None:
    """`rate` from `since` to `now` added to `charges`, split at UTC midnights."""
    start = since
    while start < now:
        end = min(now, _next_midnight(start))
        key = (_day(start), instance_id)
        charges[key] = charges.get(key, 0.0) + rate * (end - start) / 3600.0
        start = end


def _next_midnight(ts: float) -> float:
    return (int(ts // 86400) + 1) * 86400.0


class SqlStore:
    """Thread-safe through one lock; the daemon runs one cycle at a time anyway."""

    _fencing: tuple[str, int] | None = None  # (election name, token) every journal intent must carry

    begin_sql = "BEGIN"
    greatest = "GREATEST"
    ids_sql = "(?)"
    placeholder = "?"
    where: str = "store"

    def __init__(self, connection: Any) -> None:
        self._db = connection
        self._lock = threading.RLock()

    # -- what a dialect provides ----------------------------------------------------------------

    def _in_transaction(self) -> bool:
        raise NotImplementedError

    def _ids(self, ids: Sequence[str]) -> object:
        raise NotImplementedError

    def _migrations(self) -> dict[int, list[str]]:
        raise NotImplementedError

    def _lock_for_migration(self) -> None:
        """Serialise migrations across processes where the database needs telling (PostgreSQL)."""

    def _x(self, sql: str, params: Sequence[object] = ()) -> Any:
        if self.placeholder != "?":
            sql = sql.replace("?", self.placeholder)
        return self._db.execute(sql, params)

    def _xmany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        if not rows:
            return
        if self.placeholder != "?":
            sql = sql.replace("?", self.placeholder)
        cursor = self._db.cursor()
        try:
            cursor.executemany(sql, rows)
        finally:
            cursor.close()

    def _migrate(self) -> None:
        with self._lock:
            self._x("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            self._x(self.begin_sql)
            try:
                self._lock_for_migration()
                row = self._x("SELECT version FROM schema_version").fetchone()
                version = row[0] if row else 0
                if version > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"{self.where} has schema {version}, newer than this build ({SCHEMA_VERSION}); upgrade"
                    )
                migrations = self._migrations()
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in migrations[target]:
                        self._x(statement)
                    self._x("DELETE FROM schema_version")
                    self._x("INSERT INTO schema_version VALUES (?)", (target,))
                self._x("COMMIT")
            except BaseException:
                self._x("ROLLBACK")
                raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One commit for a cycle's bookkeeping: a thousand instances, one fsync."""
        with self._lock:
            self._x(self.begin_sql)
            try:
                yield
            except BaseException:
                self._x("ROLLBACK")
                raise
            self._x("COMMIT")

    @property
    def schema_version(self) -> int:
        return int(self._x("SELECT version FROM schema_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- ownership ----------------------------------------------------------------------------

    def owned(self) -> dict[str, OwnedRecord]:
        with self._lock:
            rows = self._x(
                "SELECT id, name, created_at, offer_key, status, status_since, idle_since, retiring_for, storage_rate,"
                " start_refused_at, last_rate, shape, expected_rate, seen_rate, detail_at, absent_since FROM instances"
            ).fetchall()
        return {row[0]: _record(row) for row in rows}

    def adopt(
        self,
        instance_id: str,
        name: str,
        created_at: float,
        offer_key: str | None,
        storage_rate: float = 0.0,
        *,
        shape: OwnedShape | None = None,
        expected_rate: float | None = None,
    ) -> None:
        with self._lock:
            self._x(
                "INSERT INTO instances (id, name, created_at, offer_key, storage_rate, last_accrued_at, shape,"
                " expected_rate) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET name = excluded.name,"
                " shape = COALESCE(excluded.shape, instances.shape),"
                " expected_rate = COALESCE(excluded.expected_rate, instances.expected_rate)",
                (
                    instance_id,
                    name,
                    created_at,
                    offer_key,
                    storage_rate,
                    created_at,
                    shape.to_json() if shape is not None else None,
                    expected_rate,
                ),
            )

    def refine(self, instance_id: str, at: float, *, seen_rate: float | None, shape: OwnedShape | None = None) -> None:
        """What a GET by id said: the rate TensorDock bills (when it said one), and when we asked."""
        with self._lock:
            self._x(
                "UPDATE instances SET detail_at = ?, seen_rate = COALESCE(?, seen_rate),"
                " shape = COALESCE(shape, ?) WHERE id = ?",
                (at, seen_rate, shape.to_json() if shape is not None else None, instance_id),
            )

    def mark_absent(self, instance_ids: Sequence[str], since: float | None) -> None:
        """Missing from a listing since `since` (None: listed again); forgetting needs a GET's 404."""
        if not instance_ids:
            return
        with self._lock:
            if since is None:
                self._x(
                    f"UPDATE instances SET absent_since = NULL WHERE id IN {self.ids_sql}",  # noqa: S608
                    (self._ids(list(instance_ids)),),
                )
            else:
                self._x(
                    f"UPDATE instances SET absent_since = COALESCE(absent_since, ?) WHERE id IN {self.ids_sql}",  # noqa: S608
                    (since, self._ids(list(instance_ids))),
                )

    def is_new(self) -> bool:
        """Nothing was ever journaled or owned here: a fresh (or lost and recreated) store."""
        with self._lock:
            journaled = self._x("SELECT 1 FROM journal LIMIT 1").fetchone()
            owned = self._x("SELECT 1 FROM instances LIMIT 1").fetchone()
        return journaled is None and owned is None

    def forget(self, instance_id: str) -> None:
        with self._lock:
            self._x("DELETE FROM instances WHERE id = ?", (instance_id,))

    def mark_start_refused(self, instance_id: str, at: float) -> None:
        with self._lock:
            self._x("UPDATE instances SET start_refused_at = ? WHERE id = ?", (at, instance_id))

    def mark_retiring(self, instance_id: str, replacement_name: str | None) -> None:
        with self._lock:
            self._x("UPDATE instances SET retiring_for = ? WHERE id = ?", (replacement_name, instance_id))

    # -- journal ------------------------------------------------------------------------------

    def journal_intent(
        self,
        cycle_id: str,
        at: float,
        kind: str,
        *,
        name: str | None = None,
        instance_id: str | None = None,
        offer_key: str | None = None,
        gpus: int = 0,
        hourly_price: float = 0.0,
        replaces: str | None = None,
        reason: str = "",
        shape: OwnedShape | None = None,
    ) -> int:
        shape_json = shape.to_json() if shape is not None else None
        reason = mask_secrets(reason)
        values = (cycle_id, at, kind, name, instance_id, offer_key, gpus, hourly_price, replaces, reason, shape_json)
        columns = "cycle_id, at, kind, name, instance_id, offer_key, gpus, hourly_price, replaces, reason, shape"
        with self._lock:
            if self._fencing is None:
                row = self._x(
                    f"INSERT INTO journal ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",  # noqa: S608
                    values,
                ).fetchone()
            else:  # only while our token is still the current one: a deposed leader writes nothing
                election, token = self._fencing
                row = self._x(
                    f"INSERT INTO journal ({columns}, fencing_token) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"  # noqa: S608
                    " WHERE (SELECT token FROM leadership WHERE name = ?) = ? RETURNING id",
                    (*values, token, election, token),
                ).fetchone()
                if row is None:
                    raise FencedError(f"fencing token {token} of {election!r} is no longer current; not acting")
            return int(row[0])

    def journal_outcome(
        self, entry_id: int, outcome: str, at: float, *, instance_id: str | None = None, error: str | None = None
    ) -> None:
        with self._lock:
            self._x(
                "UPDATE journal SET outcome = ?, outcome_at = ?, instance_id = COALESCE(?, instance_id), error = ?"
                " WHERE id = ?",
                (outcome, at, instance_id, None if error is None else mask_secrets(error), entry_id),
            )

    _JOURNAL_COLUMNS = (
        "id, cycle_id, at, kind, name, instance_id, offer_key, gpus, hourly_price, replaces, reason, outcome, error,"
        " shape, outcome_at"
    )

    def unresolved_creates(self) -> list[JournalEntry]:
        """Creates whose result we do not know: crashed before the outcome, or no reply came."""
        with self._lock:
            rows = self._x(
                f"SELECT {self._JOURNAL_COLUMNS} FROM journal WHERE kind = 'create'"  # noqa: S608
                " AND (outcome IS NULL OR outcome = 'unknown') ORDER BY id"
            ).fetchall()
        return [_entry(row) for row in rows]

    def close_interrupted_changes(self, at: float) -> int:
        """Start/stop/delete intents a killed process never finished: the listing now tells their
        result, so they are closed as 'interrupted' rather than left open forever."""
        with self._lock:
            cursor = self._x(
                "UPDATE journal SET outcome = 'interrupted', outcome_at = ?,"
                " error = 'the process ended before the outcome; the listing shows the result'"
                " WHERE kind <> 'create' AND outcome IS NULL",
                (at,),
            )
            return int(cursor.rowcount or 0)

    def latest_change(self, instance_id: str) -> JournalEntry | None:
        """The last start, stop or delete asked of an instance."""
        return self._last_entry("instance_id = ? AND kind <> 'create'", instance_id)

    def _last_entry(self, where: str, value: str) -> JournalEntry | None:
        with self._lock:
            row = self._x(
                f"SELECT {self._JOURNAL_COLUMNS} FROM journal WHERE {where} ORDER BY id DESC LIMIT 1",  # noqa: S608
                (value,),
            ).fetchone()
        return _entry(row) if row else None

    def created_names(self) -> set[str]:
        with self._lock:
            rows = self._x("SELECT DISTINCT name FROM journal WHERE kind = 'create'").fetchall()
        return {row[0] for row in rows if row[0]}

    def create_of(self, name: str) -> JournalEntry | None:
        """The last create journaled under this name: what it was asked to be."""
        return self._last_entry("kind = 'create' AND name = ?", name)

    def journal(self, limit: int = 100) -> list[JournalEntry]:
        with self._lock:
            rows = self._x(
                f"SELECT {self._JOURNAL_COLUMNS} FROM journal ORDER BY id DESC LIMIT ?",  # noqa: S608
                (limit,),
            ).fetchall()
        return [_entry(row) for row in reversed(rows)]

    def creates(self) -> dict[str, JournalEntry]:
        """The successful create of each instance id: what it was bought as (offer, GPUs, rate)."""
        with self._lock:
            rows = self._x(
                f"SELECT {self._JOURNAL_COLUMNS} FROM journal"  # noqa: S608
                " WHERE kind = 'create' AND outcome = 'ok' AND instance_id IS NOT NULL ORDER BY id"
            ).fetchall()
        entries = [JournalEntry(*row) for row in rows]
        return {entry.instance_id: entry for entry in entries if entry.instance_id}

    # -- money --------------------------------------------------------------------------------

    def ledger_since(self, day: str) -> list[tuple[str, str, float]]:
        """(UTC day, instance id, USD) for every day from `day` (YYYY-MM-DD) on."""
        with self._lock:
            rows = self._x("SELECT day, instance_id, usd FROM ledger WHERE day >= ? ORDER BY day", (day,)).fetchall()
        return [(str(d), str(i), float(u)) for d, i, u in rows]

    def accrue(self, instance_id: str, rate_hourly: float, now: float) -> None:
        """Charge the rate in force since the last accrual, split at UTC midnights; `rate_hourly`
        is the rate from now on (left-point integration, one cycle of lag at most)."""
        self.accrue_many({instance_id: rate_hourly}, now)

    @contextlib.contextmanager
    def _joined_transaction(self) -> Iterator[None]:
        """The caller's transaction if one is open (a cycle's bookkeeping), else one of its own."""
        if self._in_transaction():
            yield
            return
        self._x(self.begin_sql)
        try:
            yield
        except Exception:
            self._x("ROLLBACK")
            raise
        self._x("COMMIT")

    def _book(self, charges: dict[tuple[str, str], float]) -> None:
        """USD per (UTC day, instance id) added to the ledger."""
        self._xmany(
            "INSERT INTO ledger (day, instance_id, usd) VALUES (?, ?, ?)"
            " ON CONFLICT(day, instance_id) DO UPDATE SET usd = ledger.usd + excluded.usd",
            [(day, instance_id, usd) for (day, instance_id), usd in charges.items()],
        )

    def accrue_many(self, rates: dict[str, float], now: float, *, clock_time: bool = False) -> None:
        """`accrue` for a whole fleet in one transaction and a handful of statements. `clock_time`:
        `now` is the clock's present (a cycle's charge), not a call dated back, so an accrual dated
        later than it was made by a clock that ran ahead."""
        if not rates:
            return
        with self._lock:
            rows = self._x(
                f"SELECT id, last_rate, last_accrued_at FROM instances WHERE id IN {self.ids_sql}",  # noqa: S608
                (self._ids(list(rates)),),
            ).fetchall()
            charges: dict[tuple[str, str], float] = {}
            updates = []
            same_rate: list[str] = []
            for instance_id, last_rate, since in rows:
                if clock_time and since is not None and since > now + CLOCK_SLACK_S:
                    # Accrued by a clock that ran ahead (set back since, or a replica's that leads):
                    # charged from now on, or nothing would be charged until the clock caught up.
                    updates.append((rates[instance_id], now, instance_id))
                    continue
                if last_rate is not None and since is not None:
                    _charge(charges, instance_id, last_rate, since, now)
                if last_rate == rates[instance_id] and since is not None:
                    same_rate.append(instance_id)
                else:
                    updates.append((rates[instance_id], max(now, since or now), instance_id))
            with self._joined_transaction():
                self._book(charges)
                self._xmany("UPDATE instances SET last_rate = ?, last_accrued_at = ? WHERE id = ?", updates)
                if same_rate:  # the common case: one statement moves every unchanged instance's clock
                    self._x(
                        f"UPDATE instances SET last_accrued_at = {self.greatest}(last_accrued_at, ?)"  # noqa: S608
                        f" WHERE id IN {self.ids_sql}",
                        (now, self._ids(same_rate)),
                    )

    def accrue_orphans(self, rates: dict[str, float], now: float) -> None:
        """Prefix-named instances the store does not own, charged to the ledger like ours (so the
        budgets count what a lost or restored store no longer knows); an id no longer given, gone
        or adopted, is charged up to now and dropped."""
        with self._lock:
            rows = self._x("SELECT id, last_rate, last_accrued_at FROM orphan_accrual").fetchall()
            charges: dict[tuple[str, str], float] = {}
            for instance_id, last_rate, since in rows:
                _charge(charges, instance_id, last_rate, min(since, now), now)
            if not rows and not rates:
                return
            with self._joined_transaction():
                self._book(charges)
                self._x("DELETE FROM orphan_accrual")
                self._xmany(
                    "INSERT INTO orphan_accrual VALUES (?, ?, ?)",
                    [(instance_id, rate, now) for instance_id, rate in rates.items()],
                )

    def take_orphan_accrual(self, instance_id: str) -> float | None:
        """An orphan now adopted: until when it was charged as one (its own billing goes on from
        there, never twice), and no longer charged as an orphan."""
        with self._lock:
            row = self._x("SELECT last_accrued_at FROM orphan_accrual WHERE id = ?", (instance_id,)).fetchone()
            if row is None:
                return None
            self._x("DELETE FROM orphan_accrual WHERE id = ?", (instance_id,))
        return float(row[0])

    def observe_many(
        self, observations: list[tuple[str, str, bool | None]], now: float
    ) -> dict[str, tuple[float | None, float | None]]:
        """`observe` for a whole fleet: (instance id, status, busy) each; returns (idle_since, status_since)."""
        with self._lock:
            current = {
                row[0]: (row[1], row[2], row[3], row[4])
                for row in self._x("SELECT id, status, idle_since, status_since, busy FROM instances")
            }
            updates = []
            result: dict[str, tuple[float | None, float | None]] = {}
            for instance_id, status, busy in observations:
                if instance_id not in current:
                    continue
                old_status, old_idle, status_since, old_busy = current[instance_id]
                idle_since = old_idle
                if busy is True:
                    idle_since = None
                elif busy is False and idle_since is None:
                    idle_since = now
                if old_status != status:
                    status_since = now
                busy_flag = None if busy is None else int(busy)
                if (old_status, old_idle, old_busy) != (status, idle_since, busy_flag):  # write only what changed
                    updates.append((status, idle_since, busy_flag, status_since, instance_id))
                result[instance_id] = (idle_since, status_since)
            self._xmany(
                "UPDATE instances SET status = ?, idle_since = ?, busy = ?, status_since = ? WHERE id = ?", updates
            )
        return result

    def spend(self, now: float) -> Spend:
        today = _day(now)
        month = today[:7]
        with self._lock:
            total, day_usd, month_usd = self._x(
                "SELECT COALESCE(SUM(usd), 0), COALESCE(SUM(CASE WHEN day = ? THEN usd END), 0),"
                " COALESCE(SUM(CASE WHEN substr(day, 1, 7) = ? THEN usd END), 0) FROM ledger",
                (today, month),
            ).fetchone()
        return Spend(today_usd=day_usd, month_usd=month_usd, total_usd=total)

    # -- memory between cycles ------------------------------------------------------------------

    def back_off(self, offer_key: str, until: float, reason: str) -> None:
        with self._lock:
            self._x(
                "INSERT INTO backoffs VALUES (?, ?, ?) ON CONFLICT(offer_key) DO UPDATE"  # noqa: S608
                f" SET until = {self.greatest}(backoffs.until, excluded.until), reason = excluded.reason",
                (offer_key, until, mask_secrets(reason)),
            )

    def backed_off(self, now: float) -> frozenset[str]:
        with self._lock:
            self._x("DELETE FROM backoffs WHERE until <= ?", (now,))
            rows = self._x("SELECT offer_key FROM backoffs").fetchall()
        return frozenset(row[0] for row in rows)

    def record_cycle(self, at: float, desired_gpus: int | None, active_gpus: int) -> None:
        """Keeps changes only: the history is a step function, each row in force until the next."""
        with self._lock:
            last = self._x("SELECT desired, active FROM history ORDER BY at DESC LIMIT 1").fetchone()
            if last is not None and (last[0], last[1]) == (desired_gpus, active_gpus):
                return
            self._x("INSERT INTO history VALUES (?, ?, ?)", (at, desired_gpus, active_gpus))
            cutoff = at - 7 * 86400  # older rows go, but the one in force at the cutoff stays
            self._x(
                "DELETE FROM history WHERE at < (SELECT MAX(at) FROM history WHERE at <= ?)",
                (cutoff,),
            )

    def desired_history(self, since: float) -> list[tuple[float, int]]:
        """The desired GPUs in force at `since` (its row may be older) and every change after it."""
        with self._lock:
            rows = self._x(
                "SELECT at, desired FROM history WHERE desired IS NOT NULL AND at >= COALESCE("
                "(SELECT MAX(at) FROM history WHERE desired IS NOT NULL AND at <= ?), ?) ORDER BY at",
                (since, since),
            ).fetchall()
        return [(float(at), int(desired)) for at, desired in rows]

    def oldest_history(self) -> float | None:
        """How far back the desired-GPU history reaches (stabilization needs the whole delay)."""
        with self._lock:
            row = self._x("SELECT MIN(at) FROM history WHERE desired IS NOT NULL").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def last_scaled(self) -> tuple[float | None, float | None]:
        return self._float("last_scale_up_at"), self._float("last_scale_down_at")

    def mark_scaled(self, *, up_at: float | None = None, down_at: float | None = None) -> None:
        if up_at is not None:
            self._set("last_scale_up_at", repr(up_at))
        if down_at is not None:
            self._set("last_scale_down_at", repr(down_at))

    def fleet_idle_since(self, now: float, idle: bool | None) -> float | None:
        since = self._float("fleet_idle_since")
        if idle is True and since is None:
            self._set("fleet_idle_since", repr(now))
            return now
        if idle is False and since is not None:
            self._set("fleet_idle_since", None)
            return None
        return since

    def stop_seconds(self) -> list[float]:
        raw = self._get("stop_seconds_samples")
        try:
            samples = json.loads(raw) if raw else []
        except ValueError:  # a damaged value costs the estimate, never the cycle
            return []
        if not isinstance(samples, list):
            return []
        return [float(s) for s in samples if isinstance(s, int | float) and not isinstance(s, bool) and s >= 0]

    def keep_stop_seconds(self, samples: list[float]) -> None:
        self._set("stop_seconds_samples", json.dumps([round(s, 3) for s in samples]))

    def fence(self, election: str, token: int | None) -> None:
        self._fencing = None if token is None else (election, token)

    # the key-value table behind the typed memory above: private, so no caller spells a key

    def _float(self, key: str) -> float | None:
        value = self._get(key)
        try:
            return float(value) if value else None
        except ValueError:
            return None

    def _get(self, key: str) -> str | None:
        with self._lock:
            row = self._x("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set(self, key: str, value: str | None) -> None:
        with self._lock:
            self._x("INSERT INTO kv VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))
