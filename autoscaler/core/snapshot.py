"""The frozen input of one cycle: everything a decision needs, gathered once, read by pure code."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from autoscaler.core.money import BILLED_IN_FULL, COUNTED_AS_ACTIVE, RUNNING_LIKE, Spend, billed_rate
from autoscaler.core.replacement import Replacement
from autoscaler.core.shape import InstanceShape, OwnedShape
from autoscaler.core.throughput import DEFAULT_THROUGHPUT, unit_price, vram_gb
from autoscaler.signals import Demand
from autoscaler.tensordock import Hostnode, HostnodeGpu, Instance, InstanceStatus, Location, Pricing

if TYPE_CHECKING:
    from autoscaler.core.plan import Action

__all__ = [  # the shape and money values are re-exported: the snapshot is what policies read
    "BILLED_IN_FULL",
    "COUNTED_AS_ACTIVE",
    "RUNNING_LIKE",
    "FleetInstance",
    "GuardMemory",
    "InstanceShape",
    "Offer",
    "OwnedShape",
    "PendingCreate",
    "Snapshot",
    "Spend",
    "billed_rate",
    "full_offers_from",
    "offers_from",
]


@dataclass(frozen=True)
class Offer:
    """A place a GPU model can be had now, and at what price; `key` names it for back-offs."""

    location_id: str
    gpu_model: str
    available_gpus: int
    gpu_price_per_hr: float
    pricing: Pricing
    hostnode_id: str | None = None
    tier: int | None = None
    max_vcpus_per_gpu: int | None = None
    max_ram_per_gpu: float | None = None
    host_vcpus_free: int | None = None  # shared by every GPU model on the host
    host_ram_gb_free: float | None = None
    max_vcpus: int | None = None  # a location offer's limits for one instance
    max_ram_gb: float | None = None
    max_storage_gb: float | None = None
    available_ports: tuple[int, ...] = ()  # a host's external ports free for port forwards
    dedicated_ip: bool = False  # a public IP of its own can be had here

    @property
    def key(self) -> str:
        return f"{self.location_id}/{self.hostnode_id or '*'}/{self.gpu_model}"

    @property
    def vram_gb(self) -> int | None:
        return vram_gb(self.gpu_model)

    def hourly_price(self, shape: InstanceShape, gpus: int) -> float:
        return shape.hourly_price(self.pricing, self.gpu_price_per_hr, gpus)

    def fits(self, shape: InstanceShape, gpus: int) -> bool:
        if self.available_gpus < gpus:
            return False
        if self.max_vcpus is not None and shape.vcpu_per_gpu * gpus > self.max_vcpus:
            return False
        if self.max_ram_gb is not None and shape.ram_gb_per_gpu * gpus > self.max_ram_gb:
            return False
        if self.max_storage_gb is not None and shape.storage_gb > self.max_storage_gb:
            return False
        if self.max_vcpus_per_gpu is not None and shape.vcpu_per_gpu > self.max_vcpus_per_gpu:
            return False
        if self.host_vcpus_free is not None and shape.vcpu_per_gpu * gpus > self.host_vcpus_free:
            return False
        if self.host_ram_gb_free is not None and shape.ram_gb_per_gpu * gpus > self.host_ram_gb_free:
            return False
        return self.max_ram_per_gpu is None or shape.ram_gb_per_gpu <= self.max_ram_per_gpu


def _host_offer(host: Hostnode, location_id: str, gpu: HostnodeGpu, tiers: Mapping[str, int | None]) -> Offer:
    return Offer(
        location_id=location_id,
        hostnode_id=host.id,
        gpu_model=gpu.gpu_model,
        available_gpus=gpu.available_count,
        gpu_price_per_hr=gpu.price_per_hr,
        pricing=host.pricing,
        tier=host.tier if host.tier is not None else tiers.get(location_id),
        max_vcpus_per_gpu=host.max_vcpus_per_gpu,
        max_ram_per_gpu=host.max_ram_per_gpu,
        host_vcpus_free=host.vcpu_count,
        host_ram_gb_free=host.ram_gb,
        available_ports=host.available_ports,
        dedicated_ip=host.has_public_ip_available,
    )


def full_offers_from(locations: Iterable[Location], hostnodes: Iterable[Hostnode]) -> tuple[Offer, ...]:
    """Host offers with none of the model free: the price a host asks, for a policy that would free
    GPUs the fleet itself holds there (none of these can be bought as they stand)."""
    tiers = {loc.id: loc.tier for loc in locations}
    return tuple(
        _host_offer(host, host.location_id, gpu, tiers)
        for host in hostnodes
        if host.location_id is not None
        for gpu in host.gpus
        if gpu.available_count <= 0
    )


def offers_from(locations: Iterable[Location], hostnodes: Iterable[Hostnode]) -> tuple[Offer, ...]:
    """Per-host offers where hostnodes are listed (exact price, exact place), else per location."""
    tiers = {loc.id: loc.tier for loc in locations}
    offers: list[Offer] = []
    covered: set[tuple[str, str]] = set()
    for host in hostnodes:
        for gpu in host.gpus:
            if gpu.available_count <= 0 or host.location_id is None:
                continue
            covered.add((host.location_id, gpu.gpu_model))
            offers.append(_host_offer(host, host.location_id, gpu, tiers))
    for loc in locations:
        for listed in loc.gpus:
            if listed.max_count <= 0 or (loc.id, listed.gpu_model) in covered:
                continue
            offers.append(
                Offer(
                    location_id=loc.id,
                    gpu_model=listed.gpu_model,
                    available_gpus=listed.max_count,
                    gpu_price_per_hr=listed.price_per_hr,
                    pricing=listed.pricing,
                    tier=loc.tier,
                    max_vcpus=listed.max_vcpus,
                    max_ram_gb=listed.max_ram_gb,
                    max_storage_gb=listed.max_storage_gb,
                    dedicated_ip=listed.dedicated_ip_available,
                )
            )
    return tuple(offers)


@dataclass(frozen=True)
class FleetInstance:
    """An instance this fleet owns, with what the store remembers about it."""

    instance: Instance
    created_at: float
    offer_key: str | None = None
    busy: bool | None = None  # None: the signal cannot tell
    idle_since: float | None = None
    status_since: float | None = None  # when the store first saw the current status
    storage_rate_hourly: float = 0.0
    replacement: Replacement | None = None  # the consolidation retiring it, as this cycle sees it
    start_refused: bool = False  # a start failed for capacity: as good as StoppedDisassociated
    doubt: str | None = None  # why the daemon cannot know it (status or shape): counted in full, never touched
    # False while TensorDock has not said its GPUs: 8 against the bounds, but 1 of capacity, so a
    # guess never makes the known workers look surplus (rule 11 counts doubt against the limits only)
    shape_known: bool = True

    @property
    def id(self) -> str:
        return self.instance.id

    @property
    def name(self) -> str:
        return self.instance.name or self.instance.id

    @property
    def status(self) -> InstanceStatus:
        return self.instance.status

    @property
    def gpus(self) -> int:
        return self.instance.gpu_count

    @property
    def gpu_model(self) -> str | None:
        return self.instance.gpu_model

    @property
    def serving_gpus(self) -> int:
        """What it counts for as capacity: its GPUs, or the least it can hold while they are unknown."""
        return self.gpus if self.shape_known else 1

    @property
    def rate_hourly(self) -> float:
        return self.instance.rate_hourly or 0.0

    @property
    def current_rate_hourly(self) -> float:
        return billed_rate(self.status, self.rate_hourly, self.storage_rate_hourly)


@dataclass(frozen=True)
class GuardMemory:
    """What guards need from earlier cycles, read from the store before the snapshot is frozen."""

    last_scale_up_at: float | None = None
    last_scale_down_at: float | None = None
    history_since: float | None = None  # the oldest desired-GPU sample we hold


@dataclass(frozen=True)
class PendingCreate:
    """Capacity the listing cannot show as ours yet counts against bounds (rules 2, 3, 11): a create
    journaled but not listed, or an orphan (then `name` is the instance's)."""

    name: str
    gpus: int
    hourly_price: float
    since: float


@dataclass(frozen=True)
class Snapshot:
    """Built once per cycle; nothing after it does I/O until the actuator."""

    now: float
    demand: Demand | None  # None: unknown or stale; the cycle holds
    instances: tuple[FleetInstance, ...]
    unowned: tuple[Instance, ...]
    offers: tuple[Offer, ...]
    spend: Spend
    shape: InstanceShape = field(default_factory=InstanceShape)
    throughput: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_THROUGHPUT))
    backed_off: frozenset[str] = frozenset()
    pending_creates: tuple[PendingCreate, ...] = ()
    demand_error: str | None = None
    fleet_idle_since: float | None = None  # when queued + running last became zero
    desired_history: tuple[tuple[float, int], ...] = ()  # (since, desired GPUs): each in force until the next
    # hosts listed with none of a model free (`full_offers_from`): where the fleet's own stopped
    # instances hold the GPUs, freeing them makes room there at this price
    full_offers: tuple[Offer, ...] = ()
    orphans: tuple[PendingCreate, ...] = ()  # prefix-named, unknown to the store: counted, never touched
    memory: GuardMemory = field(default_factory=GuardMemory)
    max_hourly_spend: float | None = None  # the guards' cap, USD/h: policies plan under it (budget)
    # how many times its offer's listed price the worst-mispriced instance of ours is billed (>= 1)
    listed_price_factor: float = 1.0

    def instance(self, instance_id: str) -> FleetInstance | None:
        return self._by_id.get(instance_id)

    @cached_property
    def _by_id(self) -> dict[str, FleetInstance]:
        return {i.id: i for i in self.instances}

    def throughput_of(self, gpu_model: str | None) -> float:
        """Unknown models count as the reference's 1.0 only if configured; else a cautious 0.5."""
        if gpu_model is None:
            return 0.0
        return float(self.throughput.get(gpu_model, 0.5))

    def unit_price(self, hourly_usd: float, gpu_model: str | None, gpus: int) -> float:
        """Price per unit of work of `gpus` GPUs of a model at `hourly_usd`, by this cycle's throughput table."""
        return unit_price(hourly_usd, self.throughput_of(gpu_model), gpus)

    def priced(self, action: Action) -> float:
        """An action's $/h as the spending limits count it: a create's listed price times
        `listed_price_factor`, so offers listed far below what our instances are billed cannot buy
        past max_hourly_spend or a budget over and over (the bill is learned only after a create)."""
        return action.hourly_delta * self.listed_price_factor if action.offer is not None else action.hourly_delta

    @cached_property
    def active_gpus(self) -> int:
        """GPUs running or on their way, in doubt, or on orphans, including creates not yet listed:
        what every bound counts (rule 11): one of unknown shape as the most it can hold."""
        own = sum(i.gpus for i in self.instances if i.status in COUNTED_AS_ACTIVE)
        return own + sum(p.gpus for p in self.pending_creates) + sum(o.gpus for o in self.orphans)

    @cached_property
    def serving_gpus(self) -> int:
        """The fleet's own GPUs, running, on their way or in doubt, and its creates not yet listed:
        the capacity policies weigh against demand. An orphan counts against the bounds but serves
        nothing of ours: counted as capacity, a stranger's prefix-named instance would make our
        own workers look surplus. One whose GPUs TensorDock has not said counts as 1, for the same
        reason."""
        return sum(i.serving_gpus for i in self.instances if i.status in COUNTED_AS_ACTIVE) + sum(
            p.gpus for p in self.pending_creates
        )

    @cached_property
    def active_instances(self) -> int:
        return (
            sum(1 for i in self.instances if i.status in COUNTED_AS_ACTIVE)
            + len(self.pending_creates)
            + len(self.orphans)
        )

    @cached_property
    def hourly_cost(self) -> float:
        """Managed fleet $/h now, pending creates and orphans included (rule 11: doubt counts)."""
        return (
            sum(i.current_rate_hourly for i in self.instances)
            + sum(p.hourly_price for p in self.pending_creates)
            + sum(o.hourly_price for o in self.orphans)
        )
