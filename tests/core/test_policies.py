"""Each built-in policy on hand-built snapshots."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from autoscaler.core.money import Budgets
from autoscaler.core.plan import Action, ActionKind, Plan
from autoscaler.core.planner import PlanningError, run_chain
from autoscaler.core.policy import PolicyConfigError, PolicySpec, SpendLimits, available_policies, build_chain
from autoscaler.core.replacement import Replacement
from autoscaler.core.snapshot import FleetInstance, Offer, Snapshot, Spend
from autoscaler.signals import Demand
from autoscaler.tensordock import InstanceStatus
from policies.budget import Budget, BudgetOptions
from policies.cheapest_throughput import CheapestThroughput, CheapestThroughputOptions
from policies.consolidate import Consolidate, ConsolidateOptions
from policies.idle import Idle, IdleOptions
from policies.queue_target import QueueTarget, QueueTargetOptions
from policies.schedule import Schedule, ScheduleOptions

from .builders import NOW, instance, offer, snapshot

R4090, R3090, H100 = "geforcertx4090-pcie-24gb", "geforcertx3090-pcie-24gb", "h100-sxm5-80gb"


def queue_target(**options: Any) -> QueueTarget:
    return QueueTarget(QueueTargetOptions(**options))


def cheapest(**options: Any) -> CheapestThroughput:
    return CheapestThroughput(CheapestThroughputOptions(**options))


# -- queue_target ----------------------------------------------------------------------------


def test_queue_target_has_no_cap_of_its_own_unless_told() -> None:
    # The fleet's one bound is the guards' max_gpus; a default of 64 here once capped below it.
    assert queue_target(max_step_up=1000).decide(snapshot(queued=100), Plan()).desired_gpus == 100
    assert queue_target(max_step_up=1000, max_gpus=10).decide(snapshot(queued=100), Plan()).desired_gpus == 10


def test_queue_target_sizes_to_queued_plus_running() -> None:
    plan = queue_target(jobs_per_gpu=2).decide(snapshot(queued=5, running=2), Plan())
    assert plan.desired_gpus == 4  # ceil(7 / 2)


def test_queue_target_needs_the_activation_threshold_to_leave_zero() -> None:
    policy = queue_target(activation_jobs=3)
    assert policy.decide(snapshot(queued=2), Plan()).desired_gpus == 0
    assert policy.decide(snapshot(queued=3), Plan()).desired_gpus == 3


def test_queue_target_steps_and_bounds() -> None:
    up = queue_target(max_step_up=2, max_gpus=10).decide(snapshot(queued=50), Plan())
    assert up.desired_gpus == 2
    fleet = [instance(f"i{n}") for n in range(6)]
    down = queue_target(max_step_down=1, min_gpus=1).decide(snapshot(*fleet, queued=0), Plan())
    assert down.desired_gpus == 5
    capped = queue_target(max_gpus=3, max_step_up=100).decide(snapshot(queued=50), Plan())
    assert capped.desired_gpus == 3


def test_queue_target_holds_when_demand_is_unknown() -> None:
    plan = queue_target(min_gpus=1).decide(snapshot(queued=None), Plan())
    assert plan.desired_gpus is None and plan.floor_gpus == 1


def test_queue_target_rejects_min_above_max() -> None:
    with pytest.raises(ValueError, match="min_gpus"):
        QueueTargetOptions(min_gpus=5, max_gpus=2)


# -- cheapest_throughput -----------------------------------------------------------------------


def test_cheapest_ranks_by_price_per_unit_of_work_not_by_price() -> None:
    # the H100 costs more per hour but does 2.2x the work of an A100; the 4090 0.75x
    offers = (offer(H100, 1.20), offer(R4090, 0.60), offer(R3090, 0.40))
    snap = snapshot(offers=offers)
    plan = cheapest().decide(snap, Plan(desired_gpus=1))
    (create,) = plan.actions
    unit = {o.gpu_model: o.hourly_price(snap.shape, 1) / snap.throughput_of(o.gpu_model) for o in offers}
    assert create.gpu_model == min(unit, key=unit.__getitem__) == H100
    assert create.alternatives and create.alternatives[0].gpu_model != H100


def test_cheapest_honours_models_vram_tier_and_locations() -> None:
    offers = (
        offer(H100, 0.1, location="eu"),
        offer(R3090, 0.1, tier=0),
        offer(R4090, 0.5, location="us"),
        offer("rtxa6000-pcie-48gb", 0.5, location="us"),
    )
    snap = snapshot(offers=offers)
    assert cheapest(excluded_models=[H100], min_tier=1).decide(snap, Plan(desired_gpus=1)).actions[0].gpu_model == R4090
    assert (
        cheapest(min_vram_gb=48, allowed_locations=["us"]).decide(snap, Plan(desired_gpus=1)).actions[0].gpu_model
        == "rtxa6000-pcie-48gb"
    )
    assert cheapest(allowed_models=["l4-pcie-24gb"]).decide(snap, Plan(desired_gpus=1)).actions == ()


def test_cheapest_restarts_a_stopped_instance_within_the_margin() -> None:
    stopped = instance("s1", InstanceStatus.STOPPED, model=R4090, rate=0.55)
    snap = snapshot(stopped, offers=(offer(R4090, 0.40),))
    best_rate = snap.offers[0].hourly_price(snap.shape, 1)
    close = cheapest(restart_margin=(0.55 / best_rate) - 1 + 0.01).decide(snap, Plan(desired_gpus=1))
    assert [a.kind for a in close.actions] == [ActionKind.START]
    far = cheapest(restart_margin=0.0).decide(snap, Plan(desired_gpus=1))
    assert [a.kind for a in far.actions] == [ActionKind.CREATE]


def test_cheapest_skips_backed_off_offers_and_refused_starts() -> None:
    offers = (offer(R3090, 0.2, location="x"), offer(R4090, 0.5, location="y"))
    refused = instance("s1", InstanceStatus.STOPPED, start_refused=True)
    snap = snapshot(refused, offers=offers, backed_off=frozenset({offers[0].key}))
    (action,) = cheapest().decide(snap, Plan(desired_gpus=1)).actions
    assert action.kind is ActionKind.CREATE and action.offer == offers[1]


def test_cheapest_never_plans_more_than_a_host_holds() -> None:
    small = replace(offer(R3090, 0.1, available=8), host_vcpus_free=16, host_ram_gb_free=1000)
    other = offer(R4090, 0.6, location="b")
    plan = cheapest().decide(snapshot(offers=(small, other)), Plan(desired_gpus=4))
    assert [a.offer.key for a in plan.actions if a.offer].count(small.key) == 2  # 2 x 8 vCPUs fill 16


def test_cheapest_sizes_instances_for_the_widest_job() -> None:
    snap = replace(snapshot(offers=(offer(R4090, 0.4),)), demand=replace(snapshot().demand, max_job_gpus=3))  # type: ignore[arg-type]
    (create,) = cheapest(gpus_per_instance=[1, 2, 4]).decide(snap, Plan(desired_gpus=4)).actions
    assert create.gpus == 4


def wide_job_waiting(*fleet: FleetInstance, offers: tuple[Offer, ...] = ()) -> Snapshot:
    demand = Demand(1, 0, observed_at=NOW, queued_gpus=8, running_gpus=0, max_job_gpus=8, source="test")
    return replace(snapshot(*fleet, offers=offers), demand=demand)


def test_cheapest_adds_a_wide_instance_when_the_gpus_add_up_but_none_is_wide_enough() -> None:
    # eight idle one-GPU instances make 8 GPUs, but an eight-GPU job needs them on one instance
    narrow = tuple(instance(f"n{k}", busy=False) for k in range(8))
    snap = wide_job_waiting(*narrow, offers=(offer(R4090, 0.4, available=8),))
    (create,) = cheapest().decide(snap, Plan(desired_gpus=8)).actions
    assert (create.kind, create.gpus) == (ActionKind.CREATE, 8)
    # an idle (or still booting) eight-GPU instance is a place for it: nothing is added, and the
    # surplus narrow ones may go
    for wide in (instance("w", gpus=8, busy=False), instance("b", InstanceStatus.STARTING, gpus=8)):
        plan = cheapest(scale_down="delete").decide(wide_job_waiting(*narrow, wide), Plan(desired_gpus=8))
        assert plan.actions and all(a.kind is ActionKind.DELETE and a.gpus == 1 for a in plan.actions)
    # a fixed fleet opts out
    assert cheapest(place_widest_job=False).decide(snap, Plan(desired_gpus=8)).actions == ()


def test_cheapest_keeps_wide_instances_while_a_wide_job_waits() -> None:
    fleet = (instance("wide", gpus=8, busy=False), instance("narrow", busy=False))
    plan = cheapest().decide(wide_job_waiting(*fleet), Plan(desired_gpus=0))
    assert [a.instance_id for a in plan.actions] == ["id-narrow"]


def test_cheapest_prices_a_restart_by_the_gpus_the_need_can_use() -> None:
    # a stopped 8-GPU instance at $3.2/h is $0.4/h per GPU, as cheap as the offer, but for one GPU
    # of need it would run seven idle: the one-GPU offer wins
    wide = instance("wide", InstanceStatus.STOPPED, model=R4090, gpus=8, rate=3.2)
    snap = snapshot(wide, offers=(offer(R4090, 0.35),))
    (one,) = cheapest().decide(snap, Plan(desired_gpus=1)).actions
    assert one.kind is ActionKind.CREATE
    plan = cheapest().decide(snap, Plan(desired_gpus=8))
    assert [a.kind for a in plan.actions] == [ActionKind.START]


@pytest.mark.parametrize(
    ("how", "listed", "kind"),
    [
        ("auto", (), ActionKind.STOP),  # nothing listed gives it back: keep the GPUs, stopped
        ("auto", ((R4090, 0.3, 1),), ActionKind.DELETE),  # the same GPUs listed for less: let it go
        ("auto", ((R4090, 0.4, 1),), ActionKind.DELETE),  # $0.514/h all in: within restart_margin (10 %) of $0.50
        ("auto", ((R4090, 0.55, 1),), ActionKind.STOP),  # $0.664/h all in: dearer per unit of work
        ("auto", ((R4090, 0.3, 0),), ActionKind.STOP),  # listed, without a free GPU
        ("delete", (), ActionKind.DELETE),
        ("stop", ((R4090, 0.3, 1),), ActionKind.STOP),
    ],
)
def test_cheapest_deletes_surplus_a_listed_offer_gives_back_and_stops_the_rest(
    how: str, listed: tuple[tuple[str, float, int], ...], kind: ActionKind
) -> None:
    offers = tuple(offer(model, price, available=n) for model, price, n in listed)
    idle = snapshot(instance("idle", busy=False, rate=0.5), offers=offers)
    (action,) = cheapest(scale_down=how).decide(idle, Plan(desired_gpus=0)).actions
    assert action.kind is kind


def test_cheapest_scales_down_idle_then_dearest_and_never_busy() -> None:
    fleet = (
        instance("busy-dear", rate=2.0, busy=True),
        instance("dear", rate=1.5, busy=None),
        instance("idle-cheap", rate=0.3, busy=False),
        instance("cheap", rate=0.3, busy=None),
    )
    plan = cheapest(scale_down="delete").decide(snapshot(*fleet), Plan(desired_gpus=2))
    assert [a.instance_id for a in plan.actions] == ["id-idle-cheap", "id-dear"]
    assert all(a.kind is ActionKind.DELETE for a in plan.actions)


def test_cheapest_only_grows_to_the_floor_when_demand_is_unknown() -> None:
    snap = snapshot(instance("a"), instance("b"), queued=None, offers=(offer(R4090, 0.4),))
    assert cheapest().decide(snap, Plan(desired_gpus=None, floor_gpus=1)).actions == ()
    grown = cheapest().decide(snapshot(queued=None, offers=(offer(R4090, 0.4),)), Plan(floor_gpus=1))
    assert len(grown.actions) == 1


# -- idle ------------------------------------------------------------------------------------


def test_idle_stops_long_idle_instances_when_nothing_is_queued() -> None:
    policy = Idle(IdleOptions(idle_timeout_s=600))
    fleet = (instance("long", busy=False, idle_since=NOW - 700), instance("short", busy=False, idle_since=NOW - 60))
    plan = policy.decide(snapshot(*fleet, queued=0), Plan(desired_gpus=0))
    assert [a.instance_id for a in plan.actions] == ["id-long"]
    assert policy.decide(snapshot(*fleet, queued=1), Plan(desired_gpus=0)).actions == ()


def test_idle_deletes_after_retention_and_replaces_reclaimed_or_errored() -> None:
    policy = Idle(IdleOptions(stopped_retention_s=3600))
    fleet = (
        instance("old", InstanceStatus.STOPPED, status_since=NOW - 3700),
        instance("young", InstanceStatus.STOPPED, status_since=NOW - 100),
        instance("taken", InstanceStatus.STOPPED_DISASSOCIATED, status_since=NOW - 10),
        instance("refused", InstanceStatus.STOPPED, status_since=NOW - 10, start_refused=True),
        instance("broken", InstanceStatus.ERROR, status_since=NOW - 400),
    )
    plan = policy.decide(snapshot(*fleet), Plan(desired_gpus=0))
    assert sorted(a.instance_id or "" for a in plan.actions) == ["id-broken", "id-old", "id-refused", "id-taken"]
    assert {a.kind for a in plan.actions} == {ActionKind.DELETE}


def test_idle_believes_an_error_only_once_it_has_lasted_with_demand_known_and_no_job_on_it() -> None:
    """One listing that says `error` is no proof: a serving instance was deleted on it at once."""
    policy = Idle(IdleOptions(errored_for_s=300))

    def deletes(fleet_instance: FleetInstance, **kwargs: Any) -> bool:
        return bool(policy.decide(snapshot(fleet_instance, **kwargs), Plan(desired_gpus=0)).actions)

    assert not deletes(instance("blip", InstanceStatus.ERROR, status_since=NOW - 30))
    assert not deletes(instance("blip", InstanceStatus.ERROR, status_since=None))
    assert not deletes(instance("serving", InstanceStatus.ERROR, status_since=NOW - 400, busy=True))
    assert not deletes(instance("blind", InstanceStatus.ERROR, status_since=NOW - 400), queued=None)
    assert deletes(instance("broken", InstanceStatus.ERROR, status_since=NOW - 400))
    assert deletes(instance("broken", InstanceStatus.ERROR, status_since=NOW - 400, busy=False))


def test_idle_keeps_a_stopped_instance_only_while_its_storage_is_worth_the_faster_restart() -> None:
    # storage $0.01/h; a restart saves 70 s of boot: worth 70 s x $0.40/h = 2,800 s of storage for a
    # one-GPU instance, 70 s x $3.70/h = 25,900 s for an eight-GPU one
    policy = Idle(IdleOptions(restart_saving_s=70))
    fleet = (
        instance("small-old", InstanceStatus.STOPPED, rate=0.4, status_since=NOW - 2900),
        instance("small-young", InstanceStatus.STOPPED, rate=0.4, status_since=NOW - 2700),
        instance("wide", InstanceStatus.STOPPED, rate=3.7, gpus=8, status_since=NOW - 20000),
    )
    plan = policy.decide(snapshot(*fleet), Plan(desired_gpus=0))
    assert [a.instance_id for a in plan.actions] == ["id-small-old"]
    fixed = Idle(IdleOptions(restart_saving_s=0, stopped_retention_s=24 * 3600))
    assert fixed.decide(snapshot(*fleet), Plan(desired_gpus=0)).actions == ()


# -- budget ----------------------------------------------------------------------------------


def _create(gpu_model: str, price: float, gpus: int = 1) -> Action:
    return Action(
        ActionKind.CREATE,
        "test",
        "test",
        offer=offer(gpu_model, price),
        gpus=gpus,
        gpu_model=gpu_model,
        hourly_delta=price,
    )


def test_budget_trims_the_dearest_per_unit_of_work_first() -> None:
    plan = Plan(desired_gpus=3, actions=(_create(R3090, 0.5), _create(H100, 2.5), _create(R4090, 0.6)))
    trimmed = Budget(BudgetOptions()).decide(snapshot(max_hourly_spend=1.2), plan)
    # per unit of work: 3090 0.5/0.45=1.11, H100 2.5/2.2=1.14, 4090 0.6/0.75=0.8: the H100 goes, $1.10/h remain
    assert [a.gpu_model for a in trimmed.actions] == [R3090, R4090]
    tighter = Budget(BudgetOptions()).decide(snapshot(max_hourly_spend=1.0), plan)
    assert [a.gpu_model for a in tighter.actions] == [R4090]


def test_budget_stops_non_busy_instances_when_already_over() -> None:
    fleet = (instance("a", rate=1.0, busy=True), instance("b", rate=1.0), instance("c", rate=0.5))
    plan = Budget(BudgetOptions()).decide(snapshot(*fleet, max_hourly_spend=1.6), Plan(desired_gpus=3))
    assert [a.instance_id for a in plan.actions] == ["id-b"]


def test_budget_lets_the_fleet_run_what_the_rest_of_the_budget_pays_for_an_hour() -> None:
    # noon, 12 h left: $9.5 of $10 spent leaves $0.5, one more $0.3/h instance for the next hour
    snap = snapshot(spend=Spend(today_usd=9.5, month_usd=9.5, total_usd=9.5))
    plan = Plan(desired_gpus=2, actions=(_create(R3090, 0.3), _create(R3090, 0.3)))
    trimmed = Budget(BudgetOptions(daily_budget_usd=10.0)).decide(snap, plan)
    assert len(trimmed.actions) == 1
    assert "$0.50/h affordable" in trimmed.notes[-1] or any("affordable" in n for n in trimmed.notes)
    spent = Budget(BudgetOptions(monthly_budget_usd=5.0)).decide(snap, plan)
    assert spent.actions == ()
    # $6 spent leaves $4: a whole day's horizon spreads it to $0.33/h, one hour's lets both run
    roomy = snapshot(spend=Spend(today_usd=6.0, month_usd=6.0, total_usd=6.0))
    assert len(Budget(BudgetOptions(daily_budget_usd=10.0)).decide(roomy, plan).actions) == 2
    paced = Budget(BudgetOptions(daily_budget_usd=10.0, horizon_s=24 * 3600.0)).decide(roomy, plan)
    assert len(paced.actions) == 1


# -- schedule --------------------------------------------------------------------------------


def test_schedule_keeps_capacity_warm_inside_its_window() -> None:
    policy = Schedule(ScheduleOptions(windows=[{"cron": "* 9-17 * * mon-fri", "min_gpus": 2}]))  # type: ignore[list-item]
    thursday_noon = policy.decide(snapshot(now=NOW), Plan(desired_gpus=0))
    assert (thursday_noon.floor_gpus, thursday_noon.desired_gpus) == (2, 2)
    evening = policy.decide(snapshot(now=NOW + 8 * 3600), Plan(desired_gpus=0))
    assert (evening.floor_gpus, evening.desired_gpus) == (0, 0)
    saturday = policy.decide(snapshot(now=NOW + 2 * 86400), Plan(desired_gpus=0))
    assert saturday.floor_gpus == 0


def test_schedule_rejects_bad_cron_and_timezone() -> None:
    with pytest.raises(ValueError, match="cron"):
        ScheduleOptions(windows=[{"cron": "every day", "min_gpus": 1}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="timezone"):
        ScheduleOptions(windows=[{"cron": "* * * * *", "min_gpus": 1, "timezone": "Mars/Base"}])  # type: ignore[list-item]


# -- consolidate -----------------------------------------------------------------------------


def test_consolidate_replaces_a_dear_instance_once_demand_is_steady() -> None:
    policy = Consolidate(ConsolidateOptions(steady_window_s=600, min_saving_fraction=0.2))
    dear = instance("dear", model=R4090, rate=1.0)
    steady = tuple((NOW - t, 1) for t in range(900, 0, -30))
    snap = snapshot(dear, offers=(offer(R4090, 0.3),), desired_history=steady)
    (create,) = policy.decide(snap, Plan(desired_gpus=1)).actions
    assert create.kind is ActionKind.CREATE and create.replacement == Replacement("id-dear")
    jumpy = snapshot(dear, offers=(offer(R4090, 0.3),), desired_history=((NOW - 900, 1), (NOW - 300, 2)))
    assert policy.decide(jumpy, Plan(desired_gpus=1)).actions == ()
    busy = snapshot(replace(dear, busy=True), offers=(offer(R4090, 0.3),), desired_history=steady)
    assert policy.decide(busy, Plan(desired_gpus=1)).actions == ()  # its job may run for days


def test_consolidate_stops_the_old_one_when_the_new_one_runs() -> None:
    policy = Consolidate(ConsolidateOptions())
    old = instance("old", rate=1.0, replacement=Replacement.restored("id-old", "new"))
    booting = snapshot(old, instance("new", InstanceStatus.STARTING))
    assert policy.decide(booting, Plan()).actions == ()
    up = snapshot(old, instance("new"))
    assert [(a.kind, a.instance_id) for a in policy.decide(up, Plan()).actions] == [(ActionKind.STOP, "id-old")]
    busy = snapshot(replace(old, busy=True), instance("new"))
    assert policy.decide(busy, Plan()).actions == ()


# -- the plugin machinery -------------------------------------------------------------------------


def test_every_builtin_is_discovered_through_entry_points() -> None:
    assert {"queue_target", "schedule", "cheapest_throughput", "idle", "budget", "consolidate"} <= set(
        available_policies()
    )


def test_bad_options_name_the_field() -> None:
    with pytest.raises(PolicyConfigError, match=r"policies\[0\] \(queue_target\)\.options\.jobs_per_gpu"):
        build_chain([PolicySpec(name="queue_target", options={"jobs_per_gpu": 0})])
    with pytest.raises(PolicyConfigError, match="unknown policy 'nope'"):
        build_chain([PolicySpec(name="nope")])
    with pytest.raises(PolicyConfigError, match="jobs_per_gpus"):
        build_chain([PolicySpec(name="queue_target", options={"jobs_per_gpus": 1})])


class _Raises:
    name = "raises"

    def decide(self, snapshot: Any, plan: Plan) -> Plan:
        raise ZeroDivisionError("oops")


class _Nonsense:
    name = "nonsense"

    def __init__(self, result: Any) -> None:
        self.result = result

    def decide(self, snapshot: Any, plan: Plan) -> Any:
        return self.result


@pytest.mark.parametrize(
    "policy",
    [
        _Raises(),
        _Nonsense(None),
        _Nonsense(Plan(desired_gpus=-1)),
        _Nonsense(Plan(actions=(Action(ActionKind.STOP, "x", "x", instance_id="ghost"),))),
        _Nonsense(Plan(actions=(_create(R4090, 0.1),))),  # an offer that is not in the snapshot
    ],
)
def test_a_policy_that_raises_or_returns_nonsense_holds_the_cycle(policy: Any) -> None:
    with pytest.raises(PlanningError) as caught:
        run_chain(snapshot(instance("a")), [queue_target(), policy])
    assert caught.value.policy == policy.name


def test_cheapest_leaves_an_instance_being_replaced_to_consolidate() -> None:
    old = instance("old", rate=1.0, replacement=Replacement.restored("id-old", "new"))
    new = instance("new", InstanceStatus.STARTING, rate=0.4)
    plan = cheapest().decide(snapshot(old, new), Plan(desired_gpus=1))
    assert plan.actions == ()  # one GPU wanted, one coming: no surplus stop, no extra create


# -- cheapest_throughput: shaped to the waiting jobs (issue 16) ---------------------------------


def _widths(
    snap: Snapshot, queued: dict[int, int], running: dict[int, int] | None = None, waited_s: float = 0
) -> Snapshot:
    demand = Demand(
        sum(queued.values()),
        sum((running or {}).values()),
        observed_at=snap.now,
        max_job_gpus=max([w for w, n in queued.items() if n], default=1),
        queued_by_width=queued,
        running_by_width=running or {},
        oldest_queued_at=snap.now - waited_s,
        busy={i.name: bool(i.busy) for i in snap.instances},
        source="test",
    )
    return replace(snap, demand=demand)


def test_shaping_gives_each_waiting_job_a_place_of_its_width_class() -> None:
    fleet = (instance("wide", gpus=8, rate=4.0, busy=True), instance("narrow", gpus=1, busy=False, idle_since=NOW - 10))
    snap = _widths(snapshot(*fleet, offers=(offer(R3090, 0.3),)), {1: 3, 3: 1, 8: 1}, {8: 1})
    plan = cheapest().decide(snap, Plan(desired_gpus=100))
    # the 8-GPU job gets its own 8, the 3-GPU job a 4 (its class), two of the three one-GPU jobs a 1
    # each (the idle one-GPU instance takes the third); no narrow job is given a wide instance
    assert sorted(a.gpus for a in plan.actions if a.kind is ActionKind.CREATE) == [1, 1, 4, 8]
    assert all("class" in a.reason for a in plan.actions)


def test_shaping_stops_an_idle_wide_instance_no_waiting_job_needs_and_never_restarts_one_for_narrow_jobs() -> None:
    fleet = (
        instance("idle8", gpus=8, rate=3.0, busy=False, idle_since=NOW - 400),
        instance("stopped8", InstanceStatus.STOPPED, gpus=8, rate=2.0),
    )
    snap = _widths(snapshot(*fleet, offers=(offer(R3090, 0.3),)), {1: 2})
    plan = cheapest().decide(snap, Plan(desired_gpus=2))
    kinds = sorted((a.kind.value, a.gpus, a.instance_id or "") for a in plan.actions)
    assert kinds == [("create", 1, ""), ("create", 1, ""), ("stop", 8, "id-idle8")]  # no 8-GPU offer listed
    fresh = _widths(snapshot(replace(fleet[0], idle_since=NOW - 10), offers=(offer(R3090, 0.3),)), {1: 2})
    assert [a.kind for a in cheapest().decide(fresh, Plan(desired_gpus=2)).actions] == [ActionKind.CREATE] * 2


def test_shaping_short_of_offers_asks_for_a_fresh_listing_and_a_full_one_does_not() -> None:
    """The engine reads the listing again sooner when a class of waiting jobs found no offer, or
    none under the price ceiling (`offers_short`); a class that the listing served does not."""
    only_one = (offer(R3090, 0.3, available=1),)
    short = cheapest().decide(_widths(snapshot(offers=only_one), {1: 2}), Plan(desired_gpus=2))
    assert [a.kind for a in short.actions] == [ActionKind.CREATE] and short.offers_short
    assert any("no offer fits 1 GPUs; 1 waiting job(s) without a place" in n for n in short.notes)
    served = cheapest().decide(_widths(snapshot(offers=only_one), {1: 1}), Plan(desired_gpus=1))
    assert [a.kind for a in served.actions] == [ActionKind.CREATE] and not served.offers_short
    counted = cheapest().decide(snapshot(offers=only_one), Plan(desired_gpus=2))  # no widths: a GPU count
    assert counted.offers_short
    ceiling = (offer(R3090, 0.3, available=1), offer(H100, 8.0))
    held = cheapest().decide(_widths(snapshot(offers=ceiling), {1: 2}, waited_s=30), Plan(desired_gpus=2))
    assert held.offers_short  # only a dear offer is left: a fresh listing may show a cheap one freed


def _targets(plan: Plan) -> list[tuple[ActionKind, str | None]]:
    """Each action with the instance it acts on, or the host a create goes to."""
    return [(a.kind, a.instance_id or (a.offer.hostnode_id if a.offer else None)) for a in plan.actions]


def _stopped_on(host: str, name: str, gpus: int, model: str = R4090) -> FleetInstance:
    held = instance(name, InstanceStatus.STOPPED, model=model, gpus=gpus, rate=0.4 * gpus)
    return replace(held, instance=held.instance.model_copy(update={"hostnode_id": host}))


def test_stopped_instances_of_another_size_are_deleted_to_make_room_on_a_cheaper_host() -> None:
    cheap = offer(R4090, 0.3, available=1, host="h-cheap")  # one GPU free; the fleet's stopped ones hold three
    dear = offer(R4090, 0.6, available=8, host="h-dear")
    held = [_stopped_on("h-cheap", "one-a", 1), _stopped_on("h-cheap", "one-b", 1), _stopped_on("h-cheap", "two", 2)]
    plan = cheapest().decide(_widths(snapshot(*held, offers=(dear, cheap)), {4: 1}), Plan(desired_gpus=4))
    assert _targets(plan) == [
        (ActionKind.DELETE, "id-two"),
        (ActionKind.DELETE, "id-one-a"),
        (ActionKind.CREATE, "h-cheap"),
    ]
    create = plan.actions[-1]
    assert create.gpus == 4 and create.offer is not None and create.offer.available_gpus == 4
    assert [o.hostnode_id for o in create.alternatives] == ["h-dear"]  # if the room is not there after all
    assert (
        "making room on host h-cheap for a 4-GPU" in plan.actions[0].reason
        and "best listed is" in plan.actions[0].reason
    )
    # a listed offer as cheap: nothing is deleted
    as_cheap = offer(R4090, 0.3, available=8, host="h-other")
    kept = cheapest().decide(_widths(snapshot(*held, offers=(as_cheap, cheap)), {4: 1}), Plan(desired_gpus=4))
    assert [a.kind for a in kept.actions] == [ActionKind.CREATE] and kept.actions[0].offer == as_cheap


def test_room_is_made_only_where_the_host_has_it_and_a_stopped_one_of_the_jobs_size_is_restarted() -> None:
    dear = offer(R4090, 0.6, available=8, host="h-dear")
    # listed with none free (only the price is known, from the listing's full hosts): freed, it fits one GPU
    full = replace(offer(R4090, 0.3, available=0, host="h-full"), host_vcpus_free=0, host_ram_gb_free=0.0)
    wide = _stopped_on("h-full", "four", 4)
    snap = replace(snapshot(wide, offers=(dear,)), full_offers=(full,))
    plan = cheapest().decide(_widths(snap, {1: 1}), Plan(desired_gpus=1))
    assert [(a.kind, a.instance_id) for a in plan.actions][:1] == [(ActionKind.DELETE, "id-four")]
    assert plan.actions[-1].offer is not None and plan.actions[-1].offer.hostnode_id == "h-full"
    # the host's vCPUs are what hold a wide instance off it: its GPUs alone would not make room
    cramped = replace(offer(R4090, 0.3, available=3, host="h-cramped"), host_vcpus_free=16, host_ram_gb_free=512.0)
    snap = snapshot(_stopped_on("h-cramped", "one", 1), offers=(dear, cramped))
    plan = cheapest().decide(_widths(snap, {4: 1}), Plan(desired_gpus=4))
    assert [(a.kind, a.offer.hostnode_id if a.offer else None) for a in plan.actions] == [(ActionKind.CREATE, "h-dear")]
    # one of the job's own size is restarted, not deleted
    same = _stopped_on("h-full", "four", 4)
    snap = replace(snapshot(same, offers=(dear,)), full_offers=(full,))
    plan = cheapest().decide(_widths(snap, {4: 1}), Plan(desired_gpus=4))
    assert [(a.kind, a.instance_id) for a in plan.actions] == [(ActionKind.START, "id-four")]


def test_room_is_made_once_a_host_and_never_from_a_stopped_instance_a_waiting_job_could_restart() -> None:
    cheap = offer(R4090, 0.3, available=2, host="h-cheap")
    dear = offer(R4090, 0.6, available=8, host="h-dear")
    two = _stopped_on("h-cheap", "two", 2)
    # a 4-GPU and a 2-GPU job wait: the stopped 2-GPU instance is the 2-GPU job's restart, not room
    plan = cheapest().decide(_widths(snapshot(two, offers=(dear, cheap)), {4: 1, 2: 1}), Plan(desired_gpus=6))
    assert _targets(plan) == [
        (ActionKind.CREATE, "h-dear"),
        (ActionKind.START, "id-two"),
    ]
    # two 4-GPU jobs: room for one on the cheap host; the other is not put on the same host's listing
    ones = [_stopped_on("h-cheap", f"one-{n}", 1) for n in range(2)]
    plan = cheapest().decide(_widths(snapshot(*ones, offers=(dear, cheap)), {4: 2}), Plan(desired_gpus=8))
    creates = [a.offer.hostnode_id for a in plan.actions if a.kind is ActionKind.CREATE and a.offer]
    assert creates == ["h-cheap", "h-dear"]
    tags = {a.room for a in plan.actions if a.room}
    assert len(tags) == 1 and [a.kind for a in plan.actions if a.room] == [ActionKind.DELETE] * 2 + [ActionKind.CREATE]
    # the smallest stopped instance that alone is enough goes, not the widest
    held = [_stopped_on("h-cheap", "one", 1), _stopped_on("h-cheap", "four", 4), _stopped_on("h-cheap", "eight", 8)]
    full = offer(R4090, 0.3, available=0, host="h-cheap")
    snap = replace(snapshot(*held, offers=(dear,)), full_offers=(full,))
    plan = cheapest().decide(_widths(snap, {2: 1}), Plan(desired_gpus=2))
    assert _targets(plan) == [
        (ActionKind.DELETE, "id-four"),
        (ActionKind.CREATE, "h-cheap"),
    ]


def test_the_price_ceiling_buys_a_dear_offer_only_past_the_target_wait() -> None:
    offers = (offer(R3090, 0.3, available=1), offer(H100, 8.0))  # H100: four times the 3090 per unit
    soon = cheapest().decide(_widths(snapshot(offers=offers), {1: 2}, waited_s=30), Plan(desired_gpus=2))
    assert [a.gpu_model for a in soon.actions] == [R3090]
    assert any(
        "not buying" in n and "4.01x" in n and "ceiling 3x" in n and "projected wait without it 180s" in n
        for n in soon.notes
    )
    late = cheapest().decide(_widths(snapshot(offers=offers), {1: 2}, waited_s=200), Plan(desired_gpus=2))
    assert [a.gpu_model for a in late.actions] == [R3090, H100]
    assert "bought over the price ceiling" in late.actions[1].reason and "350s" in late.actions[1].reason


def test_without_widths_or_with_shaping_off_the_policy_provisions_a_gpu_count_as_before() -> None:
    offers = (offer(R3090, 0.3),)
    plain = snapshot(queued=3, offers=offers)
    assert [a.gpus for a in cheapest().decide(plain, Plan(desired_gpus=3)).actions] == [1, 1, 1]
    wide = _widths(snapshot(offers=offers), {1: 3, 8: 1})
    off = cheapest(shape_to_jobs=False).decide(wide, Plan(desired_gpus=11))
    assert all(a.gpus == 8 for a in off.actions)  # today's sizing: the widest waiting job's size


def test_queue_target_counts_each_job_at_its_class_size_when_widths_are_known() -> None:
    snap = _widths(snapshot(), {1: 2, 3: 1, 5: 1}, {2: 1})
    plan = QueueTarget(QueueTargetOptions(max_step_up=100)).decide(snap, Plan())
    assert plan.desired_gpus == 2 + 4 + 8 + 2


def test_shaping_falls_back_to_a_gpu_count_when_workers_do_not_keep_to_the_convention() -> None:
    # two one-GPU jobs run on one busy 8-GPU instance: its worker takes anything, so another wide
    # instance for the waiting 8-GPU job would be taken by narrow jobs too; provision as before
    fleet = (instance("wide", gpus=8, rate=4.0, busy=True),)
    snap = _widths(snapshot(*fleet, offers=(offer(R3090, 0.3),)), {1: 1, 8: 1}, {1: 2})
    plan = cheapest().decide(snap, Plan(desired_gpus=11))
    assert [a.gpus for a in plan.actions] == [8]  # today's sizing: the widest job's, for the GPU deficit
    assert not any("class" in a.reason for a in plan.actions)
    kept = _widths(snapshot(*fleet, offers=(offer(R3090, 0.3),)), {1: 1, 8: 1}, {8: 1})
    assert sorted(a.gpus for a in cheapest().decide(kept, Plan(desired_gpus=17)).actions) == [1, 8]


def test_budget_says_its_budgets_and_takes_the_hourly_cap_from_the_guards_alone() -> None:
    policy = Budget(BudgetOptions(daily_budget_usd=30.0, monthly_budget_usd=600.0, max_hourly_spend=0.1))
    assert isinstance(policy, SpendLimits)
    assert policy.spend_limits() == Budgets(daily_usd=30.0, monthly_usd=600.0)
    plan = Plan(desired_gpus=1, actions=(_create(R3090, 0.5),))
    assert policy.decide(snapshot(), plan).actions == plan.actions  # the deprecated option is no second cap
    assert policy.decide(snapshot(max_hourly_spend=0.4), plan).actions == ()
