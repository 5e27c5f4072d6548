"""One cycle: reconcile with what the world did, build the snapshot, decide, guard, act, remember.

Every failure outside the policies is data in the report (and a log line), never an exception
through the scheduler: a cycle that cannot read the fleet does nothing; one that cannot read
demand holds (DESIGN rule 4).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from pydantic import BaseModel, ConfigDict, Field

from autoscaler.common.clock import Clock
from autoscaler.core.durations import DECADE_S, Seconds
from autoscaler.core.guards import GuardConfig, GuardedPlan, apply_guards, removes_capacity
from autoscaler.core.plan import Action, ActionKind, Plan, delete_action, whole_rooms
from autoscaler.core.planner import PlanningError, run_chain
from autoscaler.core.policy import Policy, SpendLimits
from autoscaler.core.snapshot import GuardMemory, InstanceShape, Offer, Snapshot, billed_rate
from autoscaler.core.throughput import DEFAULT_THROUGHPUT
from autoscaler.engine.actuator import ALREADY_GONE, ActionResult, Actuator
from autoscaler.engine.cycle_log import log_cycle
from autoscaler.engine.ledger import RateCheck, plausible_rate
from autoscaler.engine.listing import OfferListing
from autoscaler.engine.metrics import CoreMetrics
from autoscaler.engine.reconcile import (
    ABSENT,
    DetailConfig,
    Doubts,
    ReconcileConfig,
    Reconciled,
    Reconciler,
    believable_gpus,
)
from autoscaler.signals import Demand, DemandSignal, SignalError
from autoscaler.store import Store
from autoscaler.tensordock import Instance, InstanceStatus, TensorDockError
from autoscaler.tensordock.client import TensorDockClient

_log = structlog.get_logger("autoscaler.cycle")

NAME_PREFIX_PATTERN = r"^[a-z0-9][a-z0-9-]{0,30}$"  # fleet.name_prefix: lower-case, a valid start of a hostname


class EngineSettings(BaseModel):
    """The engine's settings that a user sets, defined once: the configuration (`config.Settings`)
    inherits them as top-level keys, and `EngineConfig` carries them to the engine."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    provision_timeout_s: Seconds = Field(
        default=900.0, gt=0, description="seconds an instance may take to run before it is deleted"
    )
    max_signal_age_s: Seconds = Field(default=120.0, gt=0, description="older demand counts as unknown, seconds")
    offer_refresh_s: Seconds = Field(default=300.0, ge=0, description="seconds listed offers are reused")
    offer_refresh_short_s: Seconds = Field(
        default=10.0,
        ge=0,
        description="when no listed offer has what waiting work needs, the listing is read again once it is this old",
    )
    reap_orphans: bool = Field(default=False, description="delete prefix-named instances the store never created")
    # Counted from when the create gave up on its reply (after create_timeout_s): a server that
    # finishes a create it failed to answer must not be answered with a second one (a duplicate).
    unresolved_create_grace_s: Seconds = Field(
        default=180.0,
        gt=0,
        description="a create with no reply that no listing shows by name after this long never happened",
    )
    max_rate_multiple: float = Field(
        default=3.0, gt=1, description="a rateHourly above this multiple of its offer's price is not believed"
    )


class EngineConfig(EngineSettings):
    """How the cycle treats time and the things the policies do not decide: the user's engine
    settings, and what the runtime derives from the rest of the configuration."""

    model_config = ConfigDict(frozen=True)
    name_prefix: str = Field(default="tdas", pattern=NAME_PREFIX_PATTERN)
    shape: InstanceShape = InstanceShape()
    throughput: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_THROUGHPUT))
    guards: GuardConfig = GuardConfig()
    allowed_gpu_models: tuple[str, ...] = Field(default=(), description="offers of other models never reach policies")
    stopped_storage_usd_per_gb_hr: float = Field(default=0.0001, ge=0, description="when no offer prices storage")
    detail: DetailConfig = DetailConfig()


@dataclass
class CycleReport:
    cycle_id: str
    started_at: float
    snapshot: Snapshot | None = None
    plan: Plan | None = None
    guarded: GuardedPlan | None = None
    safety: tuple[Action, ...] = ()
    results: list[ActionResult] = field(default_factory=list)
    orphans: tuple[Instance, ...] = ()
    doubts: Doubts = field(default_factory=Doubts)
    hold: str | None = None  # why nothing (or only safety work) was done
    error: str | None = None  # the cycle failed before deciding
    seconds: float = 0.0


