"""How the fake words its replies: exactly the OpenAPI shapes (`spec`), what real traffic shows
(`observed`, per the field notes), or the thinnest shapes TensorDock's own documentation pages
show (`documented`: listings carry id, name and status only). Observed and documented rotate
through their variants so that any test against the fake meets all of them."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, Literal

from .catalog import Catalog, CatalogHostnode, CatalogLocation
from .state import FakeApiError, FakeInstance, HostFree

Dialect = Literal["spec", "observed", "documented"]
DIALECTS: tuple[Dialect, ...] = ("documented", "observed", "spec")
Json = Any
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
}


class Renderer:
    """Turns the fake's state into JSON bodies and chooses the HTTP status, per dialect."""

    def __init__(self, dialect: Dialect, catalog: Catalog, ip_delay_s: float, *, rate_in_get: bool = True) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, not {dialect!r}")
        self.dialect: Dialect = dialect
        self.rate_in_get = rate_in_get  # documented: does GET /instances/{id} carry rateHourly?
        self.catalog = catalog
        self.ip_delay_s = ip_delay_s
        self._list_variant: Iterator[int] = itertools.cycle(range(4))
        self._get_variant: Iterator[int] = itertools.cycle(range(3))
        self._thin_variant: Iterator[int] = itertools.cycle(range(2))
        self._detail_variant: Iterator[int] = itertools.cycle(range(2))
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

    def _thin(self, inst: FakeInstance) -> Json:
        attributes = {"name": inst.name, "status": self._status(inst)}
        return {"type": "virtualmachine", "id": inst.id, "attributes": attributes}

    def _documented_detail(self, inst: FakeInstance, now: float, with_gpus: bool) -> Json:
        """Flat, as the documentation shows it; a GPU map, where one appears, keyed by display name."""
        detail: dict[str, Json] = {
            "type": "virtualmachine",
            "id": inst.id,
            "name": inst.name,
            "status": self._status(inst),
            "ipAddress": inst.ip_address(now, self.ip_delay_s),
            "portForwards": [{"internal_port": i, "external_port": e} for i, e in inst.port_forwards],
        }
        if self.rate_in_get:
            detail["rateHourly"] = round(inst.rate_hourly, 6)
        if with_gpus and inst.gpu_model is not None:
            display = self.catalog.gpu_display_names.get(inst.gpu_model, inst.gpu_model)
            detail["gpus"] = {display: {"count": inst.gpu_count, "v0Name": inst.gpu_model}}
        return detail

    def instance_list(self, instances: list[FakeInstance], now: float) -> Json:
        if self.dialect == "documented":
            items = [self._thin(i) for i in instances]
            return {"data": {"instances": items}} if next(self._thin_variant) == 0 else {"data": items}
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
        if self.dialect == "documented":
            return self._documented_detail(inst, now, with_gpus=next(self._detail_variant) == 1)
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
        # documented: the example says running, with no IP, while the instance still boots
        status = "running" if self.dialect == "documented" else self._status(inst)
        return 200, {"data": {"type": "virtualmachine", "id": inst.id, "name": inst.name, "status": status}}

    def transition(self, inst: FakeInstance) -> Json:
        kind = "instance" if self.dialect == "documented" else "virtualmachine"
        status = inst.phase if self.dialect == "documented" else self._status(inst)
        return {"data": {"type": kind, "id": inst.id, "attributes": {"status": status}}}

    def success(self, message: str) -> Json:
        if self.dialect == "documented":
            return {"data": {"type": "success", "attributes": {"message": message}}}
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

    def hostnode(self, loc: CatalogLocation, host: CatalogHostnode, free: HostFree, ports: list[int]) -> Json:
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
                "available_ports": ports,
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
        if self.dialect == "documented":  # refusals of a valid request come in a 200
            return 400 if error.kind == "validation" else 200, {"status": 400, "message": error.message}
        if error.kind == "validation":
            return 400, [{"code": "invalid", "message": error.message, "path": list(error.path)}]
        return 200, {"status": 400, "error": error.message}


def with_junk(body: Json, key: str) -> Json:
    """Discovery noise: an unknown field on every entry, plus entries with null prices and wrong types."""
    items = body["data"][key]
    for item in items:
        item["x_unannounced_field"] = {"since": "2026-07"}
        for gpu in item.get("gpus") or item.get("available_resources", {}).get("gpus") or []:
            gpu["x_promo"] = None
    if key == "locations":
        items += [
            {"id": "junk-null-price", "city": "Nowhere", "gpus": [{"v0Name": "l4-pcie-24gb", "price_per_hr": None}]},
            {"id": "junk-wrong-type", "city": 7, "tier": "top", "gpus": "none"},
            {"id": None, "gpus": []},
        ]
        if items[0].get("gpus"):
            items[0]["gpus"].append({"v0Name": "a40-pcie-48gb", "max_count": "many", "price_per_hr": "cheap"})
    else:
        items += [
            {"id": "junk-host", "available_resources": {"gpus": [{"v0Name": "l4-pcie-24gb", "price_per_hr": None}]}},
            {"id": "junk-host-2", "available_resources": "none", "pricing": [1, 2]},
            ["not", "an", "object"],
        ]
    return body
