"""Chaos in virtual time: each fault for a stretch of a simulated day with a varying queue; the
safety invariants are checked after every cycle and at the end (DESIGN rules 1-5 and 10)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from autoscaler.engine.cycle import CycleReport
from autoscaler.tensordock.fake import Faults, Timings

from ..conftest import create_request
from .conftest import MakeWorld, World

HOUR = 3600.0
INTERVAL = 60.0
MAX_GPUS, MAX_INSTANCES, MAX_SPEND = 8, 8, 4.0
FAULT_FROM, FAULT_TO = 2 * HOUR, 4 * HOUR


DAYS = 2


def queued_at(t: float) -> int:
    """Each day: a busy morning, a quiet spell, a smaller afternoon, then nothing."""
    t %= 24 * HOUR
    if 1 * HOUR <= t < 6 * HOUR:
        return 6
    if 8 * HOUR <= t < 12 * HOUR:
        return 2
    return 0


def stale_everywhere_but_one(world: World) -> Faults:
    locations = [loc.id for loc in world.fake.state.catalog.locations]
    return Faults(stale_locations=locations[1:])


SCENARIOS: dict[str, Callable[[World], Any]] = {
    "429-storm": lambda w: Faults(rate_limit_burst_rate=0.3, rate_limit_burst_length=8),
    "5xx-bursts": lambda w: Faults(server_error_rate=0.3),
    "timeouts": lambda w: Faults(timeout_rate=0.2),
    "lost-create-replies": lambda w: Faults(lost_reply_rate=0.5),
    "stale-availability": stale_everywhere_but_one,
    "gpus-reclaimed": lambda w: Faults(reclaim_per_hour=3.0, reclaim_other_tiers_factor=1.0),
    "stuck-starting": lambda w: "stuck",
    "demand-source-down": lambda w: "signal",
    "store-unavailable": lambda w: "store",
}


class FlakyStore:
    """The state store, failing every call while `down` (a locked or unreachable database)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise sqlite3.OperationalError("database is locked")
            return attribute(*args, **kwargs)

        return call


def check_invariants(world: World, report: CycleReport, unowned_id: str, busy: set[str]) -> None:
    instances = world.fake_instances()
    names = [i.name for i in instances]
    assert len(names) == len(set(names)), "duplicate instance"
    foreign = next((i for i in instances if i.id == unowned_id), None)
    assert foreign is not None and foreign.phase == "running", "the unowned instance was touched"
    ours = [i for i in instances if i.id != unowned_id]
    up = [i for i in ours if i.phase != "stopped"]
    assert len(up) <= MAX_INSTANCES and sum(i.gpu_count for i in up) <= MAX_GPUS, "bounds exceeded"
    spend = sum(world.fake.state.billing_rate(i) for i in ours)
    assert spend <= MAX_SPEND + 1e-6, f"max_hourly_spend exceeded: ${spend:.2f}/h"
    for result in report.results:
        if result.action.kind in ("stop", "delete") and result.outcome == "ok":
            instance = next((i for i in instances if i.id == result.instance_id), None)
            assert instance is None or instance.name not in busy, "stopped a busy instance"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_invariants_hold_through_the_fault_and_the_fleet_recovers(make_world: MakeWorld, scenario: str) -> None:
    world = make_world(
        guards={
            "max_gpus": MAX_GPUS,
            "max_instances": MAX_INSTANCES,
            "max_hourly_spend": MAX_SPEND,
            "scale_down_delay_s": 600,
        },
        provision_timeout_s=900,
        max_signal_age_s=300,
        tensordock={"max_attempts": 3, "backoff_initial_s": 1.0},
    )
    chicago = next(loc.id for loc in world.fake.state.catalog.locations if loc.city == "Chicago")
    unowned_id = world.runtime.client.create_instance(create_request(chicago, name="someone-else")).id
    world.fake.state.faults = Faults()
    start = world.clock.now()
    fault = SCENARIOS[scenario](world)
    normal_timings = world.fake.state.timings
    flaky = FlakyStore(world.runtime.store)
    if fault == "store":
        world.runtime.engine.store = world.runtime.engine.actuator.store = flaky  # type: ignore[assignment]
    recovered: list[tuple[int, int]] = []  # (desired, running GPUs) well after the fault
    last_day = (DAYS - 1) * 24 * HOUR
    while (t := world.clock.now() - start) < last_day + 14 * HOUR:
        in_fault = FAULT_FROM <= t < FAULT_TO
        if isinstance(fault, Faults):
            world.fake.state.faults = fault if in_fault else Faults()
        elif fault == "stuck":
            world.fake.state.timings = Timings(create_s=10 * HOUR) if in_fault else normal_timings
        elif fault == "signal":
            world.signal.failing = "connection refused" if in_fault else None
        elif fault == "store":
            flaky.down = in_fault
        queued = queued_at(t)
        fleet = sorted(i.name for i in world.fake_instances() if i.phase == "running" and i.id != unowned_id)
        busy = set(fleet[: min(queued, len(fleet))])  # the first workers are running jobs
        world.signal.set(queued_jobs=queued, busy={name: name in busy for name in fleet})
        before = len(world.fake.state.instances())
        try:
            report = world.cycle(advance=INTERVAL)
        except sqlite3.OperationalError:  # the daemon logs and counts it; the next cycle runs
            assert fault == "store" and len(world.fake.state.instances()) <= before, "acted without a journal"
            world.clock.advance(INTERVAL)
            continue
        check_invariants(world, report, unowned_id, busy)
        if last_day + 11 * HOUR <= t < last_day + 12 * HOUR and report.plan and report.plan.desired_gpus is not None:
            running = sum(i.gpu_count for i in world.fake_instances() if i.phase == "running" and i.id != unowned_id)
            recovered.append((report.plan.desired_gpus, running))
    # recovered: on the last day, the afternoon's demand is served by exactly what it needs
    assert recovered and recovered[-1] == (2, 2), recovered[-3:]
    ours = [i for i in world.fake_instances() if i.id != unowned_id]
    # nothing unaccounted: every instance the fake bills under our prefix is in the store
    owned = world.runtime.store.owned()
    assert {i.id for i in ours} <= set(owned), "an instance the store does not know"
    # the ledger agrees with the fake's bill within 1 %
    bill = world.fake.state.bill()
    ours_billed = bill.total_usd - bill.per_instance_usd.get(unowned_id, 0.0)
    ledger = world.runtime.store.spend(world.clock.now()).total_usd
    assert ours_billed > 1.0
    assert abs(ledger - ours_billed) <= 0.01 * ours_billed, f"ledger ${ledger:.3f} vs bill ${ours_billed:.3f}"