class Engine:
    def __init__(
        self,
        client: TensorDockClient,
        *,
        signal: DemandSignal,
        store: Store,
        chain: Sequence[Policy],
        actuator: Actuator,
        clock: Clock,
        config: EngineConfig,
        metrics: CoreMetrics | None = None,
    ) -> None:
        self.metrics = metrics or CoreMetrics()
        self.client = client
        self.signal = signal
        self.store = store
        self.chain = list(chain)
        self.actuator = actuator
        self.clock = clock
        self.config = config
        self.ledger = actuator.ledger
        self.reconciler = Reconciler(
            client,
            store,
            self.ledger,
            ReconcileConfig(
                name_prefix=config.name_prefix,
                shape=config.shape,
                unresolved_create_grace_s=config.unresolved_create_grace_s,
                stopped_storage_usd_per_gb_hr=config.stopped_storage_usd_per_gb_hr,
                detail=config.detail,
                rate_check=RateCheck(config.max_rate_multiple),
            ),
        )
        self._listing = OfferListing()
        self._offers_at: float | None = None
        self._offers_short = False  # the last plan wanted what no listed offer had
        self.offers_error: str | None = None  # why the last offer listing failed; None once one is read
        self._counter = itertools.count(1)
        self._spend_seen: float | None = None
        self._stop_called = False  # by the last cycle: its end is not yet in a listing
        self._watched: dict[str, InstanceStatus] = {}  # what this engine's last listing showed

    # -- the cycle ----------------------------------------------------------------------------

    def run_cycle(self) -> CycleReport:
        started = time.perf_counter()
        now = self.clock.now()
        report = CycleReport(cycle_id=f"c{int(now)}-{next(self._counter)}", started_at=now)
        log = _log.bind(cycle=report.cycle_id)
        try:
            listing = self.client.list_instances()
        except TensorDockError as exc:
            report.error = f"cannot list instances: {exc}"
            log.warning("cycle_skipped", reason=report.error)
            return self._finish(report, started)
        demand, demand_error = self.read_demand(now)
        if demand is None:
            log.warning("demand_unknown", source=self.signal.name, error=demand_error)
        offers = self._current_offers(now)
        fresh_store = self.store.is_new()
        fleet = self.reconciler.reconcile(now, listing, demand, offers, self._watched)
        self._watched = fleet.watched
        snapshot = self._snapshot(now, fleet, demand, demand_error, offers)
        report.snapshot, report.orphans, report.doubts = snapshot, fleet.orphans, fleet.doubts
        for orphan in fleet.orphans:
            log.warning(
                "orphan_instance",
                instance=orphan.id,
                name=orphan.name,
                rate_hourly=orphan.rate_hourly,
                fix="if it is this fleet's (a store restored from an older backup), `tensordock-autoscaler adopt`"
                " takes it over; else delete it, or set reap_orphans = true",
            )
        report.safety = self._safety_actions(snapshot, fleet.orphans)
        report.hold = fleet.hold or self._lost_store_hold(fresh_store, fleet)
        if report.hold is None:
            try:
                report.plan, report.guarded = self.decide(snapshot)
            except PlanningError as exc:
                report.hold = str(exc)
                self.metrics.policy_errors.labels(exc.policy).inc()
                log.error("plan_held", policy=exc.policy, problem=exc.problem)
        else:
            log.warning("cycle_held", reason=report.hold)
        if demand is None:  # the guards allow nothing beyond the minimum; say so
            report.hold = report.hold or f"demand unknown: {demand_error}"
        budget = self.config.guards.max_actions_per_cycle
        actions = list(report.safety[:budget])
        if report.guarded is not None:
            actions += list(report.guarded.actions[: max(0, budget - len(actions))])
        planned = report.guarded.actions if report.guarded is not None else ()
        actions, _ = whole_rooms(actions, planned)  # a room cut by the budget is cut whole
        report.results = self.actuator.execute(report.cycle_id, actions)
        self._remember(now, report)
        self._stop_called = any(
            r.outcome in ("ok", "unknown") and r.action.kind is ActionKind.STOP for r in report.results
        )
        return self._finish(report, started)

    def _lost_store_hold(self, fresh_store: bool, fleet: Reconciled) -> str | None:
        """Rule 13: an empty store facing our prefix at the provider was lost, not new: no second fleet."""
        if not fresh_store or not fleet.orphans or self.config.reap_orphans:
            return None
        names = ", ".join(sorted(o.name or o.id for o in fleet.orphans)[:5])
        return (
            f"the store is empty but TensorDock lists {len(fleet.orphans)} instance(s) named"
            f" {self.config.name_prefix}-* ({names}): run `tensordock-autoscaler adopt` to take them over,"
            " or set reap_orphans = true to delete them; nothing is created until then"
        )

    @property
    def following(self) -> bool:
        """A stop is settling (called by the last cycle, or shown stopping): follow_transitions lists the fleet."""
        return self._stop_called or any(s is InstanceStatus.STOPPING for s in self._watched.values())

    def follow_transitions(self) -> bool:
        """List the fleet between cycles while a stop is settling, and do only the books.

        The ledger charges the rate it last saw, so without this a stop is billed at the full rate
        until the next cycle sees it stopped: up to a whole interval per stop. (A delete needs no
        following: it is charged nothing from its call on.) Nothing is decided or acted on here,
        and no GET by id is spent.
        Returns whether it still follows something.
        """
        if not self.following:
            return False
        if not self.client.can_spare_a_call():
            return True  # the cycles need the rate limit more; the next poll tries again
        now = self.clock.now()
        try:
            listing = self.client.list_instances()
        except TensorDockError as exc:
            _log.info("follow_skipped", reason=str(exc))
            return True
        fleet = self.reconciler.reconcile(now, listing, None, self._offers, self._watched, may_call=False)
        self._watched = fleet.watched
        snapshot = self._snapshot(now, fleet, None, "following transitions", self._offers)
        self._export_fleet(CycleReport(cycle_id="follow", started_at=now, snapshot=snapshot))
        self._stop_called = False  # this listing came after the call: it shows the stop if it began
        return self.following

    def decide(self, snapshot: Snapshot) -> tuple[Plan, GuardedPlan]:
        """The policies' plan and what the guards let through: pure, on the snapshot alone.

        Raises PlanningError. The simulator calls it on a snapshot moved forward in time to learn
        whether a quiet stretch may be skipped: the same decision code, not a model of it.
        """
        plan = run_chain(snapshot, self.chain)
        return plan, apply_guards(snapshot, plan, self.config.guards, snapshot.memory)

    def _finish(self, report: CycleReport, started: float) -> CycleReport:
        report.seconds = time.perf_counter() - started
        m = self.metrics
        m.cycle_seconds.observe(report.seconds)
        m.cycles.labels("error" if report.error else "hold" if report.hold else "ok").inc()
        readings = getattr(self.signal, "readings", None)
        if isinstance(readings, list) and len(readings) > 1:
            for reading in readings:  # several sources: say which one is down
                m.signal_up.labels(reading.name).set(1.0 if reading.up else 0.0)
        for reading in readings if isinstance(readings, list) else []:
            m.signal_read_seconds.labels(reading.name).observe(reading.seconds)
            if reading.up:
                m.queue_depth.labels(reading.name, "queued").set(reading.queued or 0)
                m.queue_depth.labels(reading.name, "running").set(reading.running or 0)
        if report.snapshot is not None:
            m.signal_up.labels(self.signal.name).set(0.0 if report.snapshot.demand is None else 1.0)
        m.orphans.set(len(report.orphans))
        if report.snapshot is not None:
            doubts = report.doubts
            for reason, count in (
                ("unknown_status", doubts.unknown_status),
                ("unknown_shape", doubts.unknown_shape),
                ("absent_from_listing", doubts.absent),
            ):
                m.in_doubt.labels(reason).set(count)
            m.rates_rejected.inc(doubts.implausible_rates)
            m.listing_contradictions.inc(doubts.contradicted)
        if report.snapshot is not None:
            self._export_fleet(report)
        if report.error is None:
            m.last_success.set(report.started_at)
        for result in report.results:
            m.actions.labels(result.action.kind.value, result.outcome).inc()
        if report.guarded is not None:
            for dropped in report.guarded.dropped:
                m.refused.labels(dropped.rule).inc()
        log_cycle(report)  # the summary line, one per action, one per refusal rule (autoscaler.engine.cycle_log)
        return report

    # -- before deciding ------------------------------------------------------------------------

    def read_demand(self, now: float) -> tuple[Demand | None, str | None]:
        """The demand, or why it cannot be had (a failed or stale read): the cycle's and the queue watch's."""
        try:
            demand = self.signal.read(now)
        except SignalError as exc:
            return None, str(exc)
        except Exception as exc:  # a plugin's bug is a failed read, not a dead daemon
            return None, f"{self.signal.name}: {type(exc).__name__}: {exc}"
        age = now - demand.observed_at
        if age > DECADE_S:  # not a stale reading but no time at all: say so, not a 300-digit age
            return None, f"{demand.source}: observed_at {demand.observed_at:g} is not a time of the last ten years"
        if age > self.config.max_signal_age_s:
            return None, f"{demand.source}: stale by {age:.0f}s (max_signal_age_s {self.config.max_signal_age_s:g})"
        return demand, None

    def _current_offers(self, now: float) -> tuple[Offer, ...]:
        """The listing, reused for `offer_refresh_s`; but while the last plan found no listed offer for
        waiting work, for `offer_refresh_short_s` only: a listing minutes old does not show the GPUs
        freed since (by our deletes, by other renters leaving). At most two calls per that while."""
        reuse_s = self.config.offer_refresh_s
        if self._offers_short:
            reuse_s = min(reuse_s, self.config.offer_refresh_short_s)
        if self._offers_at is None or now - self._offers_at >= reuse_s:
            try:
                self._listing.listed(self.client.list_locations(), self.client.list_hostnodes())
                self._offers_at = now
                self.offers_error = None
            except TensorDockError as exc:
                self.offers_error = str(exc)
                _log.warning("offers_unavailable", error=str(exc), reusing=len(self._offers))
        return self._offers

    @property
    def _offers(self) -> tuple[Offer, ...]:
        """The listing as the fleet's own creates and deletes left it, of the allowed models."""
        return self._allowed(self._listing.offers)

    def _allowed(self, offers: tuple[Offer, ...]) -> tuple[Offer, ...]:
        allowed = set(self.config.allowed_gpu_models)
        return tuple(o for o in offers if not allowed or o.gpu_model in allowed)

    def refresh_offers(self) -> None:
        """Forget cached offers (after a capacity failure the listing is known to be stale)."""
        self._offers_at = None

    def _snapshot(
        self, now: float, fleet: Reconciled, demand: Demand | None, demand_error: str | None, offers: tuple[Offer, ...]
    ) -> Snapshot:
        """Freeze the reconciled fleet with everything else a decision reads: the last I/O of a cycle."""
        store = self.store
        idle = None if demand is None else demand.queued_jobs + demand.running_jobs == 0
        fleet_idle = store.fleet_idle_since(now, idle)
        return Snapshot(
            now=now,
            demand=demand,
            instances=fleet.fleet,
            unowned=fleet.unowned,
            offers=offers,
            spend=store.spend(now),
            shape=self.config.shape,
            throughput=self.config.throughput,
            backed_off=store.backed_off(now),
            pending_creates=fleet.pending,
            demand_error=demand_error,
            fleet_idle_since=fleet_idle,
            desired_history=tuple(store.desired_history(now - 86400)),
            full_offers=self._allowed(self._listing.full_offers),
            orphans=fleet.orphan_load,
            memory=self._memory(),
            max_hourly_spend=self.config.guards.max_hourly_spend,
            listed_price_factor=fleet.listed_price_factor,
        )

    def _safety_actions(self, snapshot: Snapshot, orphans: tuple[Instance, ...]) -> tuple[Action, ...]:
        """Rule 10: nothing left running unaccounted. These bypass the policies, not the journal."""
        actions = []
        timeout = self.config.provision_timeout_s
        for instance in snapshot.instances:
            started = instance.status_since if instance.status_since is not None else instance.created_at
            doubtful = instance.status is InstanceStatus.UNKNOWN and instance.instance.status_raw != ABSENT
            if (instance.status is InstanceStatus.STARTING or doubtful) and snapshot.now - started > timeout:
                if instance.offer_key:
                    self.store.back_off(instance.offer_key, snapshot.now + timeout, "provisioning timed out")
                actions.append(
                    delete_action(instance, f"not running after {timeout:g}s (provision_timeout_s)", "safety")
                )
        if self.config.reap_orphans:
            for orphan in orphans:
                actions.append(
                    Action(
                        ActionKind.DELETE,
                        "orphan: carries the fleet prefix, never created by this store",
                        "safety",
                        instance_id=orphan.id,
                        gpus=orphan.gpu_count,
                        gpu_model=orphan.gpu_model,
                        hourly_delta=-(orphan.rate_hourly or 0.0),
                    )
                )
        return tuple(actions)

    def _export_fleet(self, report: CycleReport) -> None:
        snap, m = report.snapshot, self.metrics
        assert snap is not None
        m.fleet_cost.labels("true").set(snap.hourly_cost)
        # what we are not told of a foreign instance (its storage price) costs nothing here
        # a NaN, infinite or negative rate of theirs (rule 11: not believed) counts as nothing, so one
        # odd listing cannot turn the series NaN
        check = self.reconciler.config.rate_check
        m.fleet_cost.labels("false").set(
            sum(
                billed_rate(i.status, i.rate_hourly or 0.0, 0.0)
                for i in snap.unowned
                if plausible_rate(i.rate_hourly, None, None, check, gpus=believable_gpus(i))
            )
        )
        counts: dict[tuple[str, str, str, str], int] = {}
        for fleet_instance in snap.instances:
            i = fleet_instance.instance
            key = (i.status.value, i.gpu_model or "none", i.location_id or "unknown", "true")
            counts[key] = counts.get(key, 0) + 1
        for i in snap.unowned:
            key = (i.status.value, i.gpu_model or "none", i.location_id or "unknown", "false")
            counts[key] = counts.get(key, 0) + 1
        m.instances.clear()
        for labels, count in counts.items():
            m.instances.labels(*labels).set(count)
        if report.plan is not None and report.plan.desired_gpus is not None:
            m.gpus_desired.set(report.plan.desired_gpus)
        m.gpus_active.set(snap.active_gpus)
        half = self.config.provision_timeout_s / 2
        m.stuck_starting.set(
            sum(
                1
                for i in snap.instances
                if i.status is InstanceStatus.STARTING and snap.now - (i.status_since or i.created_at) > half
            )
        )
        if self._spend_seen is not None and snap.spend.total_usd > self._spend_seen:
            m.spend.inc(snap.spend.total_usd - self._spend_seen)
        self._spend_seen = snap.spend.total_usd
        m.spend_today.set(snap.spend.today_usd)
        limits = [("hourly", self.config.guards.max_hourly_spend, snap.hourly_cost)]
        for policy in self.chain:
            if isinstance(policy, SpendLimits):
                budgets = policy.spend_limits()
                limits += [
                    ("daily", budgets.daily_usd, snap.spend.today_usd),
                    ("monthly", budgets.monthly_usd, snap.spend.month_usd),
                ]
        for label, limit, spent in limits:
            if limit is not None:
                m.budget_remaining.labels(label).set(limit - spent)
                m.budget_limit.labels(label).set(limit)

    # -- after acting -------------------------------------------------------------------------

    def _correct_listing(self, snapshot: Snapshot, ok: Sequence[ActionResult]) -> None:
        """What the fleet's own creates took and its deletes gave back, until the next listing."""
        for result in ok:
            action = result.action
            if action.kind is ActionKind.CREATE:  # a lost reply ("unknown") may have taken them too
                used = next((o for o in (action.offer, *action.alternatives) if o and o.key == result.offer_key), None)
                if used is not None:
                    self._listing.took(
                        used.hostnode_id, used.gpu_model, action.gpus, *snapshot.shape.host_room(action.gpus)
                    )
            elif action.kind is ActionKind.DELETE and result.outcome == "ok" and result.error != ALREADY_GONE:
                gone = snapshot.instance(action.instance_id or "")
                if gone is not None and gone.status is not InstanceStatus.STOPPED_DISASSOCIATED:
                    inst = gone.instance
                    room = snapshot.shape.host_room(inst.gpu_count, inst.vcpu_count, inst.ram_gb)
                    self._listing.gave_back(inst.hostnode_id, inst.gpu_model, inst.gpu_count, *room)

    def _memory(self) -> GuardMemory:
        up_at, down_at = self.store.last_scaled()
        history_since = self.store.oldest_history()
        return GuardMemory(last_scale_up_at=up_at, last_scale_down_at=down_at, history_since=history_since)

    def _remember(self, now: float, report: CycleReport) -> None:
        ok = [r for r in report.results if r.outcome in ("ok", "unknown")]
        if any(r.action.kind.adds_capacity for r in ok):
            self.store.mark_scaled(up_at=now)
        snapshot = report.snapshot
        if any(  # deleting a stopped instance (retention, room) serves no less: no scale-down cooldown
            removes_capacity(r.action, snapshot.instance(r.action.instance_id or "") if snapshot is not None else None)
            for r in ok
            if r.action.policy != "safety"
        ):
            self.store.mark_scaled(down_at=now)
        if any(r.outcome == "failed" and r.action.kind is ActionKind.CREATE for r in report.results):
            self.refresh_offers()
        if report.plan is not None:
            self._offers_short = report.plan.offers_short
        if report.snapshot is not None:
            self._correct_listing(report.snapshot, ok)
        for result in ok:
            if result.action.kind is ActionKind.START and result.instance_id:
                self.reconciler.detail_due(result.instance_id)
        if report.snapshot is not None:
            desired = report.plan.desired_gpus if report.plan is not None else None
            self.store.record_cycle(now, desired, report.snapshot.active_gpus)
