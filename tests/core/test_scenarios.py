"""Whole cycles over the fake API on a virtual clock: the product's promises, end to end."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from autoscaler.config import Settings
from autoscaler.core.plan import ActionKind
from autoscaler.core.replacement import Stage
from autoscaler.engine.actuator import ALREADY_GONE, ActionResult, OfferBackoff
from autoscaler.signals.static import FileSignal
from autoscaler.tensordock.fake import Faults, Timings
from autoscaler.tensordock.fake.state import FakeApiError, _ForeignRental

from ..conftest import RTX4090
from .conftest import MakeWorld, World


def test_a_queue_spike_scales_up_with_the_cheapest_models(make_world: MakeWorld) -> None:
    world = make_world()
    world.signal.set(queued_jobs=6)
    report = world.cycle()
    creates = [r for r in report.results if r.action.kind == "create"]
    assert len(creates) == 6 and all(r.outcome == "ok" for r in creates)
    snapshot = report.snapshot
    assert snapshot is not None
    chosen = Counter(r.action.gpu_model for r in creates)
    # every chosen offer is among the cheapest per unit of work that could fit
    unit = {
        o.key: o.hourly_price(snapshot.shape, 1) / snapshot.throughput_of(o.gpu_model)
        for o in snapshot.offers
        if o.fits(snapshot.shape, 1)
    }
    worst_chosen = max(unit[r.offer_key] for r in creates if r.offer_key)
    cheaper_unused = [k for k, u in unit.items() if u < worst_chosen and k not in {r.offer_key for r in creates}]
    assert not cheaper_unused, f"skipped cheaper offers {cheaper_unused} for {chosen}"
    assert len(world.fake_instances()) == 6
    # the next cycle sees them starting and does not create more
    again = world.cycle()
    assert not [r for r in again.results if r.action.kind == "create"]


def test_a_lull_stops_after_the_delay_and_deletes_after_retention(make_world: MakeWorld) -> None:
    world = make_world(
        policies=[
            {"name": "queue_target"},
            {"name": "cheapest_throughput", "options": {"scale_down": "stop"}},
            {"name": "idle", "options": {"stopped_retention_s": 3600}},
        ]
    )
    world.signal.set(queued_jobs=2)
    for _ in range(3):
        world.cycle()
    assert [i.phase for i in world.fake_instances()] == ["running", "running"]
    world.signal.set(queued_jobs=0)
    stopped_at = None
    for step in range(40):
        report = world.cycle()
        if any(r.action.kind == "stop" for r in report.results):
            stopped_at = step * 30
            break
    assert stopped_at is not None and stopped_at >= 300  # scale_down_delay_s
    for _ in range(4):
        world.cycle()
    assert {i.phase for i in world.fake_instances()} == {"stopped"}
    world.clock.advance(3600)
    for _ in range(2):
        world.cycle()
    assert world.fake_instances() == []


def test_a_capacity_failure_falls_back_to_the_next_offer(make_world: MakeWorld) -> None:
    world = make_world()
    world.signal.set(queued_jobs=1)
    first = world.runtime.engine.run_cycle()
    best = next(r for r in first.results if r.action.kind == "create")
    # start over: same offers, but the best one's location is stale now
    world2 = make_world()
    world2.fake.state.faults = Faults(stale_locations=[best.action.offer.location_id])  # type: ignore[union-attr]
    world2.signal.set(queued_jobs=1)
    report = world2.cycle()
    (result,) = [r for r in report.results if r.action.kind == "create"]
    assert result.outcome == "ok"
    assert result.offer_key != best.offer_key
    assert best.offer_key in world2.runtime.store.backed_off(world2.clock.now())


def test_a_listing_with_no_room_for_waiting_work_is_read_again_soon_not_after_offer_refresh_s(
    make_world: MakeWorld,
) -> None:
    """Another renter held every GPU of the one model allowed when the offers were listed, and left
    right after: with a listing kept for an hour, the job would wait the hour; it is read again once
    `offer_refresh_short_s` old (10 s), at most that often while nothing fits."""
    world = make_world(
        offer_refresh_s=3600,
        policies=[{"name": "queue_target"}, {"name": "cheapest_throughput", "options": {"allowed_models": [RTX4090]}}],
    )
    state = world.fake.state
    with state.lock:
        for _, host in state.hosts():
            if free := state.free(host).gpus.get(RTX4090, 0):
                state._foreign.append(_ForeignRental(host.id, RTX4090, free, world.clock.now() + 3600))
    world.signal.set(queued_jobs=1)
    first = world.cycle(advance=5)
    assert first.plan is not None and first.plan.offers_short and not first.results
    state._foreign.clear()  # the renter leaves
    creates: list[int] = []
    for n in range(1, 7):  # every 5 s: the listing is read again once 10 s old, and the job's GPU bought
        report = world.cycle(advance=5)
        creates += [n * 5 for r in report.results if r.action.kind is ActionKind.CREATE and r.outcome == "ok"]
    assert creates == [10]
    assert world.fake.requests["list_hostnodes"] == 2  # the first listing and one more, not one per cycle


def _left_on_one_host(make_world: MakeWorld, *, gpus: int, scale_down: str) -> tuple[World, str]:
    """A world whose one allowed model has `gpus` GPUs free on one host, another renter holding the
    rest for a day, and a listing kept for an hour."""
    world = make_world(
        offer_refresh_s=3600,
        policies=[
            {"name": "queue_target"},
            {"name": "cheapest_throughput", "options": {"allowed_models": [RTX4090], "scale_down": scale_down}},
        ],
    )
    state = world.fake.state
    with state.lock:
        (host, *_) = [host.id for _, host in state.hosts() if state.free(host).gpus.get(RTX4090, 0) >= gpus]
        for _, listed in state.hosts():
            if free := state.free(listed).gpus.get(RTX4090, 0):
                left = gpus if listed.id == host else 0
                state._foreign.append(_ForeignRental(listed.id, RTX4090, free - left, world.clock.now() + 86400))
    return world, host


def test_the_listing_kept_between_readings_shows_what_the_fleets_own_creates_took_and_deletes_gave_back(
    make_world: MakeWorld,
) -> None:
    """One GPU of the one allowed model is free when the offers are listed (another renter holds
    the rest), and the listing is kept for an hour. The create that takes it is not tried again on
    the same host; the delete that frees it makes it the next job's place at once: with the listing
    as read, the first would fail at TensorDock and the second wait for a fresh reading."""
    world, host = _left_on_one_host(make_world, gpus=1, scale_down="delete")
    world.signal.set(queued_jobs=1)
    (first,) = [r for r in world.cycle().results if r.action.kind is ActionKind.CREATE]
    assert first.outcome == "ok" and host in (first.offer_key or "")
    world.signal.set(queued_jobs=1, running_jobs=1)  # a second job: the listing, as corrected, has no room
    report = world.cycle()
    assert not [r for r in report.results if r.action.kind is ActionKind.CREATE]
    assert report.plan is not None and report.plan.offers_short
    world.signal.set(queued_jobs=0, running_jobs=0, busy={})  # both done; nothing waits
    for _ in range(20):
        if not world.fake_instances():
            break
        world.cycle()
    assert world.fake_instances() == []
    listings = world.fake.requests["list_hostnodes"]
    world.signal.set(queued_jobs=1)
    (again,) = [r for r in world.cycle().results if r.action.kind is ActionKind.CREATE]
    assert again.outcome == "ok" and host in (again.offer_key or "")
    assert world.fake.requests["list_hostnodes"] == listings  # bought from the kept listing, as corrected
    assert world.fake.requests["create_instance"] == 2  # no create tried where the fleet itself was


def test_a_delete_answered_already_gone_gives_nothing_back_to_the_kept_listing(
    make_world: MakeWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone deleted the instance just before the fleet did, and another renter took its GPU: the
    delete is answered "not found". The kept listing must not show that GPU free again; a create
    tried there would be refused and back the host's offer off."""
    world, host = _left_on_one_host(make_world, gpus=1, scale_down="delete")
    state = world.fake.state
    world.signal.set(queued_jobs=1)
    (first,) = [r for r in world.cycle().results if r.action.kind is ActionKind.CREATE]
    assert first.outcome == "ok" and host in (first.offer_key or "")
    delete = state.delete

    def gone_before_us(instance_id: str) -> None:
        delete(instance_id)
        state._foreign.append(_ForeignRental(host, RTX4090, 1, world.clock.now() + 86400))
        raise FakeApiError("not_found", f"Instance {instance_id} not found")

    monkeypatch.setattr(state, "delete", gone_before_us)
    world.signal.set(queued_jobs=0, running_jobs=0, busy={})
    for _ in range(20):
        results = world.cycle().results
        if [r for r in results if r.action.kind is ActionKind.DELETE]:
            break
    (gone,) = [r for r in results if r.action.kind is ActionKind.DELETE]
    assert gone.outcome == "ok" and gone.error == ALREADY_GONE
    world.signal.set(queued_jobs=1)
    report = world.cycle()
    assert not [r for r in report.results if r.action.kind is ActionKind.CREATE]
    assert world.fake.requests["create_instance"] == 1
    assert host not in " ".join(world.runtime.store.backed_off(world.clock.now()))


