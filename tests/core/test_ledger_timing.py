"""When the ledger switches an instance's rate: within a poll of a stop it watched, at the call plus
the longest watched stop for one a restart hid, at the call for a start a crash cut short."""

from __future__ import annotations

from typing import Any

import pytest

from autoscaler.tensordock.fake import Timings

from .conftest import MakeWorld, World

STOP_S = 40.0  # long enough that a 30-s cycle misses the end of every stop
SETTINGS: dict[str, Any] = {
    "guards": {"scale_down_delay_s": 0},
    "policies": [{"name": "queue_target"}, {"name": "cheapest_throughput", "options": {"scale_down": "stop"}}],
}


def _ledger_and_bill(world: World) -> tuple[float, float]:
    """The one instance's ledger and bill, after a cycle brings the ledger to now (at rest: no lag)."""
    world.runtime.engine.run_cycle()
    with world.fake.state.lock:
        world.fake.state.settle()
        billed = world.fake.state.bill().total_usd
    return world.runtime.store.spend(world.clock.now()).total_usd, billed


def _one_running(world: World) -> str:
    world.signal.set(queued_jobs=1)
    for _ in range(4):
        world.cycle()
    (instance,) = world.fake_instances()
    assert instance.phase == "running"
    return str(instance.id)


def _call_stop(world: World) -> None:
    """Drain the queue and cycle until the stop is called; the clock stays at the call."""
    world.signal.set(queued_jobs=0)
    for _ in range(20):
        report = world.cycle(advance=0.0)
        if any(r.action.kind == "stop" and r.outcome == "ok" for r in report.results):
            return
        world.clock.advance(30.0)
    raise AssertionError("no stop was called")


def _crash_and_restart(world: World, down_s: float) -> None:
    world.clock.advance(down_s)
    world.restart(**SETTINGS)


def _stop(world: World, follow_every_s: float | None) -> None:
    """Call a stop, then either follow it or only cycle on."""
    _call_stop(world)
    engine = world.runtime.engine
    assert engine.following, "a stop was called, so its end is followed"
    if follow_every_s is None:
        world.clock.advance(30.0)
        world.cycle(advance=30.0)
        world.cycle(advance=30.0)
        return
    waited = 0.0
    while engine.following:
        world.clock.advance(follow_every_s)
        waited += follow_every_s
        engine.follow_transitions()
        assert waited < 5 * STOP_S, "the follow never saw the stop end"


@pytest.fixture
def slow_stops(make_world: MakeWorld) -> World:
    return make_world(fake_options={"timings": Timings(stop_s=STOP_S)}, **SETTINGS)


def test_following_a_stop_charges_it_within_a_poll_not_a_cycle(slow_stops: World, make_world: MakeWorld) -> None:
    world = slow_stops
    _one_running(world)
    requests_before = dict(world.fake.requests)
    _stop(world, follow_every_s=5.0)
    extra = {k: v - requests_before.get(k, 0) for k, v in world.fake.requests.items()}
    assert {k for k, v in extra.items() if v} <= {"list_instances", "stop_instance", "list_locations", "list_hostnodes"}
    assert extra.get("stop_instance") == 1, "following lists; it never acts"
    rate = world.fake_instances()[0].rate_hourly
    ledger, billed = _ledger_and_bill(world)
    assert billed <= ledger <= billed + rate * 5.0 / 3600, "charged past the poll that saw the stop"

    unfollowed = make_world(fake_options={"timings": Timings(stop_s=STOP_S)}, **SETTINGS)
    _one_running(unfollowed)
    _stop(unfollowed, follow_every_s=None)
    ledger_c, billed_c = _ledger_and_bill(unfollowed)
    assert ledger_c - billed_c > ledger - billed + rate * 10.0 / 3600, "following made no difference"


def test_nothing_settling_means_following_calls_nothing(slow_stops: World) -> None:
    world = slow_stops
    _one_running(world)
    engine = world.runtime.engine
    assert not engine.following
    before = sum(world.fake.requests.values())
    assert engine.follow_transitions() is False
    assert sum(world.fake.requests.values()) == before


def test_a_stop_hidden_by_a_restart_is_dated_by_the_stops_watched_before(slow_stops: World) -> None:
    world = slow_stops
    _one_running(world)
    _stop(world, follow_every_s=2.0)  # watched: how long a stop takes is learned
    samples = world.runtime.store.stop_seconds()
    assert samples and STOP_S <= max(samples) <= STOP_S + 2.0
    _one_running(world)
    _call_stop(world)
    _crash_and_restart(world, 600.0)  # the process dies before any look sees the stop end
    rate = world.fake_instances()[0].rate_hourly
    ledger, billed = _ledger_and_bill(world)
    # without the estimate the whole 600-s gap would be charged at the full rate
    assert billed <= ledger <= billed + rate * 3.0 / 3600


def test_without_watched_stops_a_hidden_stop_is_charged_until_seen(slow_stops: World) -> None:
    world = slow_stops
    _one_running(world)
    _call_stop(world)
    _crash_and_restart(world, 600.0)
    (instance,) = world.fake_instances()
    ledger, billed = _ledger_and_bill(world)
    over_s = (ledger - billed) / (instance.rate_hourly - instance.storage_rate_hourly) * 3600
    assert 600 - STOP_S - 1 <= over_s <= 600 - STOP_S + 1, "an upper bound: the gap charged whole"


def test_a_start_a_crash_cut_short_never_raised_the_bill(slow_stops: World) -> None:
    world = slow_stops
    instance_id = _one_running(world)
    _stop(world, follow_every_s=2.0)
    store, now = world.runtime.store, world.clock.now()
    rate = world.fake_instances()[0].rate_hourly
    # what the actuator writes before a start call: the full rate from the call on, and the intent
    store.accrue(instance_id, rate, now)
    store.journal_intent("c-crashed", now, "start", instance_id=instance_id, gpus=1)
    _crash_and_restart(world, 300.0)  # it died before the call left; the instance stayed stopped
    ledger, billed = _ledger_and_bill(world)
    assert world.fake_instances()[0].phase == "stopped"
    assert billed <= ledger <= billed + rate * 3.0 / 3600, "300 s charged at the full rate for a start that never was"
