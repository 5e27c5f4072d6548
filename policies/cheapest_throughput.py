"""Which GPUs fill the need: offers and stopped instances ranked by price per unit of work.

Price per unit of work is `$/h / (throughput(model) * gpus)` (`autoscaler.core.throughput.unit_price`).
Instances are the smallest allowed size that fits the widest waiting job. Scale-up restarts an
owned stopped instance when, counting only the GPUs the need can use, it is within `restart_margin`
of the best offer (it boots faster and keeps its disk), else creates on the best offer, with the
next best as fallbacks for when the listed capacity turns out to be gone. GPUs can add up while no
instance is wide enough for the widest waiting job; then one that is gets added. When the source
reports widths, a class's cheapest place may be a host where the fleet's own stopped instances of
another size hold the GPUs: they are deleted to make room there (`_room_made`). Scale-down takes
idle instances first, then the dearest per unit of work, and deletes them where the listing gives
the same GPUs back as cheaply, else stops them (`scale_down`); a busy instance is never chosen, nor
a wide one a waiting job needs, and one being replaced is left to `consolidate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import Field, model_validator

from autoscaler.core.durations import Seconds
from autoscaler.core.plan import Action, ActionKind, Plan, delete_action, start_action, stop_action
from autoscaler.core.policy import BasePolicy, PolicyOptions
from autoscaler.core.shape import InstanceShape
from autoscaler.core.snapshot import FleetInstance, Offer, Snapshot
from autoscaler.core.widths import width_class
from autoscaler.tensordock import InstanceStatus


class CheapestThroughputOptions(PolicyOptions):
    allowed_models: list[str] = Field(default=[], description="empty: every model")
    excluded_models: list[str] = []
    min_vram_gb: int = Field(default=0, ge=0)
    allowed_locations: list[str] = Field(default=[], description="location ids; empty: all")
    preferred_locations: list[str] = []
    preferred_discount: float = Field(default=0.05, ge=0, lt=1, description="rank preferred places this much cheaper")
    min_tier: int = Field(default=0, ge=0, description="skip hosts below this tier (0 is residential)")
    restart_margin: float = Field(default=0.10, ge=0, description="restart if within this fraction of the best offer")
    gpus_per_instance: list[int] = Field(
        default=[1, 2, 4, 8], description="allowed sizes; the smallest that fits the widest waiting job is used"
    )
    fallbacks: int = Field(default=3, ge=0, description="next-best offers to try when one has no capacity")
    place_widest_job: bool = Field(
        default=True, description="add an instance when no idle one is wide enough for the widest waiting job"
    )
    scale_down: Literal["auto", "stop", "delete"] = Field(
        default="auto",
        description="delete surplus instances, or stop them (restarts fast, storage bills, the GPUs stay held); "
        "auto: delete when a listed offer gives the same GPUs back as cheaply, else stop",
    )
    shape_to_jobs: bool = Field(
        default=True,
        description="when the signal reports waiting jobs by width: one instance per waiting job, of that job's "
        "width class (workers follow the width convention, see README); off: provision a GPU count",
    )
    surplus_idle_s: Seconds = Field(
        default=60.0,
        ge=0,
        description="shaping: an idle instance of a width class with more places than waiting jobs is stopped "
        "after this long idle",
    )
    price_ceiling: float = Field(
        default=3.0,
        ge=1,
        description="an offer dearer per unit of work than the best fitting one by more than this factor is "
        "bought only when the oldest waiting job would otherwise wait past target_wait_s",
    )
    target_wait_s: Seconds = Field(default=300.0, gt=0, description="the wait the price ceiling protects")
    boot_s: Seconds = Field(default=150.0, ge=0, description="seconds from create until a worker takes jobs")

    @model_validator(mode="after")
    def _sizes(self) -> CheapestThroughputOptions:
        if not self.gpus_per_instance or any(not 1 <= n <= 8 for n in self.gpus_per_instance):
            raise ValueError("gpus_per_instance needs sizes from 1 to 8")
        return self


@dataclass
class _Candidate:
    offer: Offer
    unit_price: float
    price: float
    remaining: int


@dataclass(frozen=True)
class _RoomMade:
    """A place the fleet's own stopped instances hold: `candidate` once `freed` are deleted."""

    candidate: _Candidate
    freed: tuple[FleetInstance, ...]


