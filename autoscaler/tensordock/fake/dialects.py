"""How the fake words its replies: exactly the OpenAPI shapes (`spec`), or what real traffic
shows (`observed`, per the field notes), rotating through every observed variant so that any
test against the fake meets all of them."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, Literal

from .catalog import Catalog, CatalogHostnode, CatalogLocation
from .state import FakeApiError, FakeInstance, HostFree

Dialect = Literal["spec", "observed"]
Json = Any
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
}


class Renderer:
    """Turns the fake's state into JSON bodies and chooses the HTTP status, per dialect."""

    def __init__(self, dialect: Dialect, catalog: Catalog, ip_delay_s: float) -> None:
        if dialect not in ("spec", "observed"):
            raise ValueError(f"dialect must be 'spec' or 'observed', not {dialect!r}")
        self.dialect: Dialect = dialect
        self.catalog = catalog
        self.ip_delay_s = ip_delay_s
        self._list_variant: Iterator[int] = itertools.cycle(range(4))
        self._get_variant: Iterator[int] = itertools.cycle(range(3))
        self._disassociated_variant: Iterator[str] = itertools.cycle(["StoppedDisassociated", "stopped_disassociated"])

    # -- instances ------------------------------------------------------------------------------

    def _status(self, inst: FakeInstance) -> str:
        if self.dialect == "spec":
            return inst.phase
        if inst.disassociated:
            return next(self._disassociated_variant)
        return inst.phase.capitalize()

    def _attributes(self, inst: FakeInstance, now: float) -> dict[str, Json]:
        spec = self.dialect == "spec"
        gpus: Json = []
        if inst.gpu_model is not None:
            gpus = (
                [{"gpuV0Name": inst.gpu_model, "count": inst.gpu_count}]
                if spec
                else {inst.gpu_model: {"count": inst.gpu_count}}
            )
        attributes: dict[str, Json] = {
            "name": inst.name,
            "status": self._status(inst),
            "portForwards": (
                {str(i): e for i, e in inst.port_forwards}
                if spec
                else [{"internal_port": i, "external_port": e} for i, e in inst.port_forwards]
            ),
            "resources": {
                "vcpu_count": inst.vcpu_count,
                "ram_gb": inst.ram_gb,
                "storage_gb": inst.storage_gb,
                "gpus": gpus,
            },
            "rateHourly": round(inst.rate_hourly, 6),
            "location_id": inst.location.id,
            "image": inst.image,
        }
        ip = inst.ip_address(now, self.ip_delay_s)
        if ip is not None:
            attributes["ipAddress"] = ip
        if not spec:
            attributes["hostnode_id"] = inst.host.id
        return attributes

    def _envelope(self, inst: FakeInstance, now: float) -> Json:
        return {"type": "virtualmachine", "id": inst.id, "attributes": self._attributes(inst, now)}

    def _flat(self, inst: FakeInstance, now: float) -> Json:
        return {"type": "virtualmachine", "id": inst.id, **self._attributes(inst, now)}

    def instance_list(self, instances: list[FakeInstance], now: float) -> Json:
        if self.dialect == "spec":
            return {"data": {"instances": [self._envelope(i, now) for i in instances]}}
        variant = next(self._list_variant)
        render = self._flat if variant < 2 else self._envelope
        items = [render(i, now) for i in instances]
        if variant == 0:
            return {"data": items}
        if variant == 1:
            return {"data": {"attributes": {"instances": items}}}
        if variant == 2:
            return {"data": {"instances": items}}
        return {"data": items}

    def instance(self, inst: FakeInstance, now: float) -> Json:
        if self.dialect == "spec":
            return {"data": self._envelope(inst, now)}
        variant = next(self._get_variant)
        if variant == 0:
            return self._flat(inst, now)
        if variant == 1:
            return {"data": self._flat(inst, now)}
        return {"data": self._envelope(inst, now)}

    def created(self, inst: FakeInstance, now: float) -> tuple[int, Json]:
        if self.dialect == "spec":
            return 201, {"data": self._envelope(inst, now)}
        return 200, {"data": {"type": "virtualmachine", "id": inst.id, "name": inst.name, "status": self._status(inst)}}

    def transition(self, inst: FakeInstance) -> Json:
        return {"data": {"type": "virtualmachine", "id": inst.id, "attributes": {"status": self._status(inst)}}}

    @staticmethod
    def success(message: str) -> Json:
        return {"data": {"type": "success", "message": message}}

    # -- offers -----------------------------------------------------------------------------------

    def locations(self, rows: list[tuple[CatalogLocation, list[tuple[CatalogHostnode, HostFree]]]]) -> Json:
        """One offer per location and model: the cheapest host that has any free, as TensorDock lists."""
        out = []
        for loc, hosts in rows:
            offers: dict[str, Json] = {}
            for host, free in hosts:
                for model, spec in host.gpus.items():
                    available = free.gpus.get(model, 0)
                    if available <= 0:
                        continue
                    current = offers.get(model)
                    if current is not None and current["price_per_hr"] <= spec.price_per_hr:
                        current["max_count"] = max(current["max_count"], available)
                        continue
                    offers[model] = {
                        "v0Name": model,
                        "displayName": self.catalog.gpu_display_names.get(model, model),
                        "max_count": max(available, current["max_count"] if current else 0),
                        "price_per_hr": spec.price_per_hr,
                        "resources": {
                            "max_vcpus": min(free.vcpu, host.max_vcpus_per_gpu * available),
                            "max_ram_gb": min(free.ram, host.max_ram_per_gpu * available),
                            "max_storage_gb": free.storage,
                        },
                        "pricing": host.pricing.model_dump(),
                        "network_features": {
                            "dedicated_ip_available": host.dedicated_ips > 0,
                            "port_forwarding_available": True,
                            "network_storage_available": False,
                        },
                    }
            out.append(
                {
                    "id": loc.id,
                    "city": loc.city,
                    "stateprovince": loc.stateprovince,
                    "country": loc.country,
                    "tier": loc.tier,
                    "gpus": list(offers.values()),
                }
            )
        return {"data": {"locations": out}}

    def hostnode(self, loc: CatalogLocation, host: CatalogHostnode, free: HostFree) -> Json:
        return {
            "id": host.id,
            "location_id": loc.id,
            "engine": host.engine,
            "uptime_percentage": host.uptime_percentage,
            "available_resources": {
                "gpus": [
                    {"v0Name": model, "availableCount": free.gpus.get(model, 0), "price_per_hr": spec.price_per_hr}
                    for model, spec in host.gpus.items()
                ],
                "vcpu_count": free.vcpu,
                "ram_gb": free.ram,
                "storage_gb": free.storage,
                "max_vcpus_per_gpu": host.max_vcpus_per_gpu,
                "max_ram_per_gpu": host.max_ram_per_gpu,
                "max_vcpus": host.vcpu_count,
                "max_ram_gb": host.ram_gb,
                "max_storage_gb": host.storage_gb,
                "available_ports": [],
                "has_public_ip_available": host.dedicated_ips > 0,
            },
            "pricing": host.pricing.model_dump(),
            "location": {
                "uuid": loc.id,
                "city": loc.city,
                "stateprovince": loc.stateprovince,
                "country": loc.country,
                "tier": loc.tier,
                "network_speed_gbps": loc.network_speed_gbps,
            },
        }

    # -- errors -------------------------------------------------------------------------------------

    def error(self, status: int, message: str) -> tuple[int, Json]:
        """Protocol-level errors (401, 404 route, 405, 429) keep their HTTP status in both dialects."""
        if self.dialect == "spec":
            return status, {
                "errors": [{"status": str(status), "title": _TITLES.get(status, "Error"), "detail": message}]
            }
        return status, {"error": message, "status": status}

    def api_error(self, error: FakeApiError) -> tuple[int, Json]:
        """Refusals: the spec's 400/404; observed: 404s as such, validation as a list, the rest in a 200."""
        status = 404 if error.kind == "not_found" else 400
        if self.dialect == "spec" or error.kind == "not_found":
            return self.error(status, error.message)
        if error.kind == "validation":
            return 400, [{"code": "invalid", "message": error.message, "path": list(error.path)}]
        return 200, {"status": 400, "error": error.message}
