"""The actuator's journal, dry run, and recovery from a crash between intent and outcome."""

from __future__ import annotations

from ..conftest import create_request
from .conftest import MakeWorld


def test_intent_is_journaled_before_the_call_and_outcome_after(make_world: MakeWorld) -> None:
    world = make_world()
    world.signal.set(queued_jobs=1)
    report = world.cycle()
    (entry,) = [e for e in world.runtime.store.journal() if e.kind == "create"]
    (result,) = report.results
    assert entry.outcome == "ok" and entry.instance_id == result.instance_id and entry.name == result.name
    assert entry.reason == result.action.reason


def test_dry_run_plans_and_never_mutates(make_world: MakeWorld) -> None:
    world = make_world(dry_run=True)
    world.signal.set(queued_jobs=4)
    for _ in range(3):
        report = world.cycle()
        assert report.results and {r.outcome for r in report.results} == {"dry_run"}
    assert world.fake_instances() == []
    assert world.runtime.store.journal() == []
    assert world.fake.requests["create_instance"] == 0


def test_crash_after_the_call_before_the_outcome_is_resolved_by_name(make_world: MakeWorld) -> None:
    world = make_world()
    store = world.runtime.store
    chicago = next(loc.id for loc in world.fake.state.catalog.locations if loc.city == "Chicago")
    # what a process killed mid-create leaves behind: the intent, the instance, no outcome
    store.journal_intent(
        "c0", world.clock.now(), "create", name="tdas-crashed", offer_key="k", gpus=1, hourly_price=0.5
    )
    world.runtime.client.create_instance(create_request(chicago, name="tdas-crashed"))
    world.restart()
    world.signal.set(queued_jobs=1)
    report = world.cycle()
    assert [r.action.kind for r in report.results if r.action.kind == "create"] == []  # already have one
    assert [r.name for r in world.runtime.store.owned().values()] == ["tdas-crashed"]
    assert world.runtime.store.unresolved_creates() == []


def test_crash_before_the_call_counts_as_pending_then_lost(make_world: MakeWorld) -> None:
    world = make_world(guards={"max_gpus": 1})
    store = world.runtime.store
    store.journal_intent("c0", world.clock.now(), "create", name="tdas-never", offer_key="k", gpus=1, hourly_price=0.5)
    world.signal.set(queued_jobs=1)
    report = world.cycle()
    assert report.snapshot is not None and report.snapshot.active_gpus == 1  # counted against bounds
    assert not [r for r in report.results if r.action.kind == "create"]
    world.clock.advance(700)  # unresolved_create_grace_s
    report = world.cycle()
    assert [e.outcome for e in store.journal() if e.name == "tdas-never"] == ["lost"]
    assert [r.outcome for r in report.results if r.action.kind == "create"] == ["ok"]  # now the slot is free
    world.cycle()
    assert len(world.fake_instances()) == 1


def test_orphans_are_reported_and_only_reaped_when_configured(make_world: MakeWorld) -> None:
    world = make_world()
    chicago = next(loc.id for loc in world.fake.state.catalog.locations if loc.city == "Chicago")
    for name in ("tdas-stray", "someone-elses"):
        world.runtime.client.create_instance(create_request(chicago, name=name))
    report = world.cycle()
    assert [o.name for o in report.orphans] == ["tdas-stray"] and report.results == []
    world.restart(reap_orphans=True)
    world.clock.advance(60)
    report = world.cycle()
    assert [(r.action.kind, r.outcome) for r in report.results] == [("delete", "ok")]
    assert [i.name for i in world.fake_instances()] == ["someone-elses"]


def test_a_stop_interrupted_by_a_crash_is_closed_by_the_next_cycle(make_world: MakeWorld) -> None:
    world = make_world()
    world.signal.set(queued_jobs=1)
    (created,) = world.cycle().results
    world.runtime.store.journal_intent("c0", world.clock.now(), "stop", instance_id=created.instance_id)
    world.restart()
    world.cycle()
    (entry,) = [e for e in world.runtime.store.journal() if e.kind == "stop"]
    assert entry.outcome == "interrupted"