def _with_freed(offer: Offer, freed: Iterable[FleetInstance], shape: InstanceShape) -> Offer:
    """The host's offer as it stands once the fleet's own instances there are deleted."""
    gone = list(freed)
    rooms = [shape.host_room(i.gpus, i.instance.vcpu_count, i.instance.ram_gb) for i in gone]
    vcpus, ram = offer.host_vcpus_free, offer.host_ram_gb_free
    return replace(
        offer,
        available_gpus=offer.available_gpus + sum(i.gpus for i in gone),
        host_vcpus_free=None if vcpus is None else vcpus + sum(v for v, _ in rooms),
        host_ram_gb_free=None if ram is None else ram + sum(r for _, r in rooms),
    )


def _fewest_to_free(stopped: list[FleetInstance], gpus: int) -> list[FleetInstance]:
    """The stopped instances to delete for `gpus` more: the smallest one that alone is enough, else
    the widest first (all of them, if together they are too few: the candidate then does not fit)."""
    alone = sorted((i for i in stopped if i.gpus >= gpus), key=lambda i: (i.gpus, i.id))
    if alone:
        return alone[:1]
    freed: list[FleetInstance] = []
    for instance in sorted(stopped, key=lambda i: (-i.gpus, i.id)):
        if sum(i.gpus for i in freed) >= gpus:
            break
        freed.append(instance)
    return freed


def _placed_on(plan: Plan) -> set[str]:
    """Hosts this plan already creates on: what its listing shows free there is spoken for."""
    return {
        a.offer.hostnode_id for a in plan.actions if a.kind is ActionKind.CREATE and a.offer and a.offer.hostnode_id
    }


def _rooms_made(plan: Plan) -> set[str]:
    """Hosts this plan already makes room on: their listing no longer says what is free there."""
    return {a.offer.hostnode_id for a in plan.actions if a.room and a.offer and a.offer.hostnode_id}


class _HostRoom:
    """What one plan leaves free on each host (vCPUs, RAM): the listing was read once, and two
    instances the plan puts on one host must both fit there."""

    def __init__(self, candidates: list[_Candidate], shape: InstanceShape, size: int) -> None:
        self._vcpus, self._ram = shape.vcpu_per_gpu * size, shape.ram_gb_per_gpu * size
        self._size = size
        self._left: dict[str, list[float]] = {}
        for c in candidates:
            if c.offer.hostnode_id and c.offer.host_vcpus_free is not None and c.offer.host_ram_gb_free is not None:
                self._left[c.offer.hostnode_id] = [c.offer.host_vcpus_free, c.offer.host_ram_gb_free]

    def usable(self, candidates: list[_Candidate]) -> list[_Candidate]:
        """The candidates with GPUs and host room left for one more instance, best first."""
        return [c for c in candidates if c.remaining >= self._size and self._fits(c)]

    def _fits(self, c: _Candidate) -> bool:
        left = self._left.get(c.offer.hostnode_id or "")
        return left is None or (left[0] >= self._vcpus and left[1] >= self._ram)

    def take(self, c: _Candidate) -> None:
        c.remaining -= self._size
        if c.offer.hostnode_id in self._left:
            self._left[c.offer.hostnode_id][0] -= self._vcpus
            self._left[c.offer.hostnode_id][1] -= self._ram


@dataclass(frozen=True)
class _Ceiling:
    """The wait-aware price ceiling: a unit price over `factor` x `reference` is bought only when
    the oldest waiting job would otherwise wait past the target (`urgent`)."""

    reference: float
    factor: float
    wait_s: float
    urgent: bool

    def too_dear(self, unit: float) -> bool:
        return unit > self.reference * self.factor

    def text(self, unit: float) -> str:
        wait = "unknown" if math.isinf(self.wait_s) else f"{self.wait_s:.0f}s"
        return (
            f"{unit / self.reference:.2f}x the best ${self.reference:.3f}/h per unit (ceiling {self.factor:g}x); "
            f"projected wait without it {wait}"
        )


