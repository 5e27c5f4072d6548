"""The fake's inventory: locations, hosts, GPUs and prices, loaded from a JSON catalog file."""

from __future__ import annotations

import uuid
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .pricing import HostPricing


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CatalogGpu(_Strict):
    count: int = Field(ge=1, le=8)
    price_per_hr: float = Field(ge=0, description="USD per GPU-hour, excluding vCPU, RAM and storage")


class CatalogHostnode(_Strict):
    id: str
    engine: str = "kvm"
    uptime_percentage: float = Field(default=99.0, ge=0, le=100)
    gpus: dict[str, CatalogGpu]
    vcpu_count: int = Field(ge=1)
    ram_gb: int = Field(ge=1)
    storage_gb: int = Field(ge=100)
    max_vcpus_per_gpu: int = Field(ge=1)
    max_ram_per_gpu: int = Field(ge=1)
    pricing: HostPricing
    public_ip: str
    dedicated_ips: int = Field(default=0, ge=0)


class CatalogLocation(_Strict):
    id: str
    city: str
    stateprovince: str
    country: str
    tier: int = Field(ge=0, le=4, description="0 is residential: cheap, and GPUs get reclaimed")
    network_speed_gbps: float = 1.0
    hostnodes: list[CatalogHostnode]


class Catalog(_Strict):
    images: list[str]
    gpu_display_names: dict[str, str] = {}
    locations: list[CatalogLocation]

    @property
    def gpu_models(self) -> set[str]:
        return {model for loc in self.locations for host in loc.hostnodes for model in host.gpus}

    def deepened(self, copies: int) -> Catalog:
        """Each host `copies` times at the same place and price: a marketplace with more stock.

        The copies' ids are derived from the original's, so the same depth gives the same catalog.
        """
        if copies < 1:
            raise ValueError("copies must be at least 1")
        if copies == 1:
            return self
        locations = []
        for location in self.locations:
            hosts = [
                host.model_copy(
                    update={"id": host.id if n == 0 else str(uuid.uuid5(uuid.NAMESPACE_URL, f"{host.id}/{n}"))}
                )
                for host in location.hostnodes
                for n in range(copies)
            ]
            locations.append(location.model_copy(update={"hostnodes": hosts}))
        return self.model_copy(update={"locations": locations})


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The given catalog file, or the default one that ships (prices from the field notes)."""
    if path is None:
        text = resources.files(__package__).joinpath("default_catalog.json").read_text()
    else:
        text = Path(path).read_text()
    return Catalog.model_validate_json(text)