@pytest.mark.parametrize("deletes_fail", [False, True])
def test_stopped_narrow_instances_on_the_only_host_make_room_for_a_wide_job(
    make_world: MakeWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deletes_fail: bool
) -> None:
    """Four one-GPU instances, stopped for a fast restart, hold the only four GPUs of the allowed model
    that are left; a four-GPU job then waits. Kept, they would hold it off for as long as their
    storage is worth keeping (hours); deleted in the same cycle, they make its place at once. If a
    delete fails, the create is not tried on the host still full (its refusal would back it off)."""
    world, host = _left_on_one_host(make_world, gpus=4, scale_down="stop")
    signal_file = tmp_path / "queue.json"
    world.runtime.engine.signal = FileSignal(signal_file)

    def cycle(queued: dict[int, int]) -> list[ActionResult]:
        names = [i.name for i in world.fake_instances()]
        signal_file.write_text(
            json.dumps(
                {
                    "queued": sum(queued.values()),
                    "running": 0,
                    "busy": dict.fromkeys(names, False),
                    "observed_at": world.clock.now(),
                    "queued_by_width": {str(w): n for w, n in queued.items()},
                }
            )
        )
        return world.cycle().results

    assert [r.action.gpus for r in cycle({1: 4}) if r.outcome == "ok"] == [1, 1, 1, 1]
    for _ in range(30):  # the jobs ran; nothing waits: the four are stopped, their GPUs kept
        cycle({})
    assert [i.phase for i in world.fake_instances()] == ["stopped"] * 4
    if deletes_fail:

        def refuse(instance_id: str) -> None:
            raise FakeApiError("domain", f"Instance {instance_id} is locked by an operation in progress")

        monkeypatch.setattr(world.fake.state, "delete", refuse)
        creates = world.fake.requests["create_instance"]
        results = cycle({4: 1})
        assert [(r.action.kind, r.outcome) for r in results][-1] == (ActionKind.CREATE, "skipped")
        assert world.fake.requests["create_instance"] == creates
        assert host not in " ".join(world.runtime.store.backed_off(world.clock.now()))
        return
    _, stopped_at = world.runtime.store.last_scaled()
    results = cycle({4: 1})
    assert [(r.action.kind, r.outcome) for r in results] == [(ActionKind.DELETE, "ok")] * 4 + [
        (ActionKind.CREATE, "ok")
    ]
    assert world.runtime.store.last_scaled()[1] == stopped_at  # no serving capacity went: no scale-down
    assert all("making room on host " + host in r.action.reason for r in results[:4])
    (wide,) = world.fake_instances()
    assert (wide.gpu_count, wide.host.id) == (4, host)


