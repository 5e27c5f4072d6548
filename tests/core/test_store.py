"""The store, on SQLite and on PostgreSQL, by the same tests: migrations, the ledger across days
and restarts, the journal, back-offs, history, idleness."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from autoscaler.store import SqliteStore, Store, open_store
from autoscaler.store.sql import SCHEMA_VERSION

DAY = 86400.0


@pytest.fixture(params=["sqlite", "postgres"])
def open_again(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens the same store each call, as a restarted daemon would."""
    if request.param == "sqlite":
        path = tmp_path / "s.db"
        yield lambda: SqliteStore(path)
        return
    url = request.getfixturevalue("pg_store_url")
    yield lambda: open_store(url)


@pytest.fixture
def store(open_again: Callable[[], Store]) -> Iterator[Store]:
    opened = open_again()
    yield opened
    opened.close()


T0 = 1_767_225_600.0  # 2026-01-01T00:00Z


def test_schema_is_created_versioned_and_reopened(open_again: Callable[[], Store]) -> None:
    store = open_again()
    assert store.schema_version == SCHEMA_VERSION  # type: ignore[attr-defined]
    store.adopt("i1", "tdas-1", T0, "k")
    store.close()
    again = open_again()
    assert again.schema_version == SCHEMA_VERSION and list(again.owned()) == ["i1"]  # type: ignore[attr-defined]
    again.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer than this build"):
        SqliteStore(path)


def test_ledger_integrates_rates_splits_days_and_survives_restarts(open_again: Callable[[], Store]) -> None:
    store = open_again()
    store.adopt("i1", "tdas-1", T0 + 22 * 3600, "k")
    store.accrue("i1", 1.0, T0 + 22 * 3600)  # $1/h from 22:00
    store.accrue("i1", 0.1, T0 + 23 * 3600)  # one hour at $1, then stopped: $0.1/h
    store.close()
    store = open_again()  # restart
    store.accrue("i1", 0.1, T0 + 25 * 3600)  # 2 h at $0.1, one of them tomorrow
    assert store.spend(T0 + 23.5 * 3600).today_usd == pytest.approx(1.1)
    tomorrow = store.spend(T0 + 25 * 3600)
    assert tomorrow.today_usd == pytest.approx(0.1)
    assert tomorrow.month_usd == pytest.approx(1.2) and tomorrow.total_usd == pytest.approx(1.2)
    assert store.spend(T0 + 40 * DAY).month_usd == 0.0
    store.close()


def test_journal_keeps_unresolved_creates_until_resolved(store: Store) -> None:
    entry = store.journal_intent("c1", T0, "create", name="tdas-a", offer_key="k", gpus=1, hourly_price=0.4)
    store.journal_intent("c1", T0, "stop", instance_id="x")
    assert [e.name for e in store.unresolved_creates()] == ["tdas-a"]
    store.journal_outcome(entry, "unknown", T0 + 1, error="timeout")
    assert [e.outcome for e in store.unresolved_creates()] == ["unknown"]
    store.journal_outcome(entry, "ok", T0 + 2, instance_id="id-a")
    assert store.unresolved_creates() == []
    assert store.created_names() == {"tdas-a"}
    assert [e.instance_id for e in store.journal() if e.kind == "create"] == ["id-a"]


def test_backoffs_expire_and_history_is_kept(store: Store) -> None:
    store.back_off("offer-1", T0 + 60, "No available nodes found")
    assert store.backed_off(T0) == {"offer-1"}
    assert store.backed_off(T0 + 61) == frozenset()
    for n in range(5):
        store.record_cycle(T0 + 30 * n, n, n)
    assert store.desired_history(T0 + 60) == [(T0 + 60, 2), (T0 + 90, 3), (T0 + 120, 4)]


