"""Typed values the client hands out and takes in; one shape, whatever the wire said."""

from __future__ import annotations

import functools
import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import AliasChoices, AliasPath, BaseModel, ConfigDict, Field, field_validator, model_validator

WireFormat = Literal["observed", "spec", "documented"]  # documented writes as observed does


class InstanceStatus(StrEnum):
    """Normalised lifecycle state; `UNKNOWN` keeps an unexpected value from crashing a cycle."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    STOPPED_DISASSOCIATED = "stoppeddisassociated"
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, raw: object) -> InstanceStatus:
        """Lower-case and drop `_`, `-` and spaces, as the field notes advise."""
        if not isinstance(raw, str):
            return cls.UNKNOWN
        return _parse_status(raw)

    @property
    def is_transitional(self) -> bool:
        return self in (InstanceStatus.STARTING, InstanceStatus.STOPPING, InstanceStatus.DELETING)

    @property
    def is_stopped(self) -> bool:
        return self in (InstanceStatus.STOPPED, InstanceStatus.STOPPED_DISASSOCIATED)


@functools.lru_cache(maxsize=256)
def _parse_status(raw: str) -> InstanceStatus:
    try:
        return InstanceStatus(_STATUS_NOISE.sub("", raw).lower())
    except ValueError:
        return InstanceStatus.UNKNOWN


_STATUS_NOISE = re.compile(r"[\s_\-]")


MAX_PLAUSIBLE_PRICE = 1000.0  # USD per GPU-hour (or per vCPU/GB-hour): a discovery entry above it is noise
# USD per GPU-hour: a GPU listed below it is a placeholder or a unit slip, not an offer (the cheapest
# in the field notes is 0.17); bought, it would be charged at its listed near-nothing
MIN_PLAUSIBLE_GPU_PRICE = 0.01


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _also(*names: str | AliasPath) -> AliasChoices:
    return AliasChoices(*names)


class GpuAllocation(_Frozen):
    model: str
    count: int = Field(ge=0)


class PortForward(_Frozen):
    model_config = ConfigDict(frozen=True, extra="ignore")

    internal_port: int = Field(ge=1, le=65535, validation_alias=_also("internal_port", "internalPort", "internal"))
    external_port: int = Field(ge=1, le=65535, validation_alias=_also("external_port", "externalPort", "external"))


class Instance(_Frozen):
    """A virtual machine as listed; fields the API did not send are None, never guessed.

    Validates straight from a flat wire item (spec or observed names and shapes) so that one pass
    in pydantic-core does the work and lists of thousands stay cheap; `wire` flattens envelopes.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", coerce_numbers_to_str=True)

    id: str = Field(min_length=1)
    name: str | None = None
    status: InstanceStatus = InstanceStatus.UNKNOWN
    status_raw: str | None = Field(default=None, validation_alias=_also("status_raw", "status"))
    gpus: tuple[GpuAllocation, ...] = Field(default=(), validation_alias=_also("gpus", AliasPath("resources", "gpus")))
    # Not range-checked here: an absurd price is the engine's to disbelieve (rule 11), not a reason
    # to throw away the whole listing.
    rate_hourly: float | None = Field(default=None, validation_alias=_also("rate_hourly", "rateHourly"))
    ip_address: str | None = Field(default=None, validation_alias=_also("ip_address", "ipAddress", "ip"))
    port_forwards: tuple[PortForward, ...] = Field(default=(), validation_alias=_also("port_forwards", "portForwards"))
    vcpu_count: int | None = Field(
        default=None, ge=0, validation_alias=_also("vcpu_count", AliasPath("resources", "vcpu_count"))
    )
    ram_gb: float | None = Field(default=None, ge=0, validation_alias=_also("ram_gb", AliasPath("resources", "ram_gb")))
    storage_gb: float | None = Field(
        default=None, ge=0, validation_alias=_also("storage_gb", AliasPath("resources", "storage_gb"))
    )
    location_id: str | None = Field(default=None, validation_alias=_also("location_id", "locationId"))
    hostnode_id: str | None = Field(default=None, validation_alias=_also("hostnode_id", "hostnodeId"))
    image: str | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _normalise_status(cls, value: Any) -> InstanceStatus:
        return value if isinstance(value, InstanceStatus) else InstanceStatus.parse(value)

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus_any_shape(cls, value: Any) -> Any:
        """Spec: `[{gpuV0Name, count}]`; observed: `{model: {count}}`."""
        if value is None:
            return ()
        if isinstance(value, dict):  # keyed by v0Name, or by display name with v0Name inside
            inner = ("v0Name", "gpuV0Name")
            return [
                {
                    "model": next((spec[k] for k in inner if spec.get(k)), model) if isinstance(spec, dict) else model,
                    "count": spec.get("count", 1) if isinstance(spec, dict) else spec,
                }
                for model, spec in value.items()
            ]
        if isinstance(value, list):
            return [
                {
                    "model": item.get("gpuV0Name") or item.get("v0Name") or item.get("model"),
                    "count": item.get("count", 1),
                }
                if isinstance(item, dict)
                else item
                for item in value
            ]
        return value

    @field_validator("port_forwards", mode="before")
    @classmethod
    def _port_forwards_any_shape(cls, value: Any) -> Any:
        """Spec: an object `{internal: external}`; observed: `[{internal_port, external_port}]`."""
        if value is None:
            return ()
        if isinstance(value, dict):
            return [{"internal_port": internal, "external_port": external} for internal, external in value.items()]
        return value

    @property
    def gpu_model(self) -> str | None:
        """The model of the instance's GPUs (TensorDock puts one model on an instance)."""
        return self.gpus[0].model if self.gpus else None

    @property
    def gpu_count(self) -> int:
        return sum(g.count for g in self.gpus)