@pytest.mark.parametrize("backoff_s", [120.0, 900.0])
def test_a_refused_offer_is_skipped_for_offer_backoff_s(make_world: MakeWorld, backoff_s: float) -> None:
    world = make_world(offer_backoff_s=backoff_s)
    world.fake.state.faults = Faults(stale_create_rate=1.0)  # every listed offer refuses its create
    world.signal.set(queued_jobs=1)
    refused_at = world.clock.now()  # the cycle's calls; world.cycle() then moves on by an interval
    (result,) = [r for r in world.cycle().results if r.action.kind == "create"]
    refused = world.runtime.store.backed_off(refused_at)
    assert result.outcome == "failed" and refused
    assert world.runtime.store.backed_off(refused_at + backoff_s - 5) == refused
    assert not world.runtime.store.backed_off(refused_at + backoff_s + 5)


def test_an_offer_that_keeps_refusing_is_skipped_longer_each_time() -> None:
    backoff = OfferBackoff(base_s=60, max_s=200)
    assert [backoff.refused("a") for _ in range(4)] == [60, 120, 200, 200]
    assert backoff.refused("b") == 60  # each offer counts its own refusals
    backoff.accepted("a")  # a create it took: its next refusal is a one-off again
    assert backoff.refused("a") == 60


def test_a_back_off_ceiling_below_its_start_is_refused() -> None:
    with pytest.raises(ValueError, match="offer_backoff_max_s \\(30\\) is shorter than offer_backoff_s \\(60\\)"):
        Settings(offer_backoff_s=60, offer_backoff_max_s=30)


