"""Every safety rule on its own, then all of them against random plans (hypothesis)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.core.guards import GuardConfig, GuardMemory, apply_guards
from autoscaler.core.plan import Action, ActionKind, Plan, delete_action
from autoscaler.core.snapshot import FleetInstance, PendingCreate, Snapshot
from autoscaler.tensordock import Instance, InstanceStatus

from .builders import NOW, instance, offer, snapshot

R4090 = "geforcertx4090-pcie-24gb"
LONG_HISTORY = GuardMemory(history_since=NOW - 86400)


def create(price: float = 0.5, gpus: int = 1) -> Action:
    return Action(
        ActionKind.CREATE, "t", "test", offer=offer(R4090, 0.4), gpus=gpus, gpu_model=R4090, hourly_delta=price
    )


def stop(fleet_instance: FleetInstance, policy: str = "test", *, spend_limit: bool = False) -> Action:
    return Action(
        ActionKind.STOP,
        "t",
        policy,
        instance_id=fleet_instance.id,
        gpus=fleet_instance.gpus,
        hourly_delta=-fleet_instance.rate_hourly,
        spend_limit=spend_limit,
    )


def guard(
    snap: Snapshot, *actions: Action, desired: int | None = 0, memory: GuardMemory = LONG_HISTORY, **config: Any
) -> tuple[list[Action], list[str]]:
    config.setdefault("scale_down_delay_s", 0)
    config.setdefault("scale_down_cooldown_s", 0)
    guarded = apply_guards(snap, Plan(desired_gpus=desired, actions=actions), GuardConfig(**config), memory)
    return list(guarded.actions), [d.rule for d in guarded.dropped]


def test_ownership_unowned_instances_are_never_touched() -> None:
    foreign = Instance(id="theirs", name="someone-else", status=InstanceStatus.RUNNING)
    snap = Snapshot(
        now=NOW, demand=snapshot().demand, instances=(), unowned=(foreign,), offers=(), spend=snapshot().spend
    )
    kept, rules = guard(snap, Action(ActionKind.DELETE, "t", "x", instance_id="theirs"))
    assert kept == [] and rules == ["ownership"]


def test_bounds_count_instances_still_being_created_or_started() -> None:
    starting = instance("a", InstanceStatus.STARTING, gpus=2)
    pending = PendingCreate("tdas-lost", gpus=1, hourly_price=0.5, since=NOW - 10)
    snap = snapshot(starting, pending_creates=(pending,))
    kept, rules = guard(snap, create(), create(), desired=10, max_gpus=4)
    assert len(kept) == 1 and rules == ["max_gpus"]
    kept, rules = guard(snap, create(), desired=10, max_instances=2)
    assert kept == [] and rules == ["max_instances"]
    kept, rules = guard(snap, create(price=2.0), desired=10, max_hourly_spend=2.0)
    assert kept == [] and rules == ["max_hourly_spend"]


def test_hold_on_unknown_demand_no_scale_down_no_scale_up_beyond_min() -> None:
    running = instance("a")
    snap = snapshot(running, queued=None)
    kept, rules = guard(snap, stop(running), create(), create(), desired=None, min_gpus=2)
    assert [a.kind for a in kept] == [ActionKind.CREATE] and sorted(rules) == ["hold", "hold"]


def test_a_busy_instance_is_never_stopped() -> None:
    busy = instance("a", busy=True)
    kept, rules = guard(snapshot(busy), stop(busy, policy="budget", spend_limit=True))
    assert kept == [] and rules == ["busy"]


def test_a_spending_limit_is_not_held_back_by_the_stabilization_window_whatever_the_policy() -> None:
    """The exemption is a field of the action, not the name of one policy."""
    fleet = [instance("a"), instance("b")]
    short_memory = GuardMemory(history_since=NOW - 60)  # no history: the window holds everything back
    for policy in ("budget", "a-third-party-cap"):
        kept, rules = guard(snapshot(*fleet), stop(fleet[0], policy), desired=2, memory=short_memory)
        assert kept == [] and rules == ["stabilization"]
        kept, rules = guard(snapshot(*fleet), stop(fleet[0], policy, spend_limit=True), desired=2, memory=short_memory)
        assert [a.kind for a in kept] == [ActionKind.STOP] and rules == []


def test_an_instance_in_error_is_deleted_only_with_demand_known_and_never_while_busy() -> None:
    """Rule 4 holds for it (a listing said `error` while the signal was down: it was deleted), yet no
    stabilization window keeps a broken instance that demand still counts on."""
    broken = instance("a", InstanceStatus.ERROR)
    delete = Action(ActionKind.DELETE, "t", "idle", instance_id=broken.id, gpus=1, hourly_delta=-0.5)
    kept, rules = guard(snapshot(broken, queued=None), delete, desired=None)
    assert kept == [] and rules == ["hold"]
    kept, rules = guard(snapshot(broken, queued=3), delete, desired=1, scale_down_delay_s=600)
    assert kept == [delete] and rules == []
    busy = instance("b", InstanceStatus.ERROR, busy=True)
    kept, rules = guard(snapshot(busy, queued=3), Action(ActionKind.DELETE, "t", "idle", instance_id=busy.id))
    assert kept == [] and rules == ["busy"]


def test_transitional_instances_are_waited_out() -> None:
    stopping = instance("a", InstanceStatus.STOPPING)
    kept, rules = guard(snapshot(stopping), Action(ActionKind.DELETE, "t", "x", instance_id=stopping.id))
    assert kept == [] and rules == ["transitional"]


def test_stabilization_keeps_capacity_demand_wanted_recently() -> None:
    fleet = [instance(f"i{n}") for n in range(3)]
    recent = ((NOW - 500, 3), (NOW - 400, 3), (NOW - 350, 1))  # three wanted until 350 s ago
    snap = snapshot(*fleet, desired_history=recent)
    kept, rules = guard(snap, stop(fleet[0]), desired=1, scale_down_delay_s=600)
    assert kept == [] and rules == ["stabilization"]
    kept, _ = guard(snap, stop(fleet[0]), stop(fleet[1]), desired=1, scale_down_delay_s=300)
    assert len(kept) == 2
    short_memory = GuardMemory(history_since=NOW - 60)  # just started: not enough history to scale down
    kept, rules = guard(snapshot(*fleet), stop(fleet[0]), desired=1, scale_down_delay_s=300, memory=short_memory)
    assert rules == ["stabilization"]


def test_separate_cooldowns_for_up_and_down() -> None:
    running = instance("a")
    memory = GuardMemory(last_scale_up_at=NOW - 10, last_scale_down_at=NOW - 10, history_since=NOW - 86400)
    kept, rules = guard(
        snapshot(running),
        create(),
        stop(running),
        desired=1,
        memory=memory,
        scale_up_cooldown_s=5,
        scale_down_cooldown_s=60,
    )
    assert [a.kind for a in kept] == [ActionKind.CREATE] and rules == ["cooldown"]


def test_max_actions_per_cycle() -> None:
    kept, rules = guard(snapshot(), *[create() for _ in range(5)], desired=5, max_actions_per_cycle=2)
    assert len(kept) == 2 and rules == ["max_actions_per_cycle"] * 3


# -- properties ------------------------------------------------------------------------------------

STATUSES = st.sampled_from(list(InstanceStatus))


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Snapshot, Plan, GuardConfig]:
    fleet = tuple(
        instance(
            f"i{n}",
            draw(STATUSES),
            gpus=draw(st.integers(1, 4)),
            rate=draw(st.floats(0.1, 3.0)),
            busy=draw(st.sampled_from([True, False, None])),
        )
        for n in range(draw(st.integers(0, 6)))
    )
    foreign = tuple(Instance(id=f"f{n}", name=f"other-{n}", status=InstanceStatus.RUNNING) for n in range(2))
    base = snapshot(*fleet, queued=draw(st.one_of(st.none(), st.integers(0, 20))))
    snap = Snapshot(
        now=NOW, demand=base.demand, instances=fleet, unowned=foreign, offers=(offer(R4090, 0.4),), spend=base.spend
    )
    ids = [i.id for i in fleet] + [f.id for f in foreign]
    actions = []
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(list(ActionKind)))
        if kind is ActionKind.CREATE or not ids:
            actions.append(create(draw(st.floats(0.1, 4.0)), draw(st.integers(1, 4))))
        else:
            actions.append(
                Action(
                    kind,
                    "random",
                    draw(st.sampled_from(["test", "budget"])),
                    instance_id=draw(st.sampled_from(ids)),
                    gpus=draw(st.integers(0, 4)),
                    hourly_delta=draw(st.floats(-3, 3)),
                    spend_limit=draw(st.booleans()),
                )
            )
    config = GuardConfig(
        max_gpus=draw(st.integers(0, 12)),
        max_instances=draw(st.integers(0, 8)),
        max_hourly_spend=draw(st.one_of(st.none(), st.floats(0, 10))),
        max_actions_per_cycle=draw(st.integers(0, 6)),
        scale_down_delay_s=0,
    )
    return snap, Plan(desired_gpus=draw(st.one_of(st.none(), st.integers(0, 12))), actions=tuple(actions)), config


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_no_plan_gets_past_the_guards_unsafely(world: tuple[Snapshot, Plan, GuardConfig]) -> None:
    snap, plan, config = world
    kept = apply_guards(snap, plan, config, LONG_HISTORY).actions
    owned = {i.id: i for i in snap.instances}
    assert len(kept) <= config.max_actions_per_cycle
    gpus, count, cost = snap.active_gpus, snap.active_instances, snap.hourly_cost
    for action in kept:
        if action.kind is not ActionKind.CREATE:
            assert action.instance_id in owned, "touched an unowned instance"
            target = owned[action.instance_id or ""]
            assert not target.status.is_transitional
            if action.kind in (ActionKind.STOP, ActionKind.DELETE):
                assert target.busy is not True, "stopped a busy instance"
                if snap.demand is None:
                    assert (
                        target.status not in (InstanceStatus.RUNNING, InstanceStatus.STARTING)
                        or action.kind is not ActionKind.STOP
                    )
        if action.kind.adds_capacity:
            gpus += action.gpus
            count += 1
            cost += action.hourly_delta
            assert gpus <= config.max_gpus and count <= config.max_instances
            if config.max_hourly_spend is not None:
                assert cost <= config.max_hourly_spend + 1e-9
            if snap.demand is None:
                assert gpus <= config.min_gpus


def test_deletes_that_make_room_go_only_with_the_create_they_make_room_for() -> None:
    stopped = [instance(f"s{n}", InstanceStatus.STOPPED) for n in range(2)]
    deletes = [replace(delete_action(i, "room", "test"), room="h#1") for i in stopped]
    wide = replace(create(gpus=4), room="h#1")
    kept, rules = guard(snapshot(*stopped), *deletes, wide, desired=4, max_gpus=2)
    assert kept == [] and rules == ["max_gpus", "room", "room"]  # the stopped instances stay
    kept, rules = guard(snapshot(*stopped), *deletes, wide, desired=4, max_gpus=4)
    assert kept == [*deletes, wide] and rules == []
    kept, rules = guard(snapshot(*stopped), *deletes, wide, desired=4, max_actions_per_cycle=2)
    assert kept == [] and rules == ["max_actions_per_cycle", "room", "room"]


def test_a_create_goes_only_if_every_delete_making_its_room_goes() -> None:
    """A stopped instance a stale heartbeat calls busy may not be deleted; the create in its room
    is then not tried on a host still full (it would be refused and back the host off)."""
    free, stale = instance("s0", InstanceStatus.STOPPED), instance("s1", InstanceStatus.STOPPED, busy=True)
    deletes = [replace(delete_action(i, "room", "test"), room="h#1") for i in (free, stale)]
    wide = replace(create(gpus=4), room="h#1")
    elsewhere = create(gpus=1)
    kept, rules = guard(snapshot(free, stale), *deletes, wide, elsewhere, desired=5)
    assert kept == [elsewhere] and rules == ["busy", "room", "room"]
