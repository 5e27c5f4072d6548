"""Which GPUs fill the need: offers and stopped instances ranked by price per unit of work.

Price per unit of work is `$/h / (throughput(model) * gpus)`. Scale-up restarts an owned
stopped instance when it is within `restart_margin` of the best offer (it boots faster and
keeps its disk), else creates on the best offer, with the next best as fallbacks for when the
listed capacity turns out to be gone. Scale-down stops idle instances first, then the
dearest per unit of work; a busy instance is never chosen, and one being replaced is left to
`consolidate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import Field, model_validator

from autoscaler.plan import Action, ActionKind, Plan, start_action, stop_action
from autoscaler.policy import BasePolicy, PolicyOptions
from autoscaler.snapshot import FleetInstance, Offer, Snapshot
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
    gpus_per_instance: list[int] = Field(default=[1], description="allowed sizes; the smallest that fits is used")
    fallbacks: int = Field(default=3, ge=0, description="next-best offers to try when one has no capacity")

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


class CheapestThroughput(BasePolicy[CheapestThroughputOptions]):
    name = "cheapest_throughput"
    Options = CheapestThroughputOptions

    def decide(self, snapshot: Snapshot, plan: Plan) -> Plan:
        active = snapshot.active_gpus + sum(a.gpus for a in plan.actions if a.kind.adds_capacity)
        active -= sum(a.gpus for a in plan.actions if a.kind in (ActionKind.STOP, ActionKind.DELETE))
        # an instance being replaced is on its way out; `consolidate` stops it once its successor runs
        active -= sum(i.gpus for i in snapshot.instances if i.retiring_for and i.status is InstanceStatus.RUNNING)
        if plan.desired_gpus is None:
            target, may_shrink = plan.floor_gpus, False  # demand unknown: only up to the floor (rule 4)
        else:
            target, may_shrink = max(plan.desired_gpus, plan.floor_gpus), True
        if target > active:
            return self._grow(snapshot, plan, target - active)
        if target < active and may_shrink:
            return self._shrink(snapshot, plan, active - target, active, target)
        return plan

    # -- scale up ----------------------------------------------------------------------------

    def _size(self, snapshot: Snapshot) -> int:
        need = snapshot.demand.max_job_gpus if snapshot.demand else 1
        fitting = [n for n in sorted(self.options.gpus_per_instance) if n >= need]
        return fitting[0] if fitting else max(self.options.gpus_per_instance)

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
        ranked = []
        for offer in snapshot.offers:
            if not self._allowed(offer, snapshot) or not offer.fits(snapshot.shape, size):
                continue
            throughput = snapshot.throughput_of(offer.gpu_model) * size
            if throughput <= 0:
                continue
            price = offer.hourly_price(snapshot.shape, size)
            unit = price / throughput
            if offer.location_id in self.options.preferred_locations:
                unit *= 1 - self.options.preferred_discount
            ranked.append(_Candidate(offer, unit, price, offer.available_gpus))
        ranked.sort(key=lambda c: (c.unit_price, c.price, c.offer.key))
        return ranked

    def _unit_price(self, snapshot: Snapshot, instance: FleetInstance) -> float:
        throughput = snapshot.throughput_of(instance.gpu_model) * max(instance.gpus, 1)
        return instance.rate_hourly / throughput if throughput > 0 else math.inf

    def _grow(self, snapshot: Snapshot, plan: Plan, deficit: int) -> Plan:
        size = self._size(snapshot)
        candidates = self._ranked(snapshot, size)
        touched = plan.touched()
        restartable = sorted(
            (
                i
                for i in snapshot.instances
                if i.status is InstanceStatus.STOPPED
                and not i.start_refused
                and i.id not in touched
                and i.gpus >= 1
                and (not self.options.allowed_models or i.gpu_model in self.options.allowed_models)
            ),
            key=lambda i: self._unit_price(snapshot, i),
        )
        actions: list[Action] = []
        shape = snapshot.shape
        host_left: dict[str, list[float]] = {}  # what this plan leaves free on each host: [vCPUs, RAM]
        for c in candidates:
            if c.offer.hostnode_id and c.offer.host_vcpus_free is not None and c.offer.host_ram_gb_free is not None:
                host_left[c.offer.hostnode_id] = [c.offer.host_vcpus_free, c.offer.host_ram_gb_free]

        def room(c: _Candidate) -> bool:
            left = host_left.get(c.offer.hostnode_id or "")
            return left is None or (left[0] >= shape.vcpu_per_gpu * size and left[1] >= shape.ram_gb_per_gpu * size)

        while deficit > 0:
            usable = [c for c in candidates if c.remaining >= size and room(c)]
            best = usable[0] if usable else None
            if restartable and (
                best is None
                or self._unit_price(snapshot, restartable[0]) <= best.unit_price * (1 + self.options.restart_margin)
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
                return plan.with_actions(*actions).note(f"{self.name}: no offer fits {size} GPUs; {deficit} short")
            best.remaining -= size
            if best.offer.hostnode_id in host_left:
                host_left[best.offer.hostnode_id][0] -= shape.vcpu_per_gpu * size
                host_left[best.offer.hostnode_id][1] -= shape.ram_gb_per_gpu * size
            fallbacks = self._fallbacks(best, usable[1:])
            actions.append(
                Action(
                    ActionKind.CREATE,
                    f"need {deficit} more GPUs; {best.offer.gpu_model} at ${best.unit_price:.3f}/h per unit of work "
                    "is the cheapest",
                    self.name,
                    offer=best.offer,
                    alternatives=fallbacks,
                    gpus=size,
                    gpu_model=best.offer.gpu_model,
                    hourly_delta=best.price,
                )
            )
            deficit -= size
        return plan.with_actions(*actions)

    def _fallbacks(self, best: _Candidate, rest: list[_Candidate]) -> tuple[Offer, ...]:
        """Next-best offers on other hosts first: a host whose listing was stale fails for every model."""

        def place(offer: Offer) -> str:
            return offer.hostnode_id or offer.location_id

        elsewhere = [c.offer for c in rest if place(c.offer) != place(best.offer)]
        same_place = [c.offer for c in rest if place(c.offer) == place(best.offer)]
        return tuple((elsewhere + same_place)[: self.options.fallbacks])

    # -- scale down --------------------------------------------------------------------------

    def _shrink(self, snapshot: Snapshot, plan: Plan, surplus: int, active: int, target: int) -> Plan:
        touched = plan.touched()
        running = [
            i
            for i in snapshot.instances
            if i.status is InstanceStatus.RUNNING and i.id not in touched and i.busy is not True
        ]
        running = [i for i in running if i.retiring_for is None]
        running.sort(key=lambda i: (i.busy is not False, -self._unit_price(snapshot, i)))
        actions = []
        for instance in running:
            if instance.gpus > surplus:
                continue
            why = "idle" if instance.busy is False else "dearest per unit"
            actions.append(stop_action(instance, f"surplus: desired {target} GPUs, have {active}; {why}", self.name))
            surplus -= instance.gpus
            if surplus <= 0:
                break
        return plan.with_actions(*actions)