def test_history_keeps_changes_and_the_value_in_force(store: Store) -> None:
    for n in range(10):  # ten cycles wanting 3 GPUs are one change
        store.record_cycle(T0 + 30 * n, 3, 3)
    store.record_cycle(T0 + 300, 1, 3)
    # 3 was in force at T0 + 200 although its row is from T0
    assert store.desired_history(T0 + 200) == [(T0, 3), (T0 + 300, 1)]
    assert store.oldest_history() == T0
    store.record_cycle(T0 + 8 * 86400, 2, 2)  # a week on: old rows go, the one in force stays
    assert store.desired_history(T0) == [(T0 + 300, 1), (T0 + 8 * 86400, 2)]


def test_observe_tracks_status_changes_and_idleness(store: Store) -> None:
    store.adopt("i1", "tdas-1", T0, None)
    store.observe_many([("i1", "running", False)], T0 + 10)
    store.observe_many([("i1", "running", False)], T0 + 40)
    record = store.owned()["i1"]
    assert (record.status_since, record.idle_since) == (T0 + 10, T0 + 10)
    store.observe_many([("i1", "running", True)], T0 + 70)
    assert store.owned()["i1"].idle_since is None
    store.observe_many([("i1", "stopped", None)], T0 + 100)
    assert store.owned()["i1"].status_since == T0 + 100


def test_a_transaction_commits_together_or_not_at_all(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.adopt("i1", "tdas-1", T0, None)
        raise RuntimeError("crash mid-cycle")
    assert store.owned() == {}
    with store.transaction():
        store.adopt("i1", "tdas-1", T0, None)
        store.accrue_many({"i1": 1.0}, T0)
    assert list(store.owned()) == ["i1"]


def test_unsupported_store_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported store url"):
        open_store("mysql://x")


def test_the_ledger_charges_on_from_now_after_a_clock_that_ran_ahead(store: Store) -> None:
    """Accrued by a clock 2 h fast that was set back: before, nothing was charged until the clock
    had caught up with the last accrual."""
    store.adopt("i1", "tdas-1", T0 + 7200, "k")
    store.accrue("i1", 1.0, T0 + 7200)
    store.accrue_many({"i1": 1.0}, T0, clock_time=True)  # a cycle after the clock was set back by 2 h
    store.accrue_many({"i1": 1.0}, T0 + 3600, clock_time=True)
    assert store.spend(T0 + 3600).total_usd == pytest.approx(1.0)  # charged from the present on
    store.accrue_many({"i1": 1.0}, T0 + 3601, clock_time=True)  # a replica's clock a second behind is no step
    store.accrue_many({"i1": 1.0}, T0 + 3599, clock_time=True)
    store.accrue("i1", 0.1, T0 + 1800)  # a change dated back (a stop settled earlier) never moves the clock back
    store.accrue_many({"i1": 0.1}, T0 + 7200, clock_time=True)
    assert store.spend(T0 + 7200).total_usd == pytest.approx(1.0 + 1 / 3600 + 0.1 * 3599 / 3600)


def test_orphans_are_charged_until_they_go_or_are_adopted(store: Store) -> None:
    store.accrue_orphans({"o1": 1.0, "o2": 2.0}, T0)
    store.accrue_orphans({"o1": 1.0, "o2": 2.0}, T0 + 1800)
    store.accrue_orphans({"o1": 1.0}, T0 + 3600)  # o2 gone (or adopted): charged up to now, then not
    store.accrue_orphans({}, T0 + 7200)
    store.accrue_orphans({}, T0 + 9000)
    assert store.spend(T0 + 9000).total_usd == pytest.approx(2 * 1.0 + 1 * 2.0)
    store.accrue_orphans({"o3": 1.0}, T0 + 9000)
    store.accrue_orphans({"o3": 1.0}, T0 + 10800)
    assert store.take_orphan_accrual("o3") == T0 + 10800  # adopted: charged as an orphan until then
    assert store.take_orphan_accrual("o3") is None
    store.accrue_orphans({}, T0 + 14400)  # and no more as one
    assert store.spend(T0 + 14400).total_usd == pytest.approx(2 * 1.0 + 1 * 2.0 + 0.5)
    days = {(instance_id, round(usd, 6)) for _, instance_id, usd in store.ledger_since("1970-01-01")}
    assert days == {("o1", 2.0), ("o2", 2.0), ("o3", 0.5)}
