"""Replay one trace through the production engine against the fake API, in virtual time.

The loop is the daemon's: every `interval_s` the engine runs a cycle (snapshot, policies,
guards, actuator, store) over the in-process fake on a ManualClock, and sooner when the queue
watch (`scheduler.watch_s`) reads new work in between. Between cycles the
workload moves to the next cycle time event by event. Quiet stretches are skipped: when a
cycle did nothing, nothing is in transition and the queue will not change before its next
event, the engine's own `decide` is asked about the later cycle times on the same snapshot;
cycles it would spend doing nothing are not run (capped at `max_skip_s`, so the ledger and
the offers are still refreshed regularly). The store keeps the desired-GPU history as changes,
so a skipped cycle, which would have changed nothing, leaves nothing out.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from autoscaler.common.clock import ManualClock
from autoscaler.config import Settings, between_cycles
from autoscaler.core.planner import PlanningError
from autoscaler.core.queue_watch import QueueWatch
from autoscaler.core.snapshot import Snapshot, Spend
from autoscaler.engine.actuator import default_names
from autoscaler.engine.cycle import CycleReport, Engine
from autoscaler.service.runtime import build_runtime
from autoscaler.store import SqliteStore
from autoscaler.tensordock.fake import (
    Catalog,
    Dialect,
    FakeTensorDockApp,
    Faults,
    Timings,
    build_fake,
    in_process_transport,
    load_catalog,
)

from .market import Market, MarketProfile, market_faults
from .trace import Job
from .workload import WorkerTimings, Workload

SIM_TOKEN = "simulated-token-not-a-secret"  # noqa: S105 - the in-process fake's own token
PROGRESS_EVERY_S = 3600.0  # simulated seconds between progress reports
ORIGIN = 1_767_225_600.0  # 2026-01-01T00:00:00Z: day and month boundaries fall where a reader expects


@dataclass(frozen=True)
class SimOptions:
    interval_s: float | None = None  # seconds between cycles; None: the configuration's scheduler.interval_s
    watch_s: float | None = None  # the queue watch between cycles; None: the configuration's, 0: off
    seed: int = 0
    timings: Timings = field(default_factory=Timings)
    faults: Faults = field(default_factory=Faults)  # what the fake API gets wrong, as in the chaos suite
    workers: WorkerTimings = field(default_factory=WorkerTimings)
    catalog_path: str | Path | None = None
    market_depth: int = 1  # every host of the catalog this many times
    fast_forward: bool = True
    max_skip_s: float = 900.0
    spare_listings: bool = True  # skip offer listings that could show nothing new (see _OfferCadence)
    # the replay ends this long after the last submission if a job still waits then; if none does,
    # the jobs running are seen out and billed in full (a long job on a slow model is served, not cut
    # off unpaid), for at most as long again
    drain_limit_s: float = 60 * 86400.0
    world_throughput: Mapping[str, float] | None = None  # the jobs' true speed per model; None: the policies' table
    lp_wait_s: float = 300.0  # the LP bound's service: every job started within this
    lp_cache_dir: Path | None = None  # where LP bounds are kept between runs; None: solved every time
    market: MarketProfile = "calm"
    dialect: Dialect | None = None  # the fake's reply shapes; None: the settings' wire format
    # workers follow the width convention (autoscaler/core/widths.py) when the policies shape the fleet
    # to it (cheapest_throughput's shape_to_jobs); off: every worker takes any job that fits
    width_classes: bool = True
    # told (simulated seconds, jobs done, jobs in all) every simulated hour: a terminal's bar
    progress: Callable[[float, int, int], None] | None = field(default=None, compare=False)

    def catalog(self) -> Catalog:
        return load_catalog(self.catalog_path).deepened(self.market_depth)

    def drain_ends(self, jobs: Sequence[Job]) -> tuple[float, float]:
        """When a replay ends if a job still waits, and when at the latest if the jobs running are
        seen out (a speed near 0 or a job of years ends there): both replays, one rule."""
        deadline = ORIGIN + max(job.submit for job in jobs) + self.drain_limit_s
        return deadline, deadline + self.drain_limit_s

    def interval(self, settings: Settings) -> float:
        """Seconds between cycles: the daemon's (`scheduler.interval_s`), unless this run overrides it."""
        return self.interval_s if self.interval_s is not None else settings.scheduler.interval_s

    def watch(self, settings: Settings) -> float:
        """Seconds between the queue watch's readings (`scheduler.watch_s`); 0 when it is off."""
        watch = self.watch_s if self.watch_s is not None else settings.scheduler.watch_s
        return between_cycles(watch, self.interval(settings))