def _free_place(instance: FleetInstance, touched: set[str]) -> bool:
    """Whether a waiting job can take the instance now or soon: running and not known busy, or
    starting; not acted on by this plan and not being replaced; of a size TensorDock has said."""
    if instance.id in touched or instance.replacement or not instance.shape_known:
        return False
    return instance.status is InstanceStatus.STARTING or (
        instance.status is InstanceStatus.RUNNING and instance.busy is not True
    )


def _by_class(jobs_by_width: Mapping[int, int], sizes: Iterable[int]) -> dict[int, int]:
    """Job counts by width, summed by the width class (instance size) each goes on."""
    by_class: dict[int, int] = {}
    for width, count in jobs_by_width.items():
        size = width_class(width, sizes)
        by_class[size] = by_class.get(size, 0) + count
    return by_class


def _beyond(places: Mapping[int, int], waiting: Mapping[int, int]) -> dict[int, int]:
    """Places by size beyond the waiting jobs of that class."""
    return {size: n - waiting.get(size, 0) for size, n in places.items() if n > waiting.get(size, 0)}


class CheapestThroughput(BasePolicy[CheapestThroughputOptions]):
    name = "cheapest_throughput"
    Options = CheapestThroughputOptions

    def decide(self, snapshot: Snapshot, plan: Plan) -> Plan:
        active = snapshot.serving_gpus + sum(a.gpus for a in plan.actions if a.kind.adds_capacity)
        active -= sum(a.gpus for a in plan.actions if a.kind in (ActionKind.STOP, ActionKind.DELETE))
        # an instance being replaced is on its way out; `consolidate` stops it once its successor runs
        active -= sum(i.gpus for i in snapshot.instances if i.replacement and i.status is InstanceStatus.RUNNING)
        if plan.desired_gpus is None:
            target, may_shrink = plan.floor_gpus, False  # demand unknown: only up to the floor (rule 4)
        else:
            target, may_shrink = max(plan.desired_gpus, plan.floor_gpus), True
        demand = snapshot.demand
        if (
            plan.desired_gpus is not None
            and demand is not None
            and demand.widths_known
            and self.options.shape_to_jobs
            and self._convention_holds(snapshot)
        ):
            return self._shape(snapshot, plan, target, active)
        if target > active:
            return self._grow(snapshot, plan, target - active)
        if may_shrink and self.options.place_widest_job and self._widest_job_unplaceable(snapshot, plan):
            size = self._size(snapshot)
            return self._grow(snapshot, plan, size).note(
                f"{self.name}: a waiting job needs {snapshot.demand.max_job_gpus if snapshot.demand else 1} GPUs "
                "on one instance and no idle one is that wide"
            )
        if target < active and may_shrink:
            return self._shrink(snapshot, plan, active - target, active, target)
        return plan

    # -- scale up ----------------------------------------------------------------------------

    def _size(self, snapshot: Snapshot) -> int:
        return width_class(snapshot.demand.max_job_gpus if snapshot.demand else 1, self.options.gpus_per_instance)

    def _widest_job_unplaceable(self, snapshot: Snapshot, plan: Plan) -> bool:
        """Enough GPUs in total, yet none of them together where the widest waiting job needs them.

        Counting GPUs alone would wait forever: eight idle one-GPU instances never run an
        eight-GPU job. An instance still starting, or added by this plan, counts as a place for it.
        """
        demand = snapshot.demand
        if demand is None or demand.queued_jobs == 0 or demand.max_job_gpus <= 1:
            return False
        wide = demand.max_job_gpus
        if any(a.gpus >= wide for a in plan.actions if a.kind.adds_capacity):
            return False
        if any(p.gpus >= wide for p in snapshot.pending_creates):
            return False
        touched = plan.touched()
        return not any(i.gpus >= wide and _free_place(i, touched) for i in snapshot.instances)

    def _allowed(self, offer: Offer, snapshot: Snapshot) -> bool:
        o = self.options
        if o.allowed_models and offer.gpu_model not in o.allowed_models:
            return False
        if offer.gpu_model in o.excluded_models or offer.key in snapshot.backed_off:
            return False
        if o.min_vram_gb and (offer.vram_gb or 0) < o.min_vram_gb:
            return False
        if offer.tier is not None and offer.tier < o.min_tier:
            return False
        return not o.allowed_locations or offer.location_id in o.allowed_locations

    def _ranked(self, snapshot: Snapshot, size: int) -> list[_Candidate]:
        ranked = [c for offer in snapshot.offers if (c := self._candidate(snapshot, offer, size)) is not None]
        ranked.sort(key=lambda c: (c.unit_price, c.price, c.offer.key))
        return ranked

    def _candidate(self, snapshot: Snapshot, offer: Offer, size: int) -> _Candidate | None:
        """The offer priced per unit of work for `size` GPUs; None if not allowed, too small or idle work."""
        if not self._allowed(offer, snapshot) or not offer.fits(snapshot.shape, size):
            return None
        price = offer.hourly_price(snapshot.shape, size)
        unit = snapshot.unit_price(price, offer.gpu_model, size)
        if math.isinf(unit):  # does no work
            return None
        if offer.location_id in self.options.preferred_locations:
            unit *= 1 - self.options.preferred_discount
        return _Candidate(offer, unit, price, offer.available_gpus)

    def _room_made(self, snapshot: Snapshot, plan: Plan, size: int, keep: set[int]) -> list[_RoomMade]:
        """Hosts where the fleet's own stopped instances of other sizes hold the GPUs a `size`-GPU
        instance would need: deleting them makes room there, cheapest per unit of work first.

        A stopped instance kept for a fast restart holds its GPUs, vCPUs and RAM; on a cheap host it
        sends a waiting job of another class to a dearer host, for as long as that job runs, while it
        waits for a restart that may never come. One of the job's own size is restarted instead, and
        none of a size in `keep` (with jobs waiting) is freed. One room per host a plan.
        """
        touched = plan.touched()
        held: dict[tuple[str, str], list[FleetInstance]] = {}
        for i in snapshot.instances:
            host = i.instance.hostnode_id
            if (
                i.status is InstanceStatus.STOPPED
                and not i.start_refused  # its GPUs were taken: deleting it frees nothing
                and i.gpus != size
                and i.gpus not in keep
                and i.id not in touched
                and i.replacement is None
                and not i.doubt
                and host is not None
                and i.gpu_model is not None
            ):
                held.setdefault((host, i.gpu_model), []).append(i)
        if not held:
            return []
        offers = {(o.hostnode_id, o.gpu_model): o for o in (*snapshot.full_offers, *snapshot.offers) if o.hostnode_id}
        found = []
        for (host, model), stopped in held.items():
            offer = offers.get((host, model))
            if offer is None or offer.available_gpus >= size or host in _placed_on(plan):
                continue  # unknown price, room already listed, or this plan places something there
            freed = _fewest_to_free(stopped, size - offer.available_gpus)
            candidate = self._candidate(snapshot, _with_freed(offer, freed, snapshot.shape), size)
            if candidate is not None:
                found.append(_RoomMade(candidate, tuple(freed)))
        found.sort(key=lambda r: (r.candidate.unit_price, r.candidate.price, r.candidate.offer.key))
        return found

    def _unit_price(self, snapshot: Snapshot, instance: FleetInstance, useful_gpus: int | None = None) -> float:
        """Price per unit of work; with `useful_gpus`, of the work it would do (a restart wider than
        the need pays for GPUs that sit idle)."""
        gpus = max(instance.gpus, 1) if useful_gpus is None else max(1, min(instance.gpus, useful_gpus))
        return snapshot.unit_price(instance.rate_hourly, instance.gpu_model, gpus)

    def _grow(self, snapshot: Snapshot, plan: Plan, deficit: int) -> Plan:
        size = self._size(snapshot)
        candidates = self._ranked(snapshot, size)
        restartable = self._stopped(snapshot, plan, lambda gpus: gpus >= size)
        actions: list[Action] = []
        room = _HostRoom(candidates, snapshot.shape, size)
        while deficit > 0:
            usable = room.usable(candidates)
            best = usable[0] if usable else None
            useful = max(deficit, size)
            restartable.sort(key=lambda i: (self._unit_price(snapshot, i, useful), i.id))
            if restartable and (
                best is None
                or self._unit_price(snapshot, restartable[0], useful)
                <= best.unit_price * (1 + self.options.restart_margin)
            ):
                instance = restartable.pop(0)
                actions.append(
                    start_action(
                        instance,
                        f"need {deficit} more GPUs; restarting is within "
                        f"{self.options.restart_margin:.0%} of the best offer",
                        self.name,
                    )
                )
                deficit -= instance.gpus
                continue
            if best is None:
                return plan.with_actions(*actions).short_of_offers(
                    f"{self.name}: no offer fits {size} GPUs; {deficit} short"
                )
            room.take(best)
            actions.append(self._create(best, usable, size, f"need {deficit} more GPUs"))
            deficit -= size
        return plan.with_actions(*actions)

    def _stopped(self, snapshot: Snapshot, plan: Plan, size_fits: Callable[[int], bool]) -> list[FleetInstance]:
        """Owned stopped instances this plan may restart: not refused a start, of a fitting size and model."""
        touched = plan.touched()
        return [
            i
            for i in snapshot.instances
            if i.status is InstanceStatus.STOPPED
            and not i.start_refused
            and i.id not in touched
            and size_fits(i.gpus)
            and (not self.options.allowed_models or i.gpu_model in self.options.allowed_models)
        ]

    def _create(self, best: _Candidate, usable: list[_Candidate], size: int, why: str, extra: str = "") -> Action:
        return Action(
            ActionKind.CREATE,
            f"{why}; {best.offer.gpu_model} at ${best.unit_price:.3f}/h per unit of work is the cheapest{extra}",
            self.name,
            offer=best.offer,
            alternatives=self._fallbacks(best, usable[1:]),
            gpus=size,
            gpu_model=best.offer.gpu_model,
            hourly_delta=best.price,
        )

    def _fallbacks(self, best: _Candidate, rest: list[_Candidate]) -> tuple[Offer, ...]:
        """Next-best offers on other hosts first: a host whose listing was stale fails for every model."""

        def place(offer: Offer) -> str:
            return offer.hostnode_id or offer.location_id

        elsewhere = [c.offer for c in rest if place(c.offer) != place(best.offer)]
        same_place = [c.offer for c in rest if place(c.offer) == place(best.offer)]
        return tuple((elsewhere + same_place)[: self.options.fallbacks])

    # -- shaped to the waiting jobs -------------------------------------------------------------

    def _shape(self, snapshot: Snapshot, plan: Plan, target: int, active: int) -> Plan:
        """One place per waiting job, of its width class: an idle or coming instance of that size, else a
        restart or a create of exactly that size; idle places beyond the waiting jobs are let go after
        `surplus_idle_s`. Under the width convention each instance runs one job of its class at a time,
        so a narrow job never pins a wide instance and no wide job waits behind narrow ones."""
        demand = snapshot.demand
        assert demand is not None and demand.queued_by_width is not None
        mix = {w: n for w, n in demand.queued_by_width.items() if n}
        counted = sum(mix.values())
        if demand.queued_jobs and not counted:  # jobs waiting, none of their widths told: count GPUs
            return self._grow(snapshot, plan, target - active) if target > active else plan
        scale = demand.queued_jobs / counted if counted else 1.0  # a sample of the head stands for the queue
        by_class = _by_class(mix, self.options.gpus_per_instance)
        waiting = {size: math.ceil(count * scale - 1e-9) for size, count in by_class.items()}
        places = self._places(snapshot, plan)
        # within the GPUs the chain wants (queue_target counts each job at its class's size): idle
        # instances of a class nobody waits for are on their way out and leave room
        room = target - active + sum(self._surplus_idle(snapshot, plan, waiting, places, 0.0).values())
        out = plan
        for size in sorted(waiting, reverse=True):  # widest first: the hardest to place
            short = min(waiting[size] - places.get(size, 0), math.ceil(room / size) if room > 0 else 0)
            if short > 0:
                before = len(out.actions)
                keep = {s for s, n in waiting.items() if n}
                out = self._grow_class(snapshot, out, size, short, waiting[size], keep=keep)
                room -= size * sum(1 for a in out.actions[before:] if a.kind.adds_capacity)
        grown = sum(a.gpus for a in out.actions if a.kind.adds_capacity) - sum(
            a.gpus for a in plan.actions if a.kind.adds_capacity
        )
        if plan.floor_gpus > active + grown:
            out = self._grow(snapshot, out, plan.floor_gpus - active - grown)
        return self._stop_surplus(snapshot, out, waiting, places, active + grown)

    def _convention_holds(self, snapshot: Snapshot) -> bool:
        """Whether the workers keep to the width convention, as far as the demand shows: then each
        busy instance runs one job, of its class. More running jobs than busy instances, or more busy
        instances of a size than running jobs of its class, means workers take anything; then shaping
        would buy wide instances that narrow jobs take, so the policy provisions a GPU count instead."""
        demand = snapshot.demand
        if demand is None or demand.running_by_width is None:
            return True
        running = _by_class(demand.running_by_width, self.options.gpus_per_instance)
        busy: dict[int, int] = {}
        for instance in snapshot.instances:
            if instance.busy is True and instance.status is InstanceStatus.RUNNING:
                busy[instance.gpus] = busy.get(instance.gpus, 0) + 1
        if sum(running.values()) > sum(busy.values()) and busy:
            return False
        return all(count <= running.get(size, 0) for size, count in busy.items())

    def _places(self, snapshot: Snapshot, plan: Plan) -> dict[int, int]:
        """Instances by size that can take a waiting job now or soon: idle (or not known busy) and
        running, starting, being created, or added by this plan."""
        places: dict[int, int] = {}

        def add(gpus: int) -> None:
            places[gpus] = places.get(gpus, 0) + 1

        touched = plan.touched()
        for instance in snapshot.instances:
            if _free_place(instance, touched):
                add(instance.gpus)
        for pending in snapshot.pending_creates:
            add(pending.gpus)
        for action in plan.actions:
            if action.kind.adds_capacity:
                add(action.gpus)
        return places

    def _reference_unit(self, snapshot: Snapshot, size: int, candidates: list[_Candidate]) -> float:
        """The best price per unit of work for `size` GPUs: the best listed offer, or one of ours of
        that size (the cheap offers we already rented leave the listing, not the market's floor)."""
        units = [c.unit_price for c in candidates[:1]]
        units += [
            self._unit_price(snapshot, i)
            for i in snapshot.instances
            if i.gpus == size and i.status in (InstanceStatus.RUNNING, InstanceStatus.STARTING)
        ]
        return min(units, default=math.inf)

    def _projected_wait(self, snapshot: Snapshot) -> float:
        """How long the oldest waiting job will have waited when a new instance takes it; unknown: inf."""
        demand = snapshot.demand
        if demand is None or demand.oldest_queued_at is None:
            return math.inf
        return max(0.0, snapshot.now - demand.oldest_queued_at) + self.options.boot_s

    def _grow_class(
        self, snapshot: Snapshot, plan: Plan, size: int, short: int, waiting: int, *, keep: set[int]
    ) -> Plan:
        o = self.options
        candidates = self._ranked(snapshot, size)
        wait = self._projected_wait(snapshot)
        reference = self._reference_unit(snapshot, size, candidates)
        ceiling = _Ceiling(reference, o.price_ceiling, wait, urgent=wait > o.target_wait_s)
        restartable = self._stopped(snapshot, plan, lambda gpus: gpus == size)
        restartable.sort(key=lambda i: (self._unit_price(snapshot, i), i.id))
        room = _HostRoom(candidates, snapshot.shape, size)
        actions: list[Action] = []
        note: str | None = None  # why the loop stopped short of `short` places
        short_of_offers = False
        why = f"{waiting} waiting job(s) of the {size}-GPU class, {short} without a place"
        made = self._room_made(snapshot, plan, size, keep)
        remade = _rooms_made(plan)  # hosts whose listing no longer says what is free there
        while short > 0:
            usable = [c for c in room.usable(candidates) if c.offer.hostnode_id not in remade]
            listed = usable[0] if usable else None
            freeing = made[0] if made and (listed is None or made[0].candidate.unit_price < listed.unit_price) else None
            best = freeing.candidate if freeing is not None else listed
            if restartable and (
                best is None or self._unit_price(snapshot, restartable[0]) <= best.unit_price * (1 + o.restart_margin)
            ):
                instance = restartable[0]
                unit = self._unit_price(snapshot, instance)
                if ceiling.too_dear(unit) and not ceiling.urgent:
                    note = f"{self.name}: not restarting {instance.name}: {ceiling.text(unit)}, under the target"
                    break
                restartable.pop(0)
                extra = f"; {ceiling.text(unit)}, over the target" if ceiling.too_dear(unit) else ""
                reason = f"{why}; restarting is within {o.restart_margin:.0%} of the best offer{extra}"
                actions.append(start_action(instance, reason, self.name))
                short -= 1
                continue
            if best is None:
                note = f"{self.name}: no offer fits {size} GPUs; {short} waiting job(s) without a place"
                short_of_offers = True
                break
            if ceiling.too_dear(best.unit_price) and not ceiling.urgent:
                note = (
                    f"{self.name}: not buying {best.offer.gpu_model} for the {size}-GPU class: "
                    f"{ceiling.text(best.unit_price)}, within target_wait_s {o.target_wait_s:g}s"
                )
                short_of_offers = True  # of affordable ones: a fresh listing may show one freed
                break
            extra = (
                f"; bought over the price ceiling: {ceiling.text(best.unit_price)}, over target_wait_s "
                f"{o.target_wait_s:g}s"
                if ceiling.too_dear(best.unit_price)
                else ""
            )
            made = [m for m in made if m.candidate.offer.hostnode_id != best.offer.hostnode_id]  # one room a host
            if freeing is not None:
                remade.add(best.offer.hostnode_id or "")
                tag = f"{best.offer.key}#{len(plan.actions) + len(actions)}"
                actions += self._make_room(freeing, listed, size, tag)
                names = ", ".join(i.name for i in freeing.freed)
                create = self._create(best, [best, *usable], size, why, f"{extra}; in the room {names} held")
                actions.append(replace(create, room=tag))
            else:
                room.take(best)
                actions.append(self._create(best, usable, size, why, extra))
            short -= 1
        out = plan.with_actions(*actions)
        if note is None:
            return out
        return out.short_of_offers(note) if short_of_offers else out.note(note)

    def _make_room(self, freeing: _RoomMade, listed: _Candidate | None, size: int, tag: str) -> list[Action]:
        offer = freeing.candidate.offer
        than = f"the best listed is ${listed.unit_price:.3f}" if listed is not None else "nothing listed fits"
        reason = (
            f"making room on host {offer.hostnode_id} for a {size}-GPU {offer.gpu_model} instance at "
            f"${freeing.candidate.unit_price:.3f}/h per unit of work ({than}); stopped, it holds the GPUs there"
        )
        return [replace(delete_action(instance, reason, self.name), room=tag) for instance in freeing.freed]

    def _idle(self, snapshot: Snapshot, plan: Plan, extra: dict[int, int], idle_s: float) -> list[FleetInstance]:
        """Running instances known idle past `idle_s`, of a size with places to spare; dearest first."""
        touched = plan.touched()
        return sorted(
            (
                i
                for i in snapshot.instances
                if i.status is InstanceStatus.RUNNING
                and i.busy is False
                and i.id not in touched
                and i.replacement is None
                and extra.get(i.gpus, 0) > 0
                and i.idle_since is not None
                and snapshot.now - i.idle_since >= idle_s
            ),
            key=lambda i: (-self._unit_price(snapshot, i), i.id),
        )

    def _surplus_idle(
        self, snapshot: Snapshot, plan: Plan, waiting: dict[int, int], places: dict[int, int], idle_s: float
    ) -> dict[int, int]:
        """GPUs by size of idle instances beyond the waiting jobs of their class."""
        extra = _beyond(places, waiting)
        gpus: dict[int, int] = {}
        for instance in self._idle(snapshot, plan, extra, idle_s):
            if extra[instance.gpus] > 0:
                extra[instance.gpus] -= 1
                gpus[instance.gpus] = gpus.get(instance.gpus, 0) + instance.gpus
        return gpus

    def _stop_surplus(
        self, snapshot: Snapshot, plan: Plan, waiting: dict[int, int], places: dict[int, int], active: int
    ) -> Plan:
        """Idle instances of a size with more places than waiting jobs, idle past `surplus_idle_s`,
        dearest per unit of work first; never below the floor, never a busy or retiring one."""
        o = self.options
        room = (
            active
            - plan.floor_gpus
            - sum(a.gpus for a in plan.actions if a.kind in (ActionKind.STOP, ActionKind.DELETE))
        )
        extra = _beyond(places, waiting)
        idle = self._idle(snapshot, plan, extra, o.surplus_idle_s)
        actions = []
        for instance in idle:
            if extra[instance.gpus] <= 0 or instance.gpus > room:
                continue
            extra[instance.gpus] -= 1
            room -= instance.gpus
            idle_min = (snapshot.now - (instance.idle_since or snapshot.now)) / 60
            actions.append(
                self._remove(
                    snapshot, instance, f"idle {idle_min:.0f} min and no waiting job of its {instance.gpus}-GPU class"
                )
            )
        return plan.with_actions(*actions)

    def _remove(self, snapshot: Snapshot, instance: FleetInstance, reason: str) -> Action:
        """Delete surplus, or stop it where the GPUs would be hard to get back: `auto` deletes only
        when a listed offer has the same number of GPUs at no worse a price per unit of work (within
        `restart_margin`); a wide or cheap placement the listing cannot match is kept, stopped."""
        how = self.options.scale_down
        if how == "auto":
            own = self._unit_price(snapshot, instance)
            listed = any(
                c.remaining >= instance.gpus and c.unit_price <= own * (1 + self.options.restart_margin)
                for c in self._ranked(snapshot, instance.gpus)
            )
            how = "delete" if listed else "stop"
            reason += "; a listed offer gives it back as cheaply" if listed else "; no listed offer gives it back"
        return (delete_action if how == "delete" else stop_action)(instance, reason, self.name)

    # -- scale down --------------------------------------------------------------------------

    def _shrink(self, snapshot: Snapshot, plan: Plan, surplus: int, active: int, target: int) -> Plan:
        touched = plan.touched()
        running = [
            i
            for i in snapshot.instances
            if i.status is InstanceStatus.RUNNING and i.id not in touched and i.busy is not True
        ]
        running = [i for i in running if i.replacement is None]
        demand = snapshot.demand
        if demand is not None and demand.queued_jobs and demand.max_job_gpus > 1:  # keep a place for it
            running = [i for i in running if i.gpus < demand.max_job_gpus]
        running.sort(key=lambda i: (i.busy is not False, -self._unit_price(snapshot, i)))
        actions = []
        for instance in running:
            if instance.gpus > surplus:
                continue
            why = "idle" if instance.busy is False else "dearest per unit"
            actions.append(self._remove(snapshot, instance, f"surplus: desired {target} GPUs, have {active}; {why}"))
            surplus -= instance.gpus
            if surplus <= 0:
                break
        return plan.with_actions(*actions)