def test_a_budget_cap_holds(make_world: MakeWorld) -> None:
    world = make_world(guards={"max_hourly_spend": 1.5})
    world.signal.set(queued_jobs=20)
    for _ in range(4):
        report = world.cycle()
        assert report.snapshot is not None
        assert report.snapshot.hourly_cost <= 1.5 + 1e-9
    running_rate = sum(i.rate_hourly for i in world.fake_instances())
    assert 0 < running_rate <= 1.5


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_restart_in_the_middle_of_a_scale_up_creates_no_duplicate(
    make_world: MakeWorld, backend: str, request: pytest.FixtureRequest
) -> None:
    store_url = request.getfixturevalue("pg_store_url") if backend == "postgres" else None
    world = make_world(store_url=store_url)
    world.signal.set(queued_jobs=3)
    world.fake.state.faults = Faults(lose_next_replies=3)  # the creates happen, their replies never arrive
    report = world.cycle()
    assert [r.outcome for r in report.results] == ["unknown"] * 3
    assert len(world.fake_instances()) == 3
    world.restart()  # the daemon dies and comes back
    for _ in range(3):
        world.cycle()
    assert len(world.fake_instances()) == 3
    assert len(world.runtime.store.owned()) == 3


def test_demand_unknown_holds_and_never_scales_down(make_world: MakeWorld) -> None:
    world = make_world()
    world.signal.set(queued_jobs=2)
    for _ in range(3):
        world.cycle()
    world.signal.failing = "connection refused"
    for _ in range(30):
        report = world.cycle()
        assert not report.results
    assert [i.phase for i in world.fake_instances()] == ["running", "running"]


def test_stuck_provisioning_is_deleted_and_its_offer_backed_off(make_world: MakeWorld) -> None:
    world = make_world(fake_options={"timings": Timings(create_s=10_000)}, provision_timeout_s=120)
    world.signal.set(queued_jobs=1)
    (created,) = world.cycle().results
    deleted = []
    for _ in range(6):
        deleted += [r for r in world.cycle().results if r.action.kind == "delete"]
    assert [r.instance_id for r in deleted][:1] == [created.instance_id]
    assert deleted[0].action.policy == "safety"
    assert created.instance_id not in {i.id for i in world.fake_instances()}
    assert created.offer_key in world.runtime.store.backed_off(world.clock.now())


def test_stale_demand_counts_as_unknown_and_holds(make_world: MakeWorld, tmp_path: Path) -> None:
    world = make_world(max_signal_age_s=60)
    world.signal.set(queued_jobs=2)
    for _ in range(3):
        world.cycle()
    signal_file = tmp_path / "queue.json"
    signal_file.write_text(json.dumps({"queued": 0, "running": 0, "observed_at": world.clock.now() - 3600}))
    world.runtime.engine.signal = FileSignal(signal_file)
    for _ in range(20):
        report = world.cycle()
        assert report.snapshot is not None and report.snapshot.demand is None
        assert "stale" in (report.snapshot.demand_error or "")
        assert not report.results
    assert len(world.fake_instances()) == 2
    assert (
        world.runtime.engine.metrics.registry.get_sample_value("tensordock_autoscaler_signal_up", {"source": "file"})
        == 0.0
    )


def test_a_broken_plugin_holds_the_cycle_and_is_counted(make_world: MakeWorld) -> None:
    world = make_world()
    world.signal.set(queued_jobs=2)

    class Broken:
        name = "broken"

        def decide(self, snapshot: object, plan: object) -> object:
            raise RuntimeError("bug in a third-party plugin")

    world.runtime.engine.chain.append(Broken())
    report = world.cycle()
    assert report.hold and "broken" in report.hold and report.results == []
    assert world.fake_instances() == []
    assert (
        world.runtime.engine.metrics.registry.get_sample_value(
            "tensordock_autoscaler_policy_errors_total", {"policy": "broken"}
        )
        == 1.0
    )