@dataclass(frozen=True)
class Sample:
    """The fleet after one cycle: for the timeline plot."""

    t: float  # seconds since the trace began
    queued_jobs: int
    running_gpus: int
    gpus_by_model: dict[str, int]
    usd_per_hour: float


@dataclass
class Run:
    """Everything one replay measured."""

    cost_usd: float
    waits: list[float]
    turnarounds: list[float]
    jobs_completed: int
    jobs_total: int
    api_calls: int
    actions: int
    peak_gpus: int
    cycles: int
    skipped_cycles: int
    preempted: int
    simulated_s: float
    wall_s: float
    timeline: list[Sample]
    early_cycles: int = 0  # cycles the queue watch ran before their interval


CycleCheck = Callable[[CycleReport, FakeTensorDockApp, Workload], None]


def shapes_to_jobs(settings: Settings) -> bool:
    """Whether the policies shape instances to the width convention, so its workers can follow it:
    cheapest_throughput with `shape_to_jobs` on and every class size (1, 2, 4, 8) allowed."""
    return any(
        spec.name == "cheapest_throughput"
        and spec.options.get("shape_to_jobs", True)
        and {1, 2, 4, 8} <= set(spec.options.get("gpus_per_instance", (1, 2, 4, 8)))
        for spec in settings.policies
    )


def replay(
    jobs: list[Job],
    settings: Settings,
    options: SimOptions | None = None,
    *,
    check: CycleCheck | None = None,
) -> Run:
    """`check` runs after every cycle (the safety tests assert the rules there)."""
    options = options or SimOptions()
    wall = time.perf_counter()
    clock = ManualClock(ORIGIN)
    catalog = options.catalog()
    fake = build_fake(
        SIM_TOKEN,
        options.dialect or settings.tensordock.wire_format,
        clock=clock,
        catalog=catalog,
        timings=options.timings,
        faults=market_faults(options.market, options.faults),
        seed=options.seed,
        balance_usd=1e12,
        rate_limit=settings.tensordock.rate_limit,
        rate_window_s=settings.tensordock.rate_window_s,
    )
    market = Market(options.market, catalog, ORIGIN, options.seed)
    throughput = options.world_throughput or settings.fleet.throughput_table
    workload = Workload(
        jobs,
        fake.state,
        throughput,
        ORIGIN,
        timings=options.workers,
        seed=options.seed,
        width_classes=options.width_classes and shapes_to_jobs(settings),
    )
    runtime = build_runtime(
        settings,
        clock=clock,
        transport=in_process_transport(fake),
        signal=workload,
        store=SqliteStore(":memory:"),
        dry_run=False,
        name_factory=default_names(settings.fleet.name_prefix, random.Random(options.seed)),
    )
    engine = runtime.engine
    offers = _OfferCadence(engine, fake, enabled=options.spare_listings and not _request_faults(options.faults))
    deadline, seen_out_by = options.drain_ends(jobs)
    interval, watch_s = options.interval(settings), options.watch(settings)
    watch = QueueWatch()
    timeline: list[Sample] = []
    cycles = skipped = actions = early = 0
    reported_at = ORIGIN
    try:
        while True:
            at = clock.now()
            market.advance(fake.state, at)
            workload.advance(at)
            offers.before_cycle(at)
            report = engine.run_cycle()
            offers.after_cycle(at)
            workload.observe_fleet()
            cycles += 1
            actions += len(report.results)
            timeline.append(_sample(fake, workload, at - ORIGIN))
            if check is not None:
                check(report, fake, workload)
            if options.progress is not None and at - reported_at >= PROGRESS_EVERY_S:
                reported_at = at
                options.progress(at - ORIGIN, workload.completed, len(jobs))
            if at >= deadline and (workload.queue or not workload.running_gpus or at >= seen_out_by):
                break
            step = interval
            if options.fast_forward:
                quiet = _quiet_cycles(engine, report, fake, workload, interval=interval, max_skip_s=options.max_skip_s)
                skipped += quiet
                step *= 1 + quiet
            target = at + step
            if watch_s:
                watch.cycle_saw(report.snapshot.demand if report.snapshot is not None else None)
                woken = _watched_until(workload, watch, at, target, watch_s, spare=engine.client.can_spare_a_call)
                early += woken < target
                target = woken
            workload.advance(target)
            if workload.finished_at is not None:  # the bill stops when the last job is done
                clock.advance(max(0.0, workload.finished_at - clock.now()))
                break
            clock.advance(max(0.0, target - clock.now()))
    finally:
        runtime.close()
    with fake.state.lock:
        fake.state.settle()
        cost = fake.state.bill().total_usd
    return Run(
        cost_usd=cost,
        waits=workload.wait_times(),
        turnarounds=workload.turnarounds(),
        jobs_completed=workload.completed,
        jobs_total=len(jobs),
        api_calls=sum(fake.requests.values()),
        actions=actions,
        peak_gpus=max((sum(s.gpus_by_model.values()) for s in timeline), default=0),
        cycles=cycles,
        skipped_cycles=skipped,
        early_cycles=early,
        preempted=workload.preempted,
        simulated_s=clock.now() - ORIGIN,
        wall_s=time.perf_counter() - wall,
        timeline=timeline,
    )