class Pricing(_Frozen):
    """Per-resource hourly prices of a host; GPU prices are per GPU and quoted separately."""

    per_vcpu_hr: float = Field(default=0.0, ge=0, le=MAX_PLAUSIBLE_PRICE, allow_inf_nan=False)
    per_gb_ram_hr: float = Field(default=0.0, ge=0, le=MAX_PLAUSIBLE_PRICE, allow_inf_nan=False)
    per_gb_storage_hr: float = Field(default=0.0, ge=0, le=MAX_PLAUSIBLE_PRICE, allow_inf_nan=False)

    def hourly_price(self, gpu_price_per_hr: float, gpus: int, vcpus: int, ram_gb: float, storage_gb: float) -> float:
        """The hourly price of an offer, as TensorDock computes `rateHourly`."""
        return (
            gpu_price_per_hr * gpus
            + vcpus * self.per_vcpu_hr
            + ram_gb * self.per_gb_ram_hr
            + storage_gb * self.per_gb_storage_hr
        )

    def storage_price(self, storage_gb: float) -> float:
        """What a stopped instance keeps costing."""
        return storage_gb * self.per_gb_storage_hr


class LocationGpuOffer(_Frozen):
    """One GPU model offered at one location, as `/locations` lists it."""

    location_id: str
    gpu_model: str
    display_name: str | None = None
    max_count: int = Field(ge=0)
    price_per_hr: float = Field(ge=MIN_PLAUSIBLE_GPU_PRICE, le=MAX_PLAUSIBLE_PRICE, allow_inf_nan=False)
    max_vcpus: int | None = Field(default=None, ge=0)
    max_ram_gb: float | None = Field(default=None, ge=0)
    max_storage_gb: float | None = Field(default=None, ge=0)
    pricing: Pricing = Pricing()
    dedicated_ip_available: bool = False
    port_forwarding_available: bool = True
    network_storage_available: bool = False

    def hourly_price(self, gpus: int, vcpus: int, ram_gb: float, storage_gb: float) -> float:
        return self.pricing.hourly_price(self.price_per_hr, gpus, vcpus, ram_gb, storage_gb)


class Location(_Frozen):
    id: str
    city: str | None = None
    stateprovince: str | None = None
    country: str | None = None
    tier: int | None = None
    gpus: tuple[LocationGpuOffer, ...] = ()


class HostnodeGpu(_Frozen):
    gpu_model: str
    available_count: int = Field(ge=0)
    price_per_hr: float = Field(ge=MIN_PLAUSIBLE_GPU_PRICE, le=MAX_PLAUSIBLE_PRICE, allow_inf_nan=False)


class Hostnode(_Frozen):
    """A physical host and what it has free right now (free counts are often stale)."""

    id: str
    location_id: str | None = None
    engine: str | None = None
    uptime_percentage: float | None = None
    gpus: tuple[HostnodeGpu, ...] = ()
    vcpu_count: int | None = None
    ram_gb: float | None = None
    storage_gb: float | None = None
    max_vcpus_per_gpu: int | None = None
    max_ram_per_gpu: float | None = None
    has_public_ip_available: bool = False
    available_ports: tuple[int, ...] = ()
    pricing: Pricing = Pricing()
    city: str | None = None
    stateprovince: str | None = None
    country: str | None = None
    tier: int | None = None

    def hourly_price(self, gpu_model: str, gpus: int, vcpus: int, ram_gb: float, storage_gb: float) -> float | None:
        """Price of this shape on this host, or None when the host has no such GPU."""
        for gpu in self.gpus:
            if gpu.gpu_model == gpu_model:
                return self.pricing.hourly_price(gpu.price_per_hr, gpus, vcpus, ram_gb, storage_gb)
        return None


class CreateInstanceRequest(_Frozen):
    """What to create; rendered in the wire format the client is configured for."""

    name: str = Field(min_length=1, max_length=128)
    image: str = Field(min_length=1)
    gpu_model: str | None = None
    gpu_count: int = Field(default=1, ge=0, le=8)
    vcpu_count: int = Field(ge=1)
    ram_gb: int = Field(ge=1)
    storage_gb: int = Field(ge=100, description="TensorDock refuses less than 100 GB")
    location_id: str | None = None
    hostnode_id: str | None = None
    use_dedicated_ip: bool = False
    ssh_key: str | None = Field(default=None, min_length=1, description="the public key itself")
    ssh_key_id: str | None = Field(default=None, min_length=1, description="a key uploaded to TensorDock before")
    port_forwards: tuple[PortForward, ...] = ()
    cloud_init: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_placement(self) -> CreateInstanceRequest:
        if (self.location_id is None) == (self.hostnode_id is None):
            raise ValueError("give exactly one of location_id or hostnode_id")
        if self.location_id is not None and (self.gpu_model is None or self.gpu_count < 1):
            raise ValueError("a location-based create needs gpu_model and gpu_count >= 1")
        if (self.ssh_key is None) == (self.ssh_key_id is None):
            raise ValueError("give exactly one of ssh_key or ssh_key_id")
        return self


class ModifyInstanceRequest(_Frozen):
    """Resources to change on a stopped instance; None leaves a resource as it is."""

    vcpu_count: int | None = Field(default=None, ge=1)
    ram_gb: int | None = Field(default=None, ge=1)
    storage_gb: int | None = Field(default=None, ge=100)
    gpu_model: str | None = None
    gpu_count: int | None = Field(default=None, ge=1, le=8)

    @model_validator(mode="after")
    def _gpu_pair(self) -> ModifyInstanceRequest:
        if (self.gpu_model is None) != (self.gpu_count is None):
            raise ValueError("give gpu_model and gpu_count together")
        return self
