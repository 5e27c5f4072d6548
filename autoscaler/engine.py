"""One cycle: sync with what the world did, build the snapshot, decide, guard, act, remember.

Every failure outside the policies is data in the report (and a log line), never an exception
through the scheduler: a cycle that cannot read the fleet does nothing; one that cannot read
demand holds (DESIGN rule 4).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import structlog
from pydantic import BaseModel, ConfigDict, Field

from autoscaler.actuator import ActionResult, Actuator
from autoscaler.clock import Clock
from autoscaler.cycle_log import log_cycle
from autoscaler.guards import GuardConfig, GuardedPlan, GuardMemory, apply_guards
from autoscaler.metrics import CoreMetrics
from autoscaler.plan import Action, ActionKind, Plan, delete_action
from autoscaler.planner import PlanningError, run_chain
from autoscaler.policy import Policy
from autoscaler.settling import StopDurations
from autoscaler.signals import Demand, DemandSignal, SignalError
from autoscaler.snapshot import (
    RUNNING_LIKE,
    FleetInstance,
    InstanceShape,
    Offer,
    PendingCreate,
    Snapshot,
    billed_rate,
    offers_from,
)
from autoscaler.store import OwnedRecord, Store
from autoscaler.tensordock import Instance, InstanceStatus, TensorDockClient, TensorDockError
from autoscaler.throughput import DEFAULT_THROUGHPUT

_log = structlog.get_logger("autoscaler.cycle")


class EngineConfig(BaseModel):
    """How the cycle treats time and the things the policies do not decide."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name_prefix: str = Field(default="tdas", pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
    shape: InstanceShape = InstanceShape()
    throughput: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_THROUGHPUT))
    guards: GuardConfig = GuardConfig()
    max_signal_age_s: float = Field(default=120.0, gt=0, description="older demand counts as unknown")
    offer_refresh_s: float = Field(default=300.0, ge=0, description="how long listed offers are reused")
    provision_timeout_s: float = Field(default=900.0, gt=0, description="not running by then: deleted (rule 10)")
    unresolved_create_grace_s: float = Field(
        default=600.0,
        gt=0,
        description="a create with no reply and no instance by that name after this long never happened",
    )
    reap_orphans: bool = Field(default=False, description="delete prefix-named instances the store never created")
    allowed_gpu_models: tuple[str, ...] = Field(default=(), description="offers of other models never reach policies")
    stopped_storage_usd_per_gb_hr: float = Field(default=0.0001, ge=0, description="when no offer prices storage")


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
        self._offers: tuple[Offer, ...] = ()
        self._offers_at: float | None = None
        self._counter = itertools.count(1)
        self._spend_seen: float | None = None
        self._stop_called = False  # by the last cycle: its end is not yet in a listing
        self._watched: dict[str, InstanceStatus] = {}  # what this engine's last listing showed
        self._stop_durations = StopDurations(store)

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
        demand, demand_error = self._read_demand(now)
        if demand is None:
            log.warning("demand_unknown", source=self.signal.name, error=demand_error)
        snapshot, orphans = self._sync(now, listing, demand, demand_error, self._current_offers(now))
        report.snapshot, report.orphans = snapshot, orphans
        for orphan in orphans:
            log.warning("orphan_instance", instance=orphan.id, name=orphan.name, rate_hourly=orphan.rate_hourly)
        report.safety = self._safety_actions(snapshot, orphans)
        try:
            report.plan, report.guarded = self.decide(snapshot)
        except PlanningError as exc:
            report.hold = str(exc)
            self.metrics.policy_errors.labels(exc.policy).inc()
            log.error("plan_held", policy=exc.policy, problem=exc.problem)
        if demand is None:  # the guards allow nothing beyond the minimum; say so
            report.hold = report.hold or f"demand unknown: {demand_error}"
        budget = self.config.guards.max_actions_per_cycle
        actions = list(report.safety[:budget])
        if report.guarded is not None:
            actions += list(report.guarded.actions[: max(0, budget - len(actions))])
        report.results = self.actuator.execute(report.cycle_id, actions)
        self._remember(now, report)
        self._stop_called = any(
            r.outcome in ("ok", "unknown") and r.action.kind is ActionKind.STOP for r in report.results
        )
        return self._finish(report, started)

    @property
    def following(self) -> bool:
        """A stop is settling (called by the last cycle, or shown stopping): follow_transitions lists the fleet."""
        return self._stop_called or any(s is InstanceStatus.STOPPING for s in self._watched.values())

    def follow_transitions(self) -> bool:
        """List the fleet between cycles while a stop is settling, and do only the books.

        The ledger charges the rate it last saw, so without this a stop is billed at the full rate
        until the next cycle sees it stopped: up to a whole interval per stop. (A delete needs no
        following: it is charged nothing from its call on.) Nothing is decided or acted on here.
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
        snapshot, _ = self._sync(now, listing, None, "following transitions", self._offers)
        self._export_fleet(CycleReport(cycle_id="follow", started_at=now, snapshot=snapshot))
        self._stop_called = False  # this listing came after the call: it shows the stop if it began
        return self.following

    def decide(self, snapshot: Snapshot) -> tuple[Plan, GuardedPlan]:
        """The policies' plan and what the guards let through; no I/O beyond reading guard memory.

        Raises PlanningError. The simulator calls it on a snapshot moved forward in time to learn
        whether a quiet stretch may be skipped: the same decision code, not a model of it.
        """
        plan = run_chain(snapshot, self.chain)
        return plan, apply_guards(snapshot, plan, self.config.guards, self._memory(snapshot.now))

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
            self._export_fleet(report)
        if report.error is None:
            m.last_success.set(report.started_at)
        for result in report.results:
            m.actions.labels(result.action.kind.value, result.outcome).inc()
        if report.guarded is not None:
            for dropped in report.guarded.dropped:
                m.refused.labels(dropped.rule).inc()
        log_cycle(report)  # the summary line, one per action, one per refusal rule (autoscaler.cycle_log)
        return report

    # -- before deciding ------------------------------------------------------------------------

    def _read_demand(self, now: float) -> tuple[Demand | None, str | None]:
        try:
            demand = self.signal.read(now)
        except SignalError as exc:
            return None, str(exc)
        except Exception as exc:  # a plugin's bug is a failed read, not a dead daemon
            return None, f"{self.signal.name}: {type(exc).__name__}: {exc}"
        age = now - demand.observed_at
        if age > self.config.max_signal_age_s:
            return None, f"{demand.source}: stale by {age:.0f}s (max_signal_age_s {self.config.max_signal_age_s:g})"
        return demand, None

    def _current_offers(self, now: float) -> tuple[Offer, ...]:
        fresh = self._offers_at is not None and now - self._offers_at < self.config.offer_refresh_s
        if not fresh:
            try:
                offers = offers_from(self.client.list_locations(), self.client.list_hostnodes())
                allowed = set(self.config.allowed_gpu_models)
                self._offers = tuple(o for o in offers if not allowed or o.gpu_model in allowed)
                self._offers_at = now
            except TensorDockError as exc:
                _log.warning("offers_unavailable", error=str(exc), reusing=len(self._offers))
        return self._offers

    def refresh_offers(self) -> None:
        """Forget cached offers (after a capacity failure the listing is known to be stale)."""
        self._offers_at = None

    def _sync(
        self,
        now: float,
        listing: list[Instance],
        demand: Demand | None,
        demand_error: str | None,
        offers: tuple[Offer, ...],
    ) -> tuple[Snapshot, tuple[Instance, ...]]:
        """Reconcile the store with the listing: adopt creates whose reply was lost, forget what is
        gone, charge the ledger, track idleness; then freeze it all into a Snapshot."""
        store = self.store
        owned = store.owned()
        created_names = store.created_names()
        unresolved = store.unresolved_creates()
        by_name = {i.name: i for i in listing if i.name}
        offer_by_key = {o.key: o for o in offers}
        store.close_interrupted_changes(now)
        changed = False
        for entry in unresolved:
            found = by_name.get(entry.name or "")
            if found is not None and found.id not in owned:
                store.adopt(
                    found.id,
                    found.name or found.id,
                    entry.at,
                    entry.offer_key,
                    self._storage_rate(offer_by_key.get(entry.offer_key or ""), found),
                )
                store.accrue(found.id, entry.hourly_price, entry.at)
                changed = True
                if entry.replaces:
                    store.mark_retiring(entry.replaces, entry.name)
            if found is not None:
                store.journal_outcome(entry.id, "ok", now, instance_id=found.id)
            elif now - entry.at > self.config.unresolved_create_grace_s:
                store.journal_outcome(entry.id, "lost", now, error="never appeared in the listing")
        if changed:
            owned = store.owned()
        listed_ids = {i.id for i in listing}
        gone = set(owned) - listed_ids
        for instance_id in gone:
            store.accrue(instance_id, 0.0, now)
            store.forget(instance_id)
        if gone:
            owned = store.owned()
        prefix = f"{self.config.name_prefix}-"
        fleet: list[FleetInstance] = []
        unowned: list[Instance] = []
        orphans: list[Instance] = []
        busy_map: Mapping[str, bool] = demand.busy if demand and demand.busy is not None else {}
        rates: dict[str, float] = {}
        observations: list[tuple[str, str, bool | None]] = []
        tracked: list[tuple[Instance, OwnedRecord, bool | None, float]] = []
        busy_known = demand is not None and demand.busy is not None
        with store.transaction():  # one commit for the whole fleet's bookkeeping
            for instance in listing:
                name = instance.name or ""
                if instance.id not in owned and name in created_names and name.startswith(prefix):
                    store.adopt(instance.id, name, now, None, self._storage_rate(None, instance))
                    owned = store.owned()
                record = owned.get(instance.id)
                if record is None:
                    (orphans if name.startswith(prefix) else unowned).append(instance)
                    continue
                busy = busy_map.get(name) if busy_known else None
                storage_rate = record.storage_rate or self._storage_rate(
                    offer_by_key.get(record.offer_key or ""), instance
                )
                rates[instance.id] = billed_rate(instance.status, instance.rate_hourly or 0.0, storage_rate)
                observations.append((instance.id, instance.status.value, busy))
                tracked.append((instance, record, busy, storage_rate))
                if instance.status.is_stopped:
                    settled_at = self._stop_settled_at(instance, record, rates[instance.id], now)
                    if settled_at is not None:
                        store.accrue(instance.id, rates[instance.id], settled_at)
            store.accrue_many(rates, now)
            self._watched = {i.id: i.status for i, *_ in tracked}
            since = store.observe_many(observations, now)
        awaited = {e.name for e in unresolved if e.name}
        for instance, record, busy, storage_rate in tracked:
            idle_since, status_since = since.get(instance.id, (record.idle_since, record.status_since))
            retiring_for = record.retiring_for
            successor = by_name.get(retiring_for or "")
            if (
                retiring_for
                and retiring_for not in awaited
                and (successor is None or successor.status not in RUNNING_LIKE)
            ):
                store.mark_retiring(instance.id, None)  # its replacement is gone or stopped: it stays
                retiring_for = None
            fleet.append(
                FleetInstance(
                    instance=instance,
                    created_at=record.created_at,
                    offer_key=record.offer_key,
                    busy=busy,
                    idle_since=idle_since,
                    status_since=status_since,
                    storage_rate_hourly=storage_rate,
                    retiring_for=retiring_for,
                    start_refused=record.start_refused_at is not None and instance.status is InstanceStatus.STOPPED,
                )
            )
        pending = tuple(
            PendingCreate(e.name or "?", e.gpus, e.hourly_price, e.at)
            for e in store.unresolved_creates()
            if e.name not in by_name
        )
        if demand is not None:
            idle_key = "fleet_idle_since"
            if demand.queued_jobs + demand.running_jobs == 0:
                if store.get_value(idle_key) is None:
                    store.set_value(idle_key, repr(now))
            else:
                store.set_value(idle_key, None)
        fleet_idle = store.get_value("fleet_idle_since")
        snapshot = Snapshot(
            now=now,
            demand=demand,
            instances=tuple(fleet),
            unowned=tuple(unowned) + tuple(orphans),
            offers=offers,
            spend=store.spend(now),
            shape=self.config.shape,
            throughput=self.config.throughput,
            backed_off=store.backed_off(now),
            pending_creates=pending,
            demand_error=demand_error,
            fleet_idle_since=float(fleet_idle) if fleet_idle else None,
            desired_history=tuple(store.desired_history(now - 86400)),
        )
        return snapshot, tuple(orphans)

    def _stop_settled_at(self, instance: Instance, record: OwnedRecord, rate: float, now: float) -> float | None:
        """When a stopped instance the ledger still charges in full most likely stopped costing that.

        A start that failed, or was cut short by a crash, with the instance still stopped, never
        changed the bill: back to the stopped rate from its call. A stop watched by our listings
        teaches how long stops take; one seen only after a gap (this process is new, or newly
        leader) ended by its call plus the longest stop learned. None: charge up to now.
        """
        if record.last_rate is None or record.last_rate <= rate:
            return None
        change = self.store.latest_change(instance.id)
        if change is None or change.at > now:
            return None
        if change.kind == "start":
            return change.at if change.outcome != "ok" else None
        if change.kind != "stop":
            return None
        watched = self._watched.get(instance.id)
        if watched is not None:
            if not watched.is_stopped:
                self._stop_durations.learn(now - change.at)
            return None
        longest = self._stop_durations.longest()
        return None if longest is None else min(now, change.at + longest)

    def _storage_rate(self, offer: Offer | None, instance: Instance) -> float:
        storage = instance.storage_gb or self.config.shape.storage_gb
        if offer is not None:
            return offer.pricing.storage_price(storage)
        return storage * self.config.stopped_storage_usd_per_gb_hr

    def _safety_actions(self, snapshot: Snapshot, orphans: tuple[Instance, ...]) -> tuple[Action, ...]:
        """Rule 10: nothing left running unaccounted. These bypass the policies, not the journal."""
        actions = []
        timeout = self.config.provision_timeout_s
        for instance in snapshot.instances:
            started = instance.status_since if instance.status_since is not None else instance.created_at
            if instance.status is InstanceStatus.STARTING and snapshot.now - started > timeout:
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
        unmanaged = [i for i in snap.unowned if i.status in (InstanceStatus.RUNNING, InstanceStatus.STARTING)]
        m.fleet_cost.labels("false").set(sum(i.rate_hourly or 0.0 for i in unmanaged))
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
        for policy in self.chain:
            options = getattr(policy, "options", None)
            for label, budget, spent in (
                ("daily", getattr(options, "daily_budget_usd", None), snap.spend.today_usd),
                ("monthly", getattr(options, "monthly_budget_usd", None), snap.spend.month_usd),
                ("hourly", getattr(options, "max_hourly_spend", None), snap.hourly_cost),
            ):
                if isinstance(budget, int | float):
                    m.budget_remaining.labels(label).set(budget - spent)
                    m.budget_limit.labels(label).set(budget)

    # -- after acting -------------------------------------------------------------------------

    def _memory(self, now: float) -> GuardMemory:
        def as_float(key: str) -> float | None:
            value = self.store.get_value(key)
            return float(value) if value else None

        return GuardMemory(
            last_scale_up_at=as_float("last_scale_up_at"),
            last_scale_down_at=as_float("last_scale_down_at"),
            history_since=self.store.oldest_history(),
        )

    def _remember(self, now: float, report: CycleReport) -> None:
        ok = [r for r in report.results if r.outcome in ("ok", "unknown")]
        if any(r.action.kind.adds_capacity for r in ok):
            self.store.set_value("last_scale_up_at", repr(now))
        if any(
            r.action.kind is ActionKind.STOP or (r.action.kind is ActionKind.DELETE and r.action.gpus)
            for r in ok
            if r.action.policy != "safety"
        ):
            self.store.set_value("last_scale_down_at", repr(now))
        if any(r.outcome == "failed" and r.action.kind is ActionKind.CREATE for r in report.results):
            self.refresh_offers()
        if report.snapshot is not None:
            desired = report.plan.desired_gpus if report.plan is not None else None
            self.store.record_cycle(now, desired, report.snapshot.active_gpus)