def _watched_until(
    workload: Workload,
    watch: QueueWatch,
    at: float,
    target: float,
    watch_s: float,
    *,
    spare: Callable[[float], bool],
) -> float:
    """When the daemon's queue watch would run the next cycle after the one at `at`: at the first
    reading that shows new work, or at `target` (the regular cycle).

    The readings fall on a fixed grid (every `watch_s` from the trace's start), as the daemon's
    watch job keeps its own schedule, so skipping quiet cycles moves no reading. Only readings
    right after an arrival can show new work, so only those are taken, each with the reading
    before it: between arrivals the queue only shrinks, so that one holds the low-water mark the
    readings in between would have found. Decided on the same QueueWatch as the daemon; as in the
    daemon, news read while the rate limit has no call to spare (`spare`) wakes the cycle at the
    first reading that can spare one.
    """
    last = at
    while (arrival := workload.next_arrival) is not None and arrival < target:
        tick = ORIGIN + math.ceil((arrival - ORIGIN) / watch_s) * watch_s
        if tick >= target:
            break
        before = tick - watch_s  # after `last`, unless the arrival falls in the grid step after it
        if before > last and watch.grew(workload.read(before)):
            return _first_spared(before, target, watch_s, spare)
        last = tick  # after the arrival, so this reading moves past it: the loop ends
        if watch.grew(workload.read(tick)):
            return _first_spared(tick, target, watch_s, spare)
    return target


def _first_spared(reading: float, target: float, watch_s: float, spare: Callable[[float], bool]) -> float:
    """The first watch from `reading` on whose early cycle the rate limit can spare; else the cycle at `target`."""
    while reading < target and not spare(reading):
        reading += watch_s
    return min(reading, target)


def _request_faults(faults: Faults) -> bool:
    """Faults drawn per request: then every request the engine makes must reach the fake."""
    return bool(
        faults.latency_s
        or faults.timeout_rate
        or faults.server_error_rate
        or faults.rate_limit_burst_rate
        or faults.lost_reply_rate
        or faults.lose_next_replies
    )


def _market_print(fake: FakeTensorDockApp) -> tuple[object, ...]:
    """Everything an offer listing shows: the catalog's prices, what the fleet and others hold."""
    state = fake.state
    with state.lock:
        state.settle()
        held = tuple(sorted((i.id, i.phase, i.disassociated, i.gpu_count) for i in state.instances()))
        foreign = tuple((r.host_id, r.gpu_model, r.count) for r in state._foreign)
        return (id(state.catalog), held, foreign)


