"""The frozen input of one cycle: everything a decision needs, gathered once, read by pure code."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from autoscaler.signals import Demand
from autoscaler.tensordock import Hostnode, Instance, InstanceStatus, Location, Pricing
from autoscaler.throughput import DEFAULT_THROUGHPUT, vram_gb

RUNNING_LIKE = (InstanceStatus.STARTING, InstanceStatus.RUNNING)


@dataclass(frozen=True)
class InstanceShape:
    """What one fleet instance looks like per GPU; the price of an offer depends on it."""

    vcpu_per_gpu: int = 8
    ram_gb_per_gpu: int = 32
    storage_gb: int = 100

    def hourly_price(self, pricing: Pricing, gpu_price_per_hr: float, gpus: int) -> float:
        return pricing.hourly_price(
            gpu_price_per_hr, gpus, self.vcpu_per_gpu * gpus, self.ram_gb_per_gpu * gpus, self.storage_gb
        )


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
        if self.max_vcpus_per_gpu is not None and shape.vcpu_per_gpu > self.max_vcpus_per_gpu:
            return False
        if self.host_vcpus_free is not None and shape.vcpu_per_gpu * gpus > self.host_vcpus_free:
            return False
        if self.host_ram_gb_free is not None and shape.ram_gb_per_gpu * gpus > self.host_ram_gb_free:
            return False
        return self.max_ram_per_gpu is None or shape.ram_gb_per_gpu <= self.max_ram_per_gpu


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
            offers.append(
                Offer(
                    location_id=host.location_id,
                    hostnode_id=host.id,
                    gpu_model=gpu.gpu_model,
                    available_gpus=gpu.available_count,
                    gpu_price_per_hr=gpu.price_per_hr,
                    pricing=host.pricing,
                    tier=host.tier if host.tier is not None else tiers.get(host.location_id),
                    max_vcpus_per_gpu=host.max_vcpus_per_gpu,
                    max_ram_per_gpu=host.max_ram_per_gpu,
                    host_vcpus_free=host.vcpu_count,
                    host_ram_gb_free=host.ram_gb,
                )
            )
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
                )
            )
    return tuple(offers)


def billed_rate(status: InstanceStatus, rate_hourly: float, storage_rate_hourly: float) -> float:
    """What an instance costs right now: the full rate while up, its storage while stopped."""
    if status in (InstanceStatus.STARTING, InstanceStatus.RUNNING, InstanceStatus.STOPPING):
        return rate_hourly
    if status.is_stopped:
        return storage_rate_hourly
    return 0.0


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
    retiring_for: str | None = None  # consolidation: the name of the instance taking over
    start_refused: bool = False  # a start failed for capacity: as good as StoppedDisassociated

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
    def rate_hourly(self) -> float:
        return self.instance.rate_hourly or 0.0

    @property
    def current_rate_hourly(self) -> float:
        return billed_rate(self.status, self.rate_hourly, self.storage_rate_hourly)


@dataclass(frozen=True)
class Spend:
    """USD spent by the managed fleet, from the ledger (which survives restarts)."""

    today_usd: float = 0.0
    month_usd: float = 0.0
    total_usd: float = 0.0


@dataclass(frozen=True)
class PendingCreate:
    """A create journaled but not yet seen in the listing: counts against bounds (rule 2, 3)."""

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
    shape: InstanceShape = InstanceShape()
    throughput: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_THROUGHPUT))
    backed_off: frozenset[str] = frozenset()
    pending_creates: tuple[PendingCreate, ...] = ()
    demand_error: str | None = None
    fleet_idle_since: float | None = None  # when queued + running last became zero
    desired_history: tuple[tuple[float, int], ...] = ()  # (since, desired GPUs): each in force until the next

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

    @cached_property
    def active_gpus(self) -> int:
        """GPUs running or on their way, including creates not yet listed."""
        return sum(i.gpus for i in self.instances if i.status in RUNNING_LIKE) + sum(
            p.gpus for p in self.pending_creates
        )

    @cached_property
    def active_instances(self) -> int:
        return sum(1 for i in self.instances if i.status in RUNNING_LIKE) + len(self.pending_creates)

    @cached_property
    def hourly_cost(self) -> float:
        """Managed fleet $/h now, pending creates included."""
        return sum(i.current_rate_hourly for i in self.instances) + sum(p.hourly_price for p in self.pending_creates)
