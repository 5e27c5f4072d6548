"""What an instance is: the fleet's shape per GPU (configuration) and an owned instance's record.

Dependency-free values shared by the decision core, the store and the actuator.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Protocol


class ResourcePrices(Protocol):
    """A host's price list: the client's reading of discovery (`tensordock.Pricing`) or the fake's bill
    (the simulator prices its world with the latter)."""

    def hourly_price(self, gpu_price_per_hr: float, gpus: int, vcpus: int, ram_gb: float, storage_gb: float) -> float:
        """What an instance of these resources costs an hour."""
        ...


@dataclass(frozen=True)
class InstanceShape:
    """What one fleet instance looks like per GPU; the price of an offer depends on it."""

    vcpu_per_gpu: int = 8
    ram_gb_per_gpu: int = 32
    storage_gb: int = 100

    def hourly_price(self, pricing: ResourcePrices, gpu_price_per_hr: float, gpus: int) -> float:
        return pricing.hourly_price(
            gpu_price_per_hr, gpus, self.vcpu_per_gpu * gpus, self.ram_gb_per_gpu * gpus, self.storage_gb
        )

    def host_room(self, gpus: int, vcpus: int | None = None, ram_gb: float | None = None) -> tuple[int, float]:
        """The vCPUs and RAM an instance takes on its host: as listed, else as this shape makes them
        (a thin listing omits them; the fleet created the instance with this shape)."""
        return vcpus or self.vcpu_per_gpu * gpus, ram_gb or float(self.ram_gb_per_gpu * gpus)


@dataclass(frozen=True)
class OwnedShape:
    """What an owned instance is, as the daemon asked for it (rule 12): written with the create's
    intent, before the call, so that no thin listing can make it forget."""

    gpu_model: str | None
    gpus: int
    vcpus: int
    ram_gb: float
    storage_gb: float
    location_id: str | None = None
    hostnode_id: str | None = None
    ports: tuple[int, ...] = ()  # external ports it holds on its host

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ports": list(self.ports)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> OwnedShape | None:
        """None for no record or a damaged one: the shape is then unknown, and counted as such."""
        if not text:
            return None
        try:
            raw = json.loads(text)
            return cls(**{**raw, "ports": tuple(raw.get("ports") or ())})
        except (ValueError, TypeError):
            return None