class _OfferCadence:
    """Spares the engine offer listings that could not show anything new.

    The engine re-lists offers once its listing is `offer_refresh_s` old. After a stretch of
    skipped cycles that is nearly every cycle, yet in a marketplace that nothing has touched
    since the last listing (same prices, same instances in the same phases, same rentals by
    others) the new listing would be the old one again. Then the cached listing is dated now,
    as if just listed, so the engine decides exactly as it would have (same offers, same time
    of listing) without the two calls; anything that changed the market means a real listing.
    This reads and sets the engine's `_offers_at` (its offer cache's time); should that go
    away, listings simply happen as before.
    """

    def __init__(self, engine: Engine, fake: FakeTensorDockApp, *, enabled: bool) -> None:
        self.engine = engine
        self.fake = fake
        self.refresh_s = engine.config.offer_refresh_s
        self.enabled = enabled and hasattr(engine, "_offers_at") and self.refresh_s > 0
        self.listed_print: tuple[object, ...] | None = None
        self._before: tuple[object, ...] | None = None
        self.spared = 0

    def before_cycle(self, now: float) -> None:
        if not self.enabled:
            return
        self._before = _market_print(self.fake)
        listed_at = self.engine._offers_at
        if listed_at is None or now - listed_at < self.refresh_s or self.listed_print != self._before:
            return
        self.engine._offers_at = now
        self.spared += 1

    def after_cycle(self, now: float) -> None:
        """A listing in this cycle (or one dated now) came before the cycle acted: remember the
        market it showed."""
        if self.enabled and self.engine._offers_at == now:
            self.listed_print = self._before


def _sample(fake: FakeTensorDockApp, workload: Workload, t: float) -> Sample:
    by_model: dict[str, int] = {}
    rate = 0.0
    for inst in fake.state.instances():
        rate += fake.state.billing_rate(inst)
        if inst.phase == "stopped":
            continue
        if inst.gpu_model:
            by_model[inst.gpu_model] = by_model.get(inst.gpu_model, 0) + inst.gpu_count
    return Sample(t, len(workload.queue), workload.running_gpus, by_model, rate)


def _quiet_cycles(
    engine: Engine,
    report: CycleReport,
    fake: FakeTensorDockApp,
    workload: Workload,
    *,
    interval: float,
    max_skip_s: float,
) -> int:
    """How many of the next cycles would do nothing; 0 unless that is certain from here."""
    snapshot = report.snapshot
    if report.results or report.safety or report.error or snapshot is None or snapshot.demand is None:
        return 0
    if (
        snapshot.pending_creates
        or snapshot.backed_off
        or any(i.phase not in ("running", "stopped") for i in fake.state.instances())
    ):
        return 0
    if any(w.ready_at > workload.now for w in workload.workers.values()):
        return 0
    horizon = min(max_skip_s, (workload.next_event() or math.inf) - snapshot.now)
    limit = int(horizon // interval) - (1 if horizon % interval == 0 else 0)  # the event's cycle runs
    if limit <= 0:
        return 0

    desired = report.plan.desired_gpus if report.plan is not None else None

    def acts(k: int) -> bool:
        try:
            _, guarded = engine.decide(_ahead(snapshot, k * interval, desired))
        except PlanningError:
            return True  # let the real cycle report it
        return bool(guarded.actions)

    if not acts(limit) and not acts(1):  # quiet at both ends: by the assumption above, all through
        return limit
    quiet, probe = 0, 1  # gallop, then bisect: decisions change at thresholds, once
    while probe <= limit and not acts(probe):
        quiet, probe = probe, probe * 2
    if probe <= limit:
        low, high = quiet, probe  # quiet at low, acting at high
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if not acts(middle) else (low, middle)
        return low
    if quiet < limit and not acts(limit):
        return limit
    return quiet


def _ahead(snapshot: Snapshot, seconds: float, desired: int | None) -> Snapshot:
    """The same fleet and demand `seconds` later, with spend run on at the current hourly cost and
    the history holding what this cycle recorded (`desired`, as the skipped cycles would)."""
    now = snapshot.now + seconds
    extra = snapshot.hourly_cost * seconds / 3600.0
    then, later = (datetime.fromtimestamp(t, UTC) for t in (snapshot.now, now))
    midnight = later.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    today = (
        snapshot.spend.today_usd + extra
        if then.date() == later.date()
        else snapshot.hourly_cost * (now - midnight) / 3600
    )
    month = snapshot.spend.month_usd + extra if then.month == later.month else today
    demand = replace(snapshot.demand, observed_at=now) if snapshot.demand is not None else None
    history = snapshot.desired_history
    if desired is not None and (not history or history[-1][1] != desired):
        history = (*history, (snapshot.now, desired))
    spend = Spend(today, month, snapshot.spend.total_usd + extra)
    return replace(snapshot, now=now, demand=demand, spend=spend, desired_history=history)
