"""The fake TensorDock's world: hosts, instances, their lifecycle, capacity and the bill.

Time comes from the injected clock and transitions are settled lazily when anything looks, so
the same model serves a live demo on the wall clock and a simulator in virtual time.
"""

from __future__ import annotations

import math
import random
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from autoscaler.common.clock import Clock

from .catalog import Catalog, CatalogHostnode, CatalogLocation

Phase = Literal["starting", "running", "stopping", "stopped"]
ErrorKind = Literal["validation", "domain", "capacity", "not_found"]

RAM_SIZES_GB = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
_BILLED_PHASES = ("starting", "running", "stopping")


class FakeApiError(Exception):
    """A refusal as TensorDock words it; the dialect decides how it travels (status, body shape)."""

    def __init__(self, kind: ErrorKind, message: str, path: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.path = tuple(path)


class Timings(BaseModel):
    """How long TensorDock takes, in seconds (defaults from the field notes)."""

    model_config = ConfigDict(extra="forbid")
    create_s: float = Field(default=30.0, ge=0, description="create until running")
    ip_s: float = Field(default=15.0, ge=0, description="create until the IP is listed")
    start_s: float = Field(default=20.0, ge=0)
    stop_s: float = Field(default=10.0, ge=0)


class Faults(BaseModel):
    """What goes wrong, per run; every probability is per request unless it says otherwise."""

    model_config = ConfigDict(extra="forbid")
    latency_s: float = Field(default=0.0, ge=0, description="added to every reply")
    timeout_rate: float = Field(default=0.0, ge=0, le=1, description="request dropped unprocessed")
    server_error_rate: float = Field(default=0.0, ge=0, le=1, description="5xx, unprocessed")
    rate_limit_burst_rate: float = Field(default=0.0, ge=0, le=1, description="a burst of 429s begins")
    rate_limit_burst_length: int = Field(default=5, ge=1)
    lost_reply_rate: float = Field(default=0.0, ge=0, le=1, description="a mutation happens, its reply is lost")
    lose_next_replies: int = Field(default=0, ge=0, description="the next N mutations happen, their replies are lost")
    stale_create_rate: float = Field(default=0.0, ge=0, le=1, description="a listed offer fails to create")
    stale_locations: list[str] = Field(default_factory=list, description="location ids whose offers all fail")
    reclaim_per_hour: float = Field(default=0.0, ge=0, description="chance per hour a stopped tier-0 VM loses its GPUs")
    reclaim_other_tiers_factor: float = Field(default=0.1, ge=0, le=1)
    hold_dropped_s: float = Field(default=0.0, ge=0, description="socket server waits this long before dropping")
    locations_empty: bool = Field(default=False, description="/locations lists nothing while /hostnodes has stock")
    discovery_junk: bool = Field(
        default=False, description="discovery lists gain entries with unknown fields, null prices and wrong types"
    )
    retry_after_header: bool = Field(default=True, description="False: 429s come without Retry-After")
    html_errors: bool = Field(default=False, description="429s come with an HTML body, as 5xx always do")
    drop_port_forwards_at: list[str] = Field(
        default_factory=list, description="location ids where port_forwards are silently ignored"
    )
    varied_capacity_wording: bool = Field(
        default=False, description="capacity refusals worded in every way the field notes list"
    )


CAPACITY_WORDINGS = (
    "No available nodes found",
    "Hostnode unavailable",
    "No available public IP on this hostnode",
    "Nodes unavailable for this configuration",
    "GPU not available",
    "This GPU is sold out",
)
PORT_POOL = tuple(range(20000, 20048))  # external ports a host lends out, as `available_ports` lists them


class Rules(BaseModel):
    """What TensorDock's documentation implies beyond the OpenAPI file; all on in `documented`."""

    model_config = ConfigDict(extra="forbid")
    host_ports: bool = Field(default=False, description="hostnode creates take external ports from available_ports")
    modify_steps: bool = Field(
        default=False, description="modify: vCPUs by 2, RAM by 8 GB, storage by 50 GB from 100; also when disassociated"
    )
    modify_gpus_v0name: bool = Field(default=False, description="modify takes GPUs only as {gpuV0Name, count}")
    refuse_write_files_encoding: bool = Field(default=False, description="cloud-init write_files with encoding: 400")

    @classmethod
    def documented(cls) -> Rules:
        return cls(host_ports=True, modify_steps=True, modify_gpus_v0name=True, refuse_write_files_encoding=True)


@dataclass
class FakeInstance:
    id: str
    name: str
    location: CatalogLocation
    host: CatalogHostnode
    image: str
    gpu_model: str | None
    gpu_count: int
    vcpu_count: int
    ram_gb: int
    storage_gb: int
    use_dedicated_ip: bool
    port_forwards: list[tuple[int, int]]
    created_at: float
    phase: Phase
    settles_at: float | None
    rate_hourly: float
    storage_rate_hourly: float
    billed_until: float
    billed_usd: float = 0.0
    disassociated: bool = False

    def ip_address(self, now: float, ip_delay_s: float) -> str | None:
        return self.host.public_ip if now >= self.created_at + ip_delay_s else None


@dataclass(frozen=True)
class HostFree:
    gpus: dict[str, int]
    vcpu: int
    ram: int
    storage: int


@dataclass
class _ForeignRental:
    """GPUs another renter took from under a stopped instance; they leave after a while."""

    host_id: str
    gpu_model: str
    count: int
    until: float


@dataclass
class Bill:
    total_usd: float
    balance_usd: float
    per_instance_usd: dict[str, float] = field(default_factory=dict)


class FakeTensorDock:
    """All state behind the fake API. Thread-safe: the threaded server calls it concurrently."""

    def __init__(
        self,
        catalog: Catalog,
        clock: Clock,
        *,
        timings: Timings | None = None,
        faults: Faults | None = None,
        seed: int = 0,
        balance_usd: float = 10_000.0,
        bill_stopped_storage: bool = True,
        foreign_rental_s: float = 6 * 3600.0,
        rules: Rules | None = None,
    ) -> None:
        self.catalog = catalog
        self.rules = rules or Rules()
        self.clock = clock
        self.timings = timings or Timings()
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.balance_usd = balance_usd
        self.bill_stopped_storage = bill_stopped_storage
        self.foreign_rental_s = foreign_rental_s
        self.lock = threading.RLock()
        self._instances: dict[str, FakeInstance] = {}
        self._by_host: dict[str, set[str]] = {h.id: set() for _, h in self._hosts()}
        self._deleted_billed_usd = 0.0
        self._foreign: list[_ForeignRental] = []
        self._last_settled = clock.now()
        self._host_index = {h.id: (loc, h) for loc, h in self._hosts()}
        self._location_index = {loc.id: loc for loc in catalog.locations}

    # -- inventory ----------------------------------------------------------------------------

    def _hosts(self) -> Iterable[tuple[CatalogLocation, CatalogHostnode]]:
        for loc in self.catalog.locations:
            for host in loc.hostnodes:
                yield loc, host

    def locations(self) -> list[CatalogLocation]:
        return list(self.catalog.locations)

    def hosts(self) -> list[tuple[CatalogLocation, CatalogHostnode]]:
        return list(self._hosts())

    def host(self, host_id: str) -> tuple[CatalogLocation, CatalogHostnode]:
        try:
            return self._host_index[host_id]
        except KeyError:
            raise FakeApiError("not_found", f"Hostnode {host_id} not found") from None

    def free(self, host: CatalogHostnode) -> HostFree:
        """What a host has left: GPUs per model, vCPUs, RAM and storage."""
        gpus = {model: spec.count for model, spec in host.gpus.items()}
        vcpu, ram, storage = host.vcpu_count, host.ram_gb, host.storage_gb
        for instance_id in self._by_host[host.id]:
            inst = self._instances[instance_id]
            storage -= inst.storage_gb
            if inst.disassociated:
                continue
            vcpu -= inst.vcpu_count
            ram -= inst.ram_gb
            if inst.gpu_model is not None:
                gpus[inst.gpu_model] -= inst.gpu_count
        for rental in self._foreign:
            if rental.host_id == host.id:
                gpus[rental.gpu_model] -= rental.count
        return HostFree({m: max(0, c) for m, c in gpus.items()}, vcpu, ram, storage)

    def free_ports(self, host: CatalogHostnode) -> list[int]:
        """External ports of the host's pool that no instance on it holds."""
        held = {e for i in self._by_host[host.id] for _, e in self._instances[i].port_forwards}
        return [p for p in PORT_POOL if p not in held]

    def capacity_message(self, default: str) -> str:
        if self.faults.varied_capacity_wording:
            return self.rng.choice(CAPACITY_WORDINGS)
        return default

    # -- time ---------------------------------------------------------------------------------

    def settle(self) -> float:
        """Bring every instance up to now: finish transitions, accrue the bill, reclaim GPUs."""
        now = self.clock.now()
        elapsed_h = max(0.0, now - self._last_settled) / 3600.0
        self._last_settled = now
        self._foreign = [r for r in self._foreign if r.until > now]
        for inst in self._instances.values():
            while inst.settles_at is not None and inst.settles_at <= now:
                self._accrue(inst, inst.settles_at)
                inst.phase = "running" if inst.phase == "starting" else "stopped"
                inst.settles_at = None
            self._accrue(inst, now)
        if self.balance_usd <= 0:
            for inst in self._instances.values():  # TensorDock stops a fleet whose balance ran out
                if inst.phase != "stopped":
                    inst.phase, inst.settles_at = "stopped", None
        if self.faults.reclaim_per_hour > 0 and elapsed_h > 0:
            self._maybe_reclaim(elapsed_h, now)
        return now

    def billing_rate(self, inst: FakeInstance) -> float:
        """USD per hour the instance is billed now: in full until it has stopped, then its storage.

        The fake's own rule, as `pricing` is its own formula: the simulator and the demo measure
        the world's cost with it, never with the daemon's belief (`autoscaler.core.money.billed_rate`).
        """
        if inst.phase in _BILLED_PHASES:
            return inst.rate_hourly
        return inst.storage_rate_hourly if self.bill_stopped_storage else 0.0

    def _accrue(self, inst: FakeInstance, until: float) -> None:
        if until <= inst.billed_until:
            return
        cost = self.billing_rate(inst) * (until - inst.billed_until) / 3600.0
        inst.billed_usd += cost
        self.balance_usd -= cost
        inst.billed_until = until

    def _maybe_reclaim(self, elapsed_h: float, now: float) -> None:
        for inst in self._instances.values():
            if inst.phase != "stopped" or inst.disassociated or inst.gpu_model is None:
                continue
            factor = 1.0 if inst.location.tier == 0 else self.faults.reclaim_other_tiers_factor
            if self.rng.random() < 1.0 - math.exp(-self.faults.reclaim_per_hour * factor * elapsed_h):
                self._take_gpus(inst)

    def reclaim(self, instance_id: str) -> FakeInstance:
        """Another renter takes a stopped instance's GPUs, as happens on TensorDock."""
        with self.lock:
            self.settle()
            inst = self.get(instance_id)
            if inst.phase != "stopped" or inst.gpu_model is None:
                raise FakeApiError("domain", "Only a stopped GPU instance can lose its GPUs")
            self._take_gpus(inst)
            return inst

    def _take_gpus(self, inst: FakeInstance) -> None:
        assert inst.gpu_model is not None
        inst.disassociated = True
        self._foreign.append(
            _ForeignRental(inst.host.id, inst.gpu_model, inst.gpu_count, self.clock.now() + self.foreign_rental_s)
        )

    # -- instances ----------------------------------------------------------------------------

    def instances(self) -> list[FakeInstance]:
        return list(self._instances.values())

    def get(self, instance_id: str) -> FakeInstance:
        try:
            return self._instances[instance_id]
        except KeyError:
            raise FakeApiError("not_found", f"Instance {instance_id} not found") from None

    def create(self, attributes: dict[str, Any]) -> FakeInstance:
        now = self.clock.now()
        spec = _CreateSpec.parse(attributes, self.catalog, self.rules)
        if self.balance_usd < 1.0:
            raise FakeApiError("domain", "Insufficient balance: at least $1 is required to deploy")
        if spec.location_id is not None:
            location = self._location_index.get(spec.location_id)
            if location is None:
                raise FakeApiError("validation", f"Location {spec.location_id} not found", ("location_id",))
            host = None if self._stale(location) else self._place(location.hostnodes, spec)
            if host is None:
                raise FakeApiError("capacity", self.capacity_message("No available nodes found"))
        else:
            location, host = self.host(spec.hostnode_id or "")
            if self._stale(location) or not self._fits(host, spec):
                raise FakeApiError("capacity", self.capacity_message("Hostnode unavailable"))
            if self.rules.host_ports:
                free_ports = set(self.free_ports(host))
                for _, external in spec.port_forwards:
                    if external not in free_ports:
                        raise FakeApiError(
                            "domain", f"External port {external} is not available on this hostnode", ("port_forwards",)
                        )
        self._check_per_gpu_limits(host, spec.gpu_count, spec.vcpu_count, spec.ram_gb)
        if location.id in self.faults.drop_port_forwards_at:
            spec.port_forwards = []  # what one client's bug log reports: accepted, silently ignored
        gpu_price = host.gpus[spec.gpu_model].price_per_hr if spec.gpu_model else 0.0
        inst = FakeInstance(
            id=str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            name=spec.name,
            location=location,
            host=host,
            image=spec.image,
            gpu_model=spec.gpu_model,
            gpu_count=spec.gpu_count,
            vcpu_count=spec.vcpu_count,
            ram_gb=spec.ram_gb,
            storage_gb=spec.storage_gb,
            use_dedicated_ip=spec.use_dedicated_ip,
            port_forwards=spec.port_forwards,
            created_at=now,
            phase="starting",
            settles_at=now + self.timings.create_s,
            rate_hourly=host.pricing.hourly_price(
                gpu_price, spec.gpu_count, spec.vcpu_count, spec.ram_gb, spec.storage_gb
            ),
            storage_rate_hourly=host.pricing.storage_price(spec.storage_gb),
            billed_until=now,
        )
        self._instances[inst.id] = inst
        self._by_host[host.id].add(inst.id)
        return inst

    def _stale(self, location: CatalogLocation) -> bool:
        """Listed, yet gone when asked for: how TensorDock's availability often behaves."""
        if location.id in self.faults.stale_locations:
            return True
        return self.faults.stale_create_rate > 0 and self.rng.random() < self.faults.stale_create_rate

    def _place(self, hosts: list[CatalogHostnode], spec: _CreateSpec) -> CatalogHostnode | None:
        candidates = [h for h in hosts if self._fits(h, spec)]
        if not candidates:
            return None
        return min(candidates, key=lambda h: h.gpus[spec.gpu_model].price_per_hr if spec.gpu_model else 0.0)

    def _fits(self, host: CatalogHostnode, spec: _CreateSpec) -> bool:
        if spec.gpu_model is not None and spec.gpu_model not in host.gpus:
            return False
        free = self.free(host)
        return (
            (spec.gpu_model is None or free.gpus[spec.gpu_model] >= spec.gpu_count)
            and free.vcpu >= spec.vcpu_count
            and free.ram >= spec.ram_gb
            and free.storage >= spec.storage_gb
        )

    @staticmethod
    def _check_per_gpu_limits(host: CatalogHostnode, gpus: int, vcpus: int, ram_gb: int) -> None:
        if gpus and vcpus > host.max_vcpus_per_gpu * gpus:
            raise FakeApiError(
                "validation", f"At most {host.max_vcpus_per_gpu} vCPUs per GPU on this host", ("vcpu_count",)
            )
        if gpus and ram_gb > host.max_ram_per_gpu * gpus:
            raise FakeApiError("validation", f"At most {host.max_ram_per_gpu} GB RAM per GPU on this host", ("ram_gb",))

    def start(self, instance_id: str) -> FakeInstance:
        inst = self.get(instance_id)
        if inst.phase != "stopped":
            raise FakeApiError("domain", f"Instance is {inst.phase}; only a stopped instance can be started")
        if inst.disassociated:
            raise FakeApiError(
                "capacity",
                "The GPUs on this hostnode are no longer available; the instance was disassociated",
            )
        inst.phase, inst.settles_at = "starting", self.clock.now() + self.timings.start_s
        return inst

    def stop(self, instance_id: str) -> FakeInstance:
        inst = self.get(instance_id)
        if inst.phase != "running":
            raise FakeApiError("domain", f"Instance is {inst.phase}; only a running instance can be stopped")
        inst.phase, inst.settles_at = "stopping", self.clock.now() + self.timings.stop_s
        return inst

    def delete(self, instance_id: str) -> None:
        inst = self.get(instance_id)
        self._deleted_billed_usd += inst.billed_usd
        del self._instances[instance_id]
        self._by_host[inst.host.id].discard(instance_id)

    def modify(self, instance_id: str, body: dict[str, Any]) -> FakeInstance:
        """TensorDock's rules: stopped only, vCPUs in steps of 2, RAM from a set, no shrinking."""
        inst = self.get(instance_id)
        if inst.phase != "stopped":
            raise FakeApiError("domain", "Instance must be stopped before it can be modified")
        if inst.disassociated and (not self.rules.modify_steps or "gpus" in body):
            raise FakeApiError("capacity", "The GPUs on this hostnode are no longer available")
        known = {"cpuCores", "ramGb", "diskGb", "gpus"}
        unknown = sorted(set(body) - known)
        if unknown or not body:
            raise FakeApiError("validation", f"Give some of {sorted(known)}; unknown: {unknown}", tuple(unknown))
        vcpu = _int_field(body, "cpuCores", inst.vcpu_count, minimum=2)
        if vcpu % 2:
            raise FakeApiError("validation", "cpuCores must be a multiple of 2", ("cpuCores",))
        ram = _int_field(body, "ramGb", inst.ram_gb, minimum=1)
        storage = _int_field(body, "diskGb", inst.storage_gb, minimum=100)
        if self.rules.modify_steps:
            if "ramGb" in body and ram % 8:
                raise FakeApiError("validation", "ramGb must be a multiple of 8", ("ramGb",))
            if "diskGb" in body and (storage - 100) % 50:
                raise FakeApiError("validation", "diskGb must be 100 plus a multiple of 50", ("diskGb",))
        elif ram not in RAM_SIZES_GB:
            raise FakeApiError("validation", f"ramGb must be one of {list(RAM_SIZES_GB)}", ("ramGb",))
        if storage < inst.storage_gb:
            raise FakeApiError("validation", "diskGb cannot shrink", ("diskGb",))
        model, count = inst.gpu_model, inst.gpu_count
        if "gpus" in body:
            if self.rules.modify_gpus_v0name and not (isinstance(body["gpus"], dict) and "gpuV0Name" in body["gpus"]):
                raise FakeApiError("validation", "gpus must be {gpuV0Name, count}", ("gpus",))
            model, count = _parse_modify_gpus(body["gpus"], self.catalog)
            if count < inst.gpu_count:
                raise FakeApiError("validation", "GPUs cannot be removed in place", ("gpus",))
        free = self.free(inst.host)
        gpu_free = free.gpus.get(model or "", 0) + (inst.gpu_count if model == inst.gpu_model else 0)
        if model is not None and (model not in inst.host.gpus or gpu_free < count):
            raise FakeApiError("capacity", "Hostnode unavailable: not enough GPUs of that model")
        if free.vcpu + inst.vcpu_count < vcpu or free.ram + inst.ram_gb < ram:
            raise FakeApiError("capacity", "Hostnode unavailable: not enough vCPU or RAM")
        self._check_per_gpu_limits(inst.host, count, vcpu, ram)
        gpu_price = inst.host.gpus[model].price_per_hr if model else 0.0
        inst.gpu_model, inst.gpu_count, inst.vcpu_count, inst.ram_gb, inst.storage_gb = model, count, vcpu, ram, storage
        inst.rate_hourly = inst.host.pricing.hourly_price(gpu_price, count, vcpu, ram, storage)
        inst.storage_rate_hourly = inst.host.pricing.storage_price(storage)
        return inst

    def bill(self) -> Bill:
        per_instance = {inst.id: inst.billed_usd for inst in self._instances.values()}
        return Bill(
            total_usd=self._deleted_billed_usd + sum(per_instance.values()),
            balance_usd=self.balance_usd,
            per_instance_usd=per_instance,
        )


def _int_field(body: dict[str, Any], key: str, default: int, minimum: int) -> int:
    value = body.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise FakeApiError("validation", f"{key} must be an integer of at least {minimum}", (key,))
    return value


def _parse_modify_gpus(raw: object, catalog: Catalog) -> tuple[str, int]:
    """Spec: `{gpuV0Name, count}`; observed: `{model: {count}}`."""
    if isinstance(raw, dict) and "gpuV0Name" in raw:
        pairs = [(raw.get("gpuV0Name"), raw.get("count"))]
    elif isinstance(raw, dict) and len(raw) == 1:
        ((model, spec),) = raw.items()
        pairs = [(model, spec.get("count") if isinstance(spec, dict) else spec)]
    else:
        raise FakeApiError("validation", "gpus must name one model and its count", ("gpus",))
    model, count = pairs[0]
    if not isinstance(model, str) or model not in catalog.gpu_models:
        raise FakeApiError("validation", f"Unknown GPU model: {model}", ("gpus",))
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 8:
        raise FakeApiError("validation", "GPU count must be from 1 to 8", ("gpus", "count"))
    return model, count


@dataclass
class _CreateSpec:
    name: str
    image: str
    gpu_model: str | None
    gpu_count: int
    vcpu_count: int
    ram_gb: int
    storage_gb: int
    location_id: str | None
    hostnode_id: str | None
    use_dedicated_ip: bool
    port_forwards: list[tuple[int, int]]

    @classmethod
    def parse(cls, attributes: dict[str, Any], catalog: Catalog, rules: Rules) -> _CreateSpec:
        """Validate a create body as TensorDock does, naming the field that is wrong."""
        name = attributes.get("name")
        if not isinstance(name, str) or not name.strip():
            raise FakeApiError("validation", "name is required", ("data", "attributes", "name"))
        image = attributes.get("image")
        if image not in catalog.images:
            raise FakeApiError("validation", f"Unknown image {image!r}; use one of {catalog.images}", ("image",))
        resources = attributes.get("resources")
        if not isinstance(resources, dict):
            raise FakeApiError("validation", "resources is required", ("data", "attributes", "resources"))
        vcpu = resources.get("vcpu_count")
        ram = resources.get("ram_gb")
        storage = resources.get("storage_gb")
        for key, value in (("vcpu_count", vcpu), ("ram_gb", ram), ("storage_gb", storage)):
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 1:
                raise FakeApiError("validation", f"resources.{key} must be a positive number", ("resources", key))
        assert isinstance(storage, int | float) and isinstance(vcpu, int | float) and isinstance(ram, int | float)
        if storage < 100:
            raise FakeApiError("validation", "storage_gb must be at least 100", ("resources", "storage_gb"))
        gpu_model, gpu_count = cls._gpus(resources.get("gpus"), catalog)
        location_id, hostnode_id = attributes.get("location_id"), attributes.get("hostnode_id")
        if (location_id is None) == (hostnode_id is None):
            raise FakeApiError("validation", "Give exactly one of location_id or hostnode_id", ("location_id",))
        if location_id is not None and gpu_model is None:
            raise FakeApiError(
                "validation", "At least one GPU is required for location-based deployment", ("resources", "gpus")
            )
        ssh_key, ssh_key_id = attributes.get("ssh_key"), attributes.get("ssh_key_id")
        if ssh_key is not None and ssh_key_id is not None:
            raise FakeApiError("validation", "Give ssh_key or ssh_key_id, not both", ("ssh_key",))
        key_given = ssh_key if ssh_key is not None else ssh_key_id
        if not isinstance(key_given, str) or not key_given.strip():
            raise FakeApiError("validation", "ssh_key is required (or ssh_key_id)", ("ssh_key",))
        cloud_init = attributes.get("cloud_init")
        if rules.refuse_write_files_encoding and isinstance(cloud_init, dict):
            for entry in cloud_init.get("write_files") or []:
                if isinstance(entry, dict) and "encoding" in entry:
                    raise FakeApiError(
                        "validation", "cloud_init.write_files: encoding is not supported", ("cloud_init", "write_files")
                    )
        dedicated = bool(attributes.get("useDedicatedIp", False))
        forwards = cls._port_forwards(attributes.get("port_forwards"))
        if str(image).startswith("ubuntu") and not dedicated and 22 not in {i for i, _ in forwards}:
            raise FakeApiError(
                "validation", "Ubuntu images need port 22 forwarded unless useDedicatedIp is set", ("port_forwards",)
            )
        return cls(
            name=name,
            image=str(image),
            gpu_model=gpu_model,
            gpu_count=gpu_count,
            vcpu_count=int(vcpu),
            ram_gb=int(ram),
            storage_gb=int(storage),
            location_id=location_id if isinstance(location_id, str) else None,
            hostnode_id=hostnode_id if isinstance(hostnode_id, str) else None,
            use_dedicated_ip=dedicated,
            port_forwards=forwards,
        )

    @staticmethod
    def _gpus(raw: object, catalog: Catalog) -> tuple[str | None, int]:
        if raw is None or raw in ([], {}):
            return None, 0
        if isinstance(raw, list):
            entries = [(g.get("gpuV0Name"), g.get("count", 1)) if isinstance(g, dict) else (None, 0) for g in raw]
        elif isinstance(raw, dict):
            entries = [(m, s.get("count", 1) if isinstance(s, dict) else s) for m, s in raw.items()]
        else:
            raise FakeApiError("validation", "resources.gpus must be a list or an object", ("resources", "gpus"))
        if len(entries) != 1:
            raise FakeApiError("validation", "An instance takes GPUs of exactly one model", ("resources", "gpus"))
        model, count = entries[0]
        if not isinstance(model, str) or model not in catalog.gpu_models:
            raise FakeApiError("validation", f"Unknown GPU model: {model}", ("resources", "gpus"))
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 8:
            raise FakeApiError("validation", "GPU count must be from 1 to 8", ("resources", "gpus", "count"))
        return model, count

    @staticmethod
    def _port_forwards(raw: object) -> list[tuple[int, int]]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise FakeApiError("validation", "port_forwards must be a list", ("port_forwards",))
        out = []
        for item in raw:
            internal = item.get("internal_port") if isinstance(item, dict) else None
            external = item.get("external_port") if isinstance(item, dict) else None
            if not all(
                isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in (internal, external)
            ):
                raise FakeApiError(
                    "validation", "port_forwards need internal_port and external_port", ("port_forwards",)
                )
            assert isinstance(internal, int) and isinstance(external, int)
            out.append((internal, external))
        return out
