"""The store's interface; SQLite implements it now, PostgreSQL (for HA) later, same tests."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from autoscaler.core.money import Spend
from autoscaler.core.shape import OwnedShape


@dataclass(frozen=True)
class OwnedRecord:
    id: str
    name: str
    created_at: float
    offer_key: str | None
    status: str | None
    status_since: float | None
    idle_since: float | None
    retiring_for: str | None
    storage_rate: float
    start_refused_at: float | None = None  # a start failed for capacity: its GPUs are gone
    last_rate: float | None = None  # $/h the ledger charges it now
    shape: OwnedShape | None = None  # what we asked for (rule 12); None: not known
    expected_rate: float | None = None  # $/h of the offer it was created from
    seen_rate: float | None = None  # the last plausible rateHourly a GET by id gave
    detail_at: float | None = None  # when a GET by id last answered for it
    absent_since: float | None = None  # missing from listings since (rule 11: not yet forgotten)


@dataclass(frozen=True)
class JournalEntry:
    id: int
    cycle_id: str
    at: float
    kind: str
    name: str | None
    instance_id: str | None
    offer_key: str | None
    gpus: int
    hourly_price: float
    replaces: str | None
    reason: str
    outcome: str | None  # None: intent written, call not finished (crash); "unknown": no reply
    error: str | None
    shape: OwnedShape | None = None  # a create's: what was asked for
    outcome_at: float | None = None  # when the call's reply (or failure) came


class FencedError(RuntimeError):
    """Another replica has become leader since this one's fencing token was issued: not acting."""


class Ownership(Protocol):
    """Which instances are ours, what each is (rule 12), and what the listings showed of them."""

    def owned(self) -> dict[str, OwnedRecord]: ...
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
    ) -> None: ...
    def refine(
        self, instance_id: str, at: float, *, seen_rate: float | None, shape: OwnedShape | None = None
    ) -> None: ...
    def mark_absent(self, instance_ids: Sequence[str], since: float | None) -> None: ...
    def is_new(self) -> bool: ...
    def forget(self, instance_id: str) -> None: ...
    def observe_many(
        self, observations: list[tuple[str, str, bool | None]], now: float
    ) -> dict[str, tuple[float | None, float | None]]: ...
    def mark_start_refused(self, instance_id: str, at: float) -> None: ...
    def mark_retiring(self, instance_id: str, replacement_name: str | None) -> None: ...


class Journal(Protocol):
    """Intent before each mutating call, outcome after (rule 3); fenced while another replica leads."""

    def fence(self, election: str, token: int | None) -> None:
        """From now on every intent carries this token and is refused (FencedError) once it is stale;
        None: no election (a single replica)."""

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
    ) -> int: ...
    def journal_outcome(
        self, entry_id: int, outcome: str, at: float, *, instance_id: str | None = None, error: str | None = None
    ) -> None: ...
    def unresolved_creates(self) -> list[JournalEntry]: ...
    def created_names(self) -> set[str]: ...
    def create_of(self, name: str) -> JournalEntry | None: ...
    def close_interrupted_changes(self, at: float) -> int: ...
    def latest_change(self, instance_id: str) -> JournalEntry | None: ...
    def journal(self, limit: int = 100) -> list[JournalEntry]: ...
    def creates(self) -> dict[str, JournalEntry]: ...


class SpendLedger(Protocol):
    """Rates integrated over time, per UTC day (written only through `autoscaler.engine.ledger.Ledger`)."""

    def accrue(self, instance_id: str, rate_hourly: float, now: float) -> None: ...
    def accrue_many(self, rates: dict[str, float], now: float, *, clock_time: bool = False) -> None: ...
    def spend(self, now: float) -> Spend: ...
    def ledger_since(self, day: str) -> list[tuple[str, str, float]]: ...
    def accrue_orphans(self, rates: dict[str, float], now: float) -> None:
        """Prefix-named instances the store does not own, charged so the budgets count them."""

    def take_orphan_accrual(self, instance_id: str) -> float | None:
        """An adopted orphan: until when it was charged as one; no longer charged as one."""


class GuardMemoryStore(Protocol):
    """What the guards and the ledger remember between cycles, each a typed value."""

    def back_off(self, offer_key: str, until: float, reason: str) -> None: ...
    def backed_off(self, now: float) -> frozenset[str]: ...
    def record_cycle(self, at: float, desired_gpus: int | None, active_gpus: int) -> None: ...
    def desired_history(self, since: float) -> list[tuple[float, int]]: ...
    def oldest_history(self) -> float | None: ...
    def last_scaled(self) -> tuple[float | None, float | None]:
        """When capacity was last added, and last removed."""

    def mark_scaled(self, *, up_at: float | None = None, down_at: float | None = None) -> None: ...
    def fleet_idle_since(self, now: float, idle: bool | None) -> float | None:
        """Since when queued + running has been zero; `idle` None leaves it as it is (demand unknown)."""

    def stop_seconds(self) -> list[float]:
        """How long the stops watched to their end took, newest last."""

    def keep_stop_seconds(self, samples: list[float]) -> None: ...


class Store(Ownership, Journal, SpendLedger, GuardMemoryStore, Protocol):
    def transaction(self) -> AbstractContextManager[None]: ...
    def close(self) -> None: ...
