"""What the fleet is: the listing and the store made to agree, before anything is decided.

TensorDock's documented listing carries id, name and status only, so an owned instance's shape
and price come from the daemon's own record (rule 12); a GET by id refines the record when
something changed (first seen, after a start or modify) and at a slow refresh, within a per-cycle
budget, so that the steady state costs one call per cycle. Doubt counts against the limits (rule
11): an owned instance missing from a listing is kept until a GET says 404, a listing that drops
every owned instance at once holds the cycle, an unknown status counts in full, and a price that
cannot be true is not believed.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog
from pydantic import BaseModel, ConfigDict, Field

from autoscaler.core.durations import Seconds
from autoscaler.core.replacement import Created, Effect, Replacement, Seen, Stage, step
from autoscaler.core.snapshot import (
    RUNNING_LIKE,
    FleetInstance,
    InstanceShape,
    Offer,
    OwnedShape,
    PendingCreate,
    billed_rate,
)
from autoscaler.engine.ledger import Ledger, RateCheck, disbelieved_charge, plausible_rate
from autoscaler.signals import Demand
from autoscaler.store import JournalEntry, OwnedRecord, Store
from autoscaler.tensordock import GpuAllocation, Instance, InstanceStatus, NotFoundError, TensorDockError
from autoscaler.tensordock.client import TensorDockClient

_log = structlog.get_logger("autoscaler.reconcile")
MAX_GPUS_PER_INSTANCE = 8  # TensorDock's limit: an instance of unknown shape may hold this many
ABSENT = "absent from the listing"  # the status_raw of an owned instance a listing left out
# said of an owned instance we did not delete (ours are forgotten when the delete returns): not
# believed until it is gone from the listing and a GET says 404, so it counts in full meanwhile
_GONE_UNCONFIRMED = (InstanceStatus.DELETING, InstanceStatus.DELETED)


class DetailConfig(BaseModel):
    """GETs by id: what the documented listing (id, name, status) does not say (`[detail]`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gets_per_cycle: int = Field(default=3, ge=0, description="GETs per cycle for new, started or vanished instances")
    refresh_s: Seconds = Field(default=3600.0, gt=0, description="a record older than this is refreshed (repricing)")
    refresh_gap_s: Seconds = Field(
        default=300.0, ge=0, description="at most one refresh GET this often, so steady cycles cost one call"
    )


@dataclass(frozen=True)
class ReconcileConfig:
    name_prefix: str
    shape: InstanceShape
    unresolved_create_grace_s: float
    stopped_storage_usd_per_gb_hr: float
    detail: DetailConfig = field(default_factory=DetailConfig)
    rate_check: RateCheck = field(default_factory=RateCheck)


@dataclass(frozen=True)
class Doubts:
    """What this cycle did not believe or could not know; counted in metrics, named in logs."""

    implausible_rates: int = 0
    unknown_status: int = 0
    unknown_shape: int = 0
    contradicted: int = 0
    absent: int = 0


@dataclass(frozen=True)
class Reconciled:
    """The fleet as the daemon believes it this cycle; the snapshot is built from it."""

    fleet: tuple[FleetInstance, ...]
    unowned: tuple[Instance, ...]  # foreign and orphans, with what a GET told of them
    orphans: tuple[Instance, ...]
    orphan_load: tuple[PendingCreate, ...]  # what the orphans count against the bounds
    pending: tuple[PendingCreate, ...]
    watched: dict[str, InstanceStatus]
    doubts: Doubts = field(default_factory=Doubts)
    hold: str | None = None  # the fleet cannot be trusted enough to act on this cycle
    listed_price_factor: float = 1.0  # the snapshot's: how far over their offers' price ours are billed


class Reconciler:
    def __init__(self, client: TensorDockClient, store: Store, ledger: Ledger, config: ReconcileConfig) -> None:
        self.client = client
        self.store = store
        self.ledger = ledger
        self.config = config
        self._foreign: dict[str, tuple[Instance, float]] = {}  # GET cache for instances we do not own
        self._detail_due: set[str] = set()  # started or modified: a GET tells the new rate
        self._last_refresh_at: float | None = None
        self._views: dict[str, tuple[tuple[object, ...], Instance, dict[str, int]]] = {}  # the last cycle's belief

    def detail_due(self, instance_id: str) -> None:
        """A start or modify went through: its rate may have changed."""
        self._detail_due.add(instance_id)

    # -- the step -----------------------------------------------------------------------------

    def reconcile(
        self,
        now: float,
        listing: list[Instance],
        demand: Demand | None,
        offers: tuple[Offer, ...],
        watched_before: Mapping[str, InstanceStatus],
        *,
        may_call: bool = True,
    ) -> Reconciled:
        store = self.store
        store.close_interrupted_changes(now)
        owned = store.owned()
        listed = {i.id for i in listing}
        suspect = bool(owned) and not (listed & owned.keys())
        unresolved = store.unresolved_creates()
        by_name = self._by_unique_name(listing)
        offer_by_key = {o.key: o for o in offers}
        changed = self._resolve_creates(now, unresolved, by_name, owned, offer_by_key, trust_absence=not suspect)
        changed |= self._adopt_created_names(now, [i for i in listing if i.name in by_name], owned, offer_by_key)
        budget = self.config.detail.gets_per_cycle if may_call else 0
        absent = [i for i in owned if i not in listed]
        budget, forgotten = self._confirm_absent(now, absent, owned, budget)
        if changed or forgotten:
            owned = store.owned()
        # a create whose reply gave a wrong id: its instance, listed under its name, is ours now
        if forgotten and self._adopt_created_names(now, [i for i in listing if i.name in by_name], owned, offer_by_key):
            owned = store.owned()
        returned = [i for i, r in owned.items() if i in listed and r.absent_since is not None]
        store.mark_absent(returned, None)
        store.mark_absent([i for i in owned if i not in listed], now)
        details = self._fetch_details(now, listing, owned, budget, may_call)
        hold = None
        if suspect and any(i in owned for i in absent):
            hold = f"the listing left out all {len(owned)} owned instances at once; not trusted this cycle"
            _log.warning("listing_suspect", owned=len(owned), listed=len(listing))
        return self._believe(
            now,
            listing=listing,
            owned=owned,
            details=details,
            demand=demand,
            offers=offers,
            unresolved=unresolved,
            by_name=by_name,
            watched_before=watched_before,
            hold=hold,
        )

    # -- creates whose reply was lost ----------------------------------------------------------

    def _resolve_creates(
        self,
        now: float,
        unresolved: list[JournalEntry],
        by_name: Mapping[str, Instance],
        owned: Mapping[str, OwnedRecord],
        offer_by_key: Mapping[str, Offer],
        *,
        trust_absence: bool,
    ) -> bool:
        """Adopt what the listing shows by name; a create no trusted listing shows after the grace never happened."""
        adopted = False
        for entry in unresolved:
            found = by_name.get(entry.name or "")
            if found is not None and found.id not in owned:
                offer = offer_by_key.get(entry.offer_key or "")
                self.store.adopt(
                    found.id,
                    found.name or found.id,
                    entry.at,
                    entry.offer_key,
                    self.storage_rate(offer, entry.shape),
                    shape=entry.shape,
                    expected_rate=entry.hourly_price or None,
                )
                self.ledger.opened(found.id, entry.hourly_price, self._billed_from(found.id, entry.at))
                adopted = True
                if entry.replaces and entry.name:  # a consolidation's lost reply: its replacement exists
                    lost = Replacement(entry.replaces, entry.name, Stage.CREATING)
                    self._follow(*step(lost, Created(entry.name)))
            if found is not None:
                self.store.journal_outcome(entry.id, "ok", now, instance_id=found.id)
            elif trust_absence and now - (entry.outcome_at or entry.at) > self.config.unresolved_create_grace_s:
                self.store.journal_outcome(entry.id, "lost", now, error="never appeared in the listing")
        return adopted

    def _by_unique_name(self, listing: list[Instance]) -> dict[str, Instance]:
        """Listed instances by name, leaving out a name listed under two ids: which one a create of
        ours made cannot be told, so neither is taken for ours (rule 1); both count as orphans.
        Only our prefix's names are said: others' VMs may share a name as they like."""
        counts = Counter(i.name for i in listing if i.name)
        for name, n in counts.items():
            if n > 1 and name.startswith(f"{self.config.name_prefix}-"):
                _log.warning("listing_name_conflict", name=name, ids=[i.id for i in listing if i.name == name])
        return {i.name: i for i in listing if i.name and counts[i.name] == 1}

    def _adopt_created_names(
        self, now: float, listing: list[Instance], owned: Mapping[str, OwnedRecord], offer_by_key: Mapping[str, Offer]
    ) -> bool:
        """A prefix-named instance whose create we journaled (say, marked lost too early) is ours."""
        prefix = f"{self.config.name_prefix}-"
        candidates = [i for i in listing if i.id not in owned and (i.name or "").startswith(prefix)]
        if not candidates:
            return False
        names = self.store.created_names()
        taken = {record.name for record in owned.values()}  # a second id under one of our names is not ours
        adopted = False
        for instance in candidates:
            if instance.name in names and instance.name not in taken:
                self._adopt_late(now, instance, offer_by_key)
                taken.add(instance.name or instance.id)
                adopted = True
            elif instance.name in names:
                _log.warning("listing_name_conflict", instance=instance.id, name=instance.name)
        return adopted

    def _billed_from(self, instance_id: str, created_at: float) -> float:
        """Billed from its create's call, or from where its charges as an orphan end: never twice."""
        orphan_until = self.store.take_orphan_accrual(instance_id)
        return created_at if orphan_until is None else max(created_at, orphan_until)

    def _adopt_late(self, now: float, instance: Instance, offer_by_key: Mapping[str, Offer]) -> None:
        """Rule 12: what it is comes from the create we journaled under its name (shape, offer,
        price), as for a create resolved in time; billed from that call."""
        entry = self.store.create_of(instance.name or "")
        if entry is None:  # the journal was trimmed: adopted as found, its shape still to learn
            self.store.adopt(instance.id, instance.name or instance.id, now, None, self.storage_rate(None, None))
            return
        self.store.adopt(
            instance.id,
            instance.name or instance.id,
            entry.at,
            entry.offer_key,
            self.storage_rate(offer_by_key.get(entry.offer_key or ""), entry.shape),
            shape=entry.shape,
            expected_rate=entry.hourly_price or None,
        )
        self.ledger.opened(instance.id, entry.hourly_price, self._billed_from(instance.id, entry.at))
        self.store.journal_outcome(entry.id, "ok", now, instance_id=instance.id)
        _log.warning("late_create_adopted", instance=instance.id, name=instance.name, created_at=entry.at)

    # -- absence: forgotten only on a 404 -------------------------------------------------------

    def _confirm_absent(
        self, now: float, absent: list[str], owned: Mapping[str, OwnedRecord], budget: int
    ) -> tuple[int, bool]:
        forgotten = False
        for instance_id in sorted(absent, key=lambda i: owned[i].absent_since or now):
            if budget <= 0:
                break
            budget -= 1
            try:
                found = self.client.get_instance(instance_id)
            except NotFoundError:
                self.ledger.closed(instance_id, now)
                self.store.forget(instance_id)
                forgotten = True
                _log.info("instance_gone", instance=instance_id, name=owned[instance_id].name, confirmed_by="GET 404")
                continue
            except TensorDockError as exc:
                _log.info("absent_unconfirmed", instance=instance_id, name=owned[instance_id].name, error=str(exc))
                continue
            if found.status in (InstanceStatus.DELETED,):
                self.ledger.closed(instance_id, now)
                self.store.forget(instance_id)
                forgotten = True
            else:
                _log.warning("listing_omitted_instance", instance=instance_id, name=owned[instance_id].name)
        return budget, forgotten

    # -- GET by id, only when something changed -------------------------------------------------

    def _fetch_details(
        self,
        now: float,
        listing: list[Instance],
        owned: Mapping[str, OwnedRecord],
        budget: int,
        may_call: bool,
    ) -> dict[str, Instance]:
        """First seen, started or modified first; then one stale record (owned or not) per refresh gap."""
        details: dict[str, Instance] = {}
        if not may_call:
            return details
        prefix = f"{self.config.name_prefix}-"
        gap = self.config.detail.refresh_gap_s

        def due(record: OwnedRecord) -> bool:  # first seen, changed, or still of unknown shape
            if record.detail_at is None or record.id in self._detail_due:
                return True
            return record.shape is None and now - record.detail_at >= gap

        urgent = [
            i.id
            for i in listing
            if (i.id in owned and due(owned[i.id]))
            or (i.id not in owned and (i.name or "").startswith(prefix) and i.id not in self._foreign and not _rich(i))
        ]
        for instance_id in urgent[:budget]:
            self._get(now, instance_id, owned, details)
        listed = {i.id for i in listing}
        self._foreign = {k: v for k, v in self._foreign.items() if k in listed}
        refresh_due = self._last_refresh_at is None or now - self._last_refresh_at >= self.config.detail.refresh_gap_s
        if refresh_due and self.client.can_spare_a_call():
            stale = self._stalest(now, listing, owned, details)
            if stale is not None:
                self._last_refresh_at = now
                self._get(now, stale, owned, details)
        return details

    def _stalest(
        self, now: float, listing: list[Instance], owned: Mapping[str, OwnedRecord], done: Mapping[str, Instance]
    ) -> str | None:
        oldest: tuple[float, str] | None = None
        for instance in listing:
            if instance.id in done:
                continue
            if instance.id in owned:
                at = owned[instance.id].detail_at
            elif _rich(instance):
                continue
            else:
                cached = self._foreign.get(instance.id)
                at = cached[1] if cached else None
            age_from = at if at is not None else -1.0
            if now - age_from >= self.config.detail.refresh_s and (oldest is None or age_from < oldest[0]):
                oldest = (age_from, instance.id)
        return oldest[1] if oldest else None

    def _get(self, now: float, instance_id: str, owned: Mapping[str, OwnedRecord], out: dict[str, Instance]) -> None:
        try:
            detail = self.client.get_instance(instance_id)
        except TensorDockError as exc:
            _log.info("detail_unavailable", instance=instance_id, error=str(exc))
            return
        self._detail_due.discard(instance_id)
        out[instance_id] = detail
        record = owned.get(instance_id)
        if record is None:
            self._foreign[instance_id] = (detail, now)
            return
        # the rate it runs at: a stopped one's reply is its storage, which is no price to charge once it
        # runs again, and would hide how far above its listing it is billed (`_listed_price_factor`)
        running = detail.status in RUNNING_LIKE
        seen = (
            detail.rate_hourly if running and self._rate_believable(detail.rate_hourly, record, running=True) else None
        )
        learned_shape = None if record.shape is not None else shape_from(detail)
        self.store.refine(instance_id, now, seen_rate=seen, shape=learned_shape)

    # -- belief -----------------------------------------------------------------------------

    def _rate_believable(
        self, rate: float | None, record: OwnedRecord | None, dearest: float | None = None, *, running: bool
    ) -> bool:
        expected = record.expected_rate if record is not None else None
        gpus = record.shape.gpus if record is not None and record.shape is not None else MAX_GPUS_PER_INSTANCE
        return plausible_rate(rate, expected, dearest, self.config.rate_check, running=running, gpus=gpus)

    def _believe(
        self,
        now: float,
        *,
        listing: list[Instance],
        owned: Mapping[str, OwnedRecord],
        details: Mapping[str, Instance],
        demand: Demand | None,
        offers: tuple[Offer, ...],
        unresolved: list[JournalEntry],
        by_name: Mapping[str, Instance],
        watched_before: Mapping[str, InstanceStatus],
        hold: str | None,
    ) -> Reconciled:
        store = self.store
        dearest = _dearest(offers, self.config.shape)
        busy_known = demand is not None and demand.busy is not None
        busy_map: Mapping[str, bool] = demand.busy if demand is not None and demand.busy is not None else {}
        unowned, orphans, orphan_load = self._foreign_views(listing, owned, details, dearest)
        rates: dict[str, float] = {}
        observations: list[tuple[str, str, bool | None]] = []
        believed: list[tuple[Instance, OwnedRecord, bool | None, str | None]] = []
        unknown_shape: set[str] = set()  # GPUs counted as 8 against the bounds, as 1 of capacity
        doubts = {"implausible_rates": 0, "unknown_status": 0, "unknown_shape": 0, "contradicted": 0, "absent": 0}
        listed_ids = set()
        with store.transaction():  # one commit for the whole fleet's bookkeeping
            for instance in listing:
                listed_ids.add(instance.id)
                record = owned.get(instance.id)
                if record is None:
                    continue
                view, counts = self._owned_view(now, instance, record, details.get(instance.id), dearest)
                for key, n in counts.items():
                    doubts[key] += n
                busy = busy_map.get(view.name or "") if busy_known else None
                storage_rate = record.storage_rate or self.storage_rate(None, record.shape)
                rates[instance.id] = billed_rate(view.status, view.rate_hourly or 0.0, storage_rate)
                observations.append((instance.id, view.status.value, busy))
                believed.append((view, record, busy, _doubt(counts) or _renamed(view, record)))
                if counts.get("unknown_shape"):
                    unknown_shape.add(instance.id)
                if view.status.is_stopped:
                    self.ledger.settle_stopped(record, rates[instance.id], now, watched_before.get(instance.id))
            for instance_id, record in owned.items():  # missing from this listing: kept, in doubt, in full
                if instance_id in listed_ids:
                    continue
                doubts["absent"] += 1
                view = self._absent_view(record, dearest)
                believed.append((view, record, None, "absent from the last listing; a GET must confirm it is gone"))
                if record.shape is None:
                    unknown_shape.add(instance_id)
                if record.last_rate is not None:
                    rates[instance_id] = record.last_rate
            self.ledger.charge(rates, now, self._orphan_rates(orphans, dearest))
            since = store.observe_many(observations, now)
        self._views = {k: v for k, v in self._views.items() if k in owned}
        fleet = self._fleet(believed, since, unresolved, by_name, unknown_shape)
        watched = {v.id: v.status for v, *_ in believed if v.id in listed_ids}
        pending = tuple(
            PendingCreate(e.name or "?", e.gpus, e.hourly_price, e.at)
            for e in store.unresolved_creates()
            if e.name not in by_name
        )
        return Reconciled(
            fleet=fleet,
            unowned=unowned,
            orphans=orphans,
            orphan_load=orphan_load,
            pending=pending,
            watched=watched,
            doubts=Doubts(**doubts),
            hold=hold,
            listed_price_factor=self._listed_price_factor(believed),
        )

    def _listed_price_factor(self, believed: list[tuple[Instance, OwnedRecord, bool | None, str | None]]) -> float:
        """How many times its offer's listed price the worst-mispriced instance of ours is charged
        while it runs (a stopped one: as it last ran): 1 unless one is over `max_rate_multiple` (a
        listing that underprices). Read from what the store keeps, so a restart, a reload or a new
        leader knows it at once, and a fleet stopped to the cap still knows it."""
        multiple = self.config.rate_check.max_multiple
        ratios = []
        for view, record, _, _ in believed:
            rate = view.rate_hourly if view.status in RUNNING_LIKE else record.seen_rate
            if record.expected_rate and rate is not None and rate > multiple * record.expected_rate:
                ratios.append(rate / record.expected_rate)
        return max([1.0, *ratios])

    def _foreign_views(
        self,
        listing: list[Instance],
        owned: Mapping[str, OwnedRecord],
        details: Mapping[str, Instance],
        dearest: Mapping[int, float],
    ) -> tuple[tuple[Instance, ...], tuple[Instance, ...], tuple[PendingCreate, ...]]:
        """Instances we do not own, with what a GET told of them; the orphans among them, and what
        they count against the bounds."""
        prefix = f"{self.config.name_prefix}-"
        unowned = tuple(self._foreign_view(i, details) for i in listing if i.id not in owned)
        orphans = tuple(i for i in unowned if (i.name or "").startswith(prefix))
        return unowned, orphans, tuple(self._load_of(o, dearest) for o in orphans)

    def _owned_view(
        self, now: float, listed: Instance, record: OwnedRecord, detail: Instance | None, dearest: Mapping[int, float]
    ) -> tuple[Instance, dict[str, int]]:
        """The instance as decisions see it, reused while nothing it is made of changed (a steady
        fleet of thousands would otherwise be rebuilt every cycle)."""
        key = (listed, record.shape, record.seen_rate, record.expected_rate, record.name, dearest.get(1))
        if detail is None:
            cached = self._views.get(record.id)
            if cached is not None and cached[0] == key and not cached[2]:
                return cached[1], cached[2]
        view, counts = self._build_view(now, listed, record, detail, dearest)
        self._views[record.id] = (key, view, counts)
        return view, counts

    def _build_view(
        self, now: float, listed: Instance, record: OwnedRecord, detail: Instance | None, dearest: Mapping[int, float]
    ) -> tuple[Instance, dict[str, int]]:
        """Listed status; shape from our record; a believable rate."""
        counts: dict[str, int] = {}
        shape = record.shape or shape_from(detail) or shape_from(listed)
        for source in (listed, detail):
            if source is not None and shape is not None and source.gpus and _contradicts(source, shape):
                counts["contradicted"] = counts.get("contradicted", 0) + 1
                _log.warning(
                    "listing_contradicts_record",
                    instance=record.id,
                    name=record.name,
                    listed=f"{source.gpu_count}x {source.gpu_model}",
                    recorded=f"{shape.gpus}x {shape.gpu_model}",
                )
        if listed.name and listed.name != record.name:
            counts["contradicted"] = counts.get("contradicted", 0) + 1
            _log.warning(
                "listing_name_differs",
                instance=record.id,
                listed=listed.name,
                recorded=record.name,
                fix="not touched and counted in full until the names agree: rename it back, or delete it by hand",
            )
        status = listed.status
        if detail is not None and detail.status is not InstanceStatus.UNKNOWN:
            status = detail.status  # the later, and fuller, word
        if status in _GONE_UNCONFIRMED:  # our own deletes forget at once: this one is another's word
            if record.detail_at is None or now - record.detail_at >= self.config.detail.refresh_gap_s:
                self._detail_due.add(record.id)  # a later cycle asks its GET, not every one
            counts["unknown_status"] = 1
            _log.warning(
                "listed_as_deleted",
                instance=record.id,
                name=record.name,
                said=status.value,
                counted="in full until the listing leaves it out and a GET by id says 404 (rule 11)",
            )
            status = InstanceStatus.UNKNOWN
        elif status is InstanceStatus.UNKNOWN:
            counts["unknown_status"] = 1
            _log.warning("status_unknown", instance=record.id, name=record.name, raw=listed.status_raw)
        gpus = shape.gpus if shape is not None else MAX_GPUS_PER_INSTANCE
        if shape is None:
            counts["unknown_shape"] = 1
        fallback = record.seen_rate or record.expected_rate or dearest.get(gpus, 0.0)
        rate = fallback
        for reported in (detail.rate_hourly if detail else None, listed.rate_hourly):
            if reported is None:
                continue
            if self._rate_believable(reported, record, dearest.get(gpus), running=status in RUNNING_LIKE):
                rate = reported
                break
            counts["implausible_rates"] = counts.get("implausible_rates", 0) + 1
            charged = disbelieved_charge(reported, fallback, dearest.get(gpus), self.config.rate_check, gpus=gpus)
            self.ledger.rejected_rate(record.id, record.name, reported, charged)
            if charged > rate:  # kept as the last rate to charge: between GETs, and after a restart
                rate = charged
                self.store.refine(record.id, now, seen_rate=charged)
        update: dict[str, object] = {"status": status, "rate_hourly": rate, "name": listed.name or record.name}
        if shape is not None:
            update.update(
                gpus=(GpuAllocation(model=shape.gpu_model, count=shape.gpus),) if shape.gpu_model else (),
                vcpu_count=shape.vcpus,
                ram_gb=shape.ram_gb,
                storage_gb=shape.storage_gb,
                location_id=shape.location_id or listed.location_id,
                hostnode_id=shape.hostnode_id or listed.hostnode_id,
            )
        else:
            update["gpus"] = (GpuAllocation(model="unknown", count=MAX_GPUS_PER_INSTANCE),)
        if detail is not None and detail.ip_address:
            update["ip_address"] = detail.ip_address
        return listed.model_copy(update=update), counts

    def _absent_view(self, record: OwnedRecord, dearest: Mapping[int, float]) -> Instance:
        shape = record.shape
        gpus = shape.gpus if shape is not None else MAX_GPUS_PER_INSTANCE
        return Instance(
            id=record.id,
            name=record.name,
            status=InstanceStatus.UNKNOWN,
            status_raw=ABSENT,
            gpus=(GpuAllocation(model=(shape.gpu_model if shape else None) or "unknown", count=gpus),),
            rate_hourly=record.seen_rate or record.expected_rate or dearest.get(gpus, 0.0),
        )

    def _foreign_view(self, listed: Instance, details: Mapping[str, Instance]) -> Instance:
        detail = details.get(listed.id) or (self._foreign.get(listed.id) or (None, 0.0))[0]
        if detail is None or _rich(listed):
            return listed
        return listed.model_copy(
            update={"rate_hourly": detail.rate_hourly, "gpus": detail.gpus, "ip_address": detail.ip_address}
        )

    def _orphan_rates(self, orphans: tuple[Instance, ...], dearest: Mapping[int, float]) -> dict[str, float]:
        """What each orphan is charged in the ledger: its reported rate where believed, nothing
        while stopped. One whose rate no reply told is left out: a dearest-case guess would spend
        a budget on a stranger's VM (the bounds still count it in full)."""
        rates = {}
        for orphan in orphans:
            gpus = believable_gpus(orphan)
            if orphan.status in (InstanceStatus.STOPPED, InstanceStatus.STOPPED_DISASSOCIATED):
                rates[orphan.id] = 0.0
            elif plausible_rate(
                orphan.rate_hourly, None, dearest.get(gpus), self.config.rate_check, running=True, gpus=gpus
            ):
                rates[orphan.id] = orphan.rate_hourly or 0.0
        return rates

    def _load_of(self, orphan: Instance, dearest: Mapping[int, float]) -> PendingCreate:
        """An orphan counts in full: what it is, if known; else the widest and dearest it could be."""
        gpus = believable_gpus(orphan)
        rate = orphan.rate_hourly
        billing = orphan.status not in (InstanceStatus.STOPPED, InstanceStatus.STOPPED_DISASSOCIATED)
        if not plausible_rate(rate, None, dearest.get(gpus), self.config.rate_check, running=billing, gpus=gpus):
            rate = dearest.get(gpus, 0.0)
        return PendingCreate(orphan.name or orphan.id, gpus if billing else 0, (rate or 0.0) if billing else 0.0, 0.0)

    def _fleet(
        self,
        believed: list[tuple[Instance, OwnedRecord, bool | None, str | None]],
        since: Mapping[str, tuple[float | None, float | None]],
        unresolved: list[JournalEntry],
        by_name: Mapping[str, Instance],
        unknown_shape: set[str],
    ) -> tuple[FleetInstance, ...]:
        awaited = {e.name for e in unresolved if e.name}
        fleet = []
        for view, record, busy, doubt in believed:
            idle_since, status_since = since.get(view.id, (record.idle_since, record.status_since))
            replacement = None
            if record.retiring_for:  # the policy stops the old one; here the link is kept or broken
                successor = by_name.get(record.retiring_for)
                seen = Seen(
                    new=successor.status if successor is not None else None,
                    old=view.status,
                    old_busy=busy,
                    awaited=record.retiring_for in awaited,
                )
                replacement = self._follow(*step(Replacement.restored(view.id, record.retiring_for), seen))
            fleet.append(
                FleetInstance(
                    instance=view,
                    created_at=record.created_at,
                    offer_key=record.offer_key,
                    busy=busy,
                    idle_since=idle_since,
                    status_since=status_since,
                    storage_rate_hourly=record.storage_rate or self.storage_rate(None, record.shape),
                    replacement=replacement,
                    start_refused=record.start_refused_at is not None and view.status is InstanceStatus.STOPPED,
                    doubt=doubt,
                    shape_known=view.id not in unknown_shape,
                )
            )
        return tuple(fleet)

    def _follow(self, replacement: Replacement, effect: Effect) -> Replacement | None:
        """Record a consolidation's link as its transition says; the replacement if still linked."""
        if effect.writes_link:
            self.store.mark_retiring(replacement.old_id, replacement.link)
        return replacement if replacement.link else None

    def storage_rate(self, offer: Offer | None, shape: OwnedShape | None) -> float:
        storage = shape.storage_gb if shape is not None else self.config.shape.storage_gb
        if offer is not None:
            return offer.pricing.storage_price(storage)
        return storage * self.config.stopped_storage_usd_per_gb_hr


def _renamed(view: Instance, record: OwnedRecord) -> str | None:
    """Rule 1: an id listed under a name that is not the one we created it with may not be ours
    (a create reply that gave another VM's id): it counts in full and is never touched."""
    if view.name == record.name:
        return None
    return f"listed as {view.name!r}, created as {record.name!r}; not touched until the names agree"


def _doubt(counts: Mapping[str, int]) -> str | None:
    if counts.get("unknown_status"):
        return "its status is unknown"
    if counts.get("unknown_shape"):
        return f"TensorDock has not said its GPUs; counted as {MAX_GPUS_PER_INSTANCE}"
    return None


def _rich(instance: Instance) -> bool:
    """A listing item that already says what the instance is and costs (the spec's, observed shapes)."""
    return bool(instance.gpus) and instance.rate_hourly is not None


def believable_gpus(instance: Instance) -> int:
    """The GPUs a reply says an instance has, if an instance can have that many; else the most
    one can (rule 11: a count of 0 or 10^9 is not believed, and doubt counts in full)."""
    return instance.gpu_count if 0 < instance.gpu_count <= MAX_GPUS_PER_INSTANCE else MAX_GPUS_PER_INSTANCE


def shape_from(instance: Instance | None) -> OwnedShape | None:
    """What a reply says an instance is made of; None when it says no GPUs or more than one can hold."""
    if instance is None or not instance.gpus or believable_gpus(instance) != instance.gpu_count:
        return None
    return OwnedShape(
        gpu_model=instance.gpu_model,
        gpus=instance.gpu_count,
        vcpus=instance.vcpu_count or 0,
        ram_gb=instance.ram_gb or 0.0,
        storage_gb=instance.storage_gb or 0.0,
        location_id=instance.location_id,
        hostnode_id=instance.hostnode_id,
    )


def _contradicts(instance: Instance, shape: OwnedShape) -> bool:
    return instance.gpu_count != shape.gpus or (
        instance.gpu_model is not None and shape.gpu_model is not None and instance.gpu_model != shape.gpu_model
    )


@functools.lru_cache(maxsize=4)
def _dearest(offers: tuple[Offer, ...], shape: InstanceShape) -> dict[int, float]:
    """The dearest listed price per GPU count: the ceiling for what we cannot know (cached: offers
    change every few minutes, cycles run every few seconds)."""
    out: dict[int, float] = {}
    for gpus in range(1, MAX_GPUS_PER_INSTANCE + 1):
        prices = [o.hourly_price(shape, gpus) for o in offers]
        if prices:
            out[gpus] = max(prices)
    return out