def test_fleet_allowed_models_bind_every_policy(make_world: MakeWorld) -> None:
    world = make_world(fleet={"allowed_gpu_models": ["l40s-pcie-48gb"]})
    world.signal.set(queued_jobs=3)
    report = world.cycle()
    assert report.snapshot is not None and {o.gpu_model for o in report.snapshot.offers} == {"l40s-pcie-48gb"}
    assert {i.gpu_model for i in world.fake_instances()} == {"l40s-pcie-48gb"}


def test_an_instance_whose_replacement_is_gone_is_no_longer_retiring(make_world: MakeWorld) -> None:
    # consolidate marks the old instance retiring for its replacement; if the replacement is then
    # stopped or deleted, the mark must go, or the old instance would count as leaving forever
    world = make_world()
    world.signal.set(queued_jobs=1)
    world.cycle()
    (old_id,) = world.runtime.store.owned()
    world.runtime.store.mark_retiring(old_id, "tdas-replacement-that-was-deleted")
    report = world.cycle()
    assert report.snapshot is not None
    (old,) = report.snapshot.instances
    assert old.replacement is None
    assert world.runtime.store.owned()[old_id].retiring_for is None


@pytest.mark.parametrize("lost_reply", [False, True])
def test_a_consolidation_lives_its_whole_life_through_the_engine(make_world: MakeWorld, lost_reply: bool) -> None:
    # cheapest_throughput is told a dear location is half price; consolidate sees the true prices.
    # A lost reply to the replacement's create: the next cycle finds it by name and links it.
    dear = "e55607c8-694c-510c-8571-4d62c868be7e"
    world = make_world(
        fake_options={"timings": Timings(create_s=75)},
        policies=[
            {"name": "queue_target"},
            {"name": "cheapest_throughput", "options": {"preferred_locations": [dear], "preferred_discount": 0.5}},
            {"name": "consolidate", "options": {"steady_window_s": 120}},
        ],
    )
    world.signal.set(queued_jobs=1)
    stages: list[Stage] = []
    creates, stops = [], []
    for n in range(40):
        if n == 3 and lost_reply:  # the first instance runs; the next mutation is the replacement's create
            world.fake.state.faults = Faults(lose_next_replies=1)
        report = world.cycle()
        assert report.snapshot is not None
        stages += [i.replacement.stage for i in report.snapshot.instances if i.replacement]
        creates += [r for r in report.results if r.action.replacement is not None]
        stops += [r for r in report.results if r.action.kind is ActionKind.STOP]
        if stages and not stops:  # the old one's job holds it a while
            world.signal.set(queued_jobs=1, busy={i.name: i.replacement is not None for i in report.snapshot.instances})
        if len(stages) == 8:
            world.signal.set(queued_jobs=1)
    (create,) = creates  # one replacement in flight: the retired one holds back the next
    assert create.outcome == ("unknown" if lost_reply else "ok")
    (stop,) = stops
    assert create.action.replacement is not None
    old_id = create.action.replacement.old_id
    assert stop.action.instance_id == old_id and stop.action.reason == f"consolidate: {create.name} has taken over"
    assert list(dict.fromkeys(stages)) == [Stage.BOOTING, Stage.DRAINING, Stage.STOPPING, Stage.RETIRED]
    assert world.runtime.store.owned()[old_id].retiring_for == create.name  # linked until either goes
    assert {i.name: i.phase for i in world.fake_instances()}[create.name] == "running"


def test_the_budget_gauges_come_from_the_guards_cap_and_the_budget_policys_limits(make_world: MakeWorld) -> None:
    from prometheus_client import generate_latest

    budget = {"name": "budget", "options": {"daily_budget_usd": 30.0}}
    world = make_world(guards={"max_hourly_spend": 1.5}, policies=[{"name": "queue_target"}, budget])
    world.cycle()
    text = generate_latest(world.runtime.metrics.registry).decode()
    assert 'tensordock_autoscaler_budget_limit_usd{budget="hourly"} 1.5' in text
    assert 'tensordock_autoscaler_budget_limit_usd{budget="daily"} 30.0' in text
    assert 'budget="monthly"' not in text
