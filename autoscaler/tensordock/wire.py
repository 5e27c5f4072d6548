"""Translation between TensorDock's JSON, in every shape seen in the wild, and the typed models.

Reading is always tolerant (spec and observed shapes alike); writing follows the configured
wire format. Anything that cannot be read raises MalformedResponseError naming what was wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from autoscaler.common.secrets import mask_secrets

from .errors import MalformedResponseError
from .models import (
    CreateInstanceRequest,
    Hostnode,
    HostnodeGpu,
    Instance,
    InstanceStatus,
    Location,
    LocationGpuOffer,
    ModifyInstanceRequest,
    Pricing,
    WireFormat,
)

JsonObject = dict[str, Any]
T = TypeVar("T")
_INSTANCE_LIST: TypeAdapter[list[Instance]] = TypeAdapter(list[Instance])


def _first(mapping: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in mapping and mapping[key] is not None:
            return mapping[key]
    return None


def _malformed(operation: str, what: str, body: object) -> MalformedResponseError:
    excerpt = mask_secrets(json.dumps(body, default=str))[:200]  # masked before the cut: no half token
    return MalformedResponseError(operation, f"{what}; reply began {excerpt}")


def find_error(body: object) -> tuple[int | None, str] | None:
    """The error a reply carries, even inside a 2xx; None when it is not an error body."""
    if isinstance(body, list):
        if body and all(isinstance(item, dict) and "message" in item for item in body):
            parts = []
            for item in body:
                path = ".".join(str(p) for p in item.get("path") or [])
                parts.append(f"{path}: {item['message']}" if path else str(item["message"]))
            return 400, "; ".join(parts)
        return None
    if not isinstance(body, dict):
        return None
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        first = errors[0] if isinstance(errors[0], dict) else {"detail": str(errors[0])}
        message = str(_first(first, "detail", "title", "message") or "unspecified error")
        return _as_status(first.get("status")), message
    error = body.get("error")
    if error:
        message = str(_first(error, "message", "detail") or error) if isinstance(error, dict) else str(error)
        return _as_status(body.get("status")), message
    if body.get("success") is False:
        return _as_status(body.get("status")), str(body.get("message") or "request failed")
    status = _as_status(body.get("status"))
    no_data = body.get("data") in (None, {}, [])  # `"data": null` beside an error carries nothing
    if status is not None and status >= 400 and no_data:  # `{"status": 400, "message": ...}`
        return status, str(_first(body, "message", "detail", "title") or f"status {status}")
    word, data = body.get("status"), body.get("data")
    about_an_instance = "id" in body or isinstance(data, list) or (isinstance(data, dict) and "id" in data)
    if isinstance(word, str) and word.lower() in _ERROR_WORDS and not about_an_instance:
        # JSend's `{"status": "error", "message": ...}` and `{"status": "fail", "data": {why}}`; an
        # instance's own `status: error` comes with its id
        return _as_status(body.get("code")), str(_first(body, "message", "detail", "title") or f"status {word}")
    return None


_ERROR_WORDS = frozenset({"error", "fail", "failed", "failure"})


def _as_status(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str | float):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _flatten(item: object) -> object:
    """`{type, id, attributes}` to one flat object; flat items pass through untouched."""
    if isinstance(item, dict):
        attributes = item.get("attributes")
        if isinstance(attributes, dict):
            return {**item, **attributes}
    return item


def parse_instance(item: object, operation: str, on_skip: SkipEntry | None = None) -> Instance:
    """One instance, flat or `{type, id, attributes}`; the model itself reads every wire shape.
    An optional field it cannot read (a price as "$0.39") is left out and reported to `on_skip`:
    the daemon's own record stands in for it, and the id, name and status still count."""
    if not isinstance(item, dict):
        raise _malformed(operation, "instance is not an object", item)
    try:
        return _read_leniently(_flatten(item), operation, on_skip or _skip_nothing)
    except (ValidationError, ValueError, TypeError) as exc:
        raise _malformed(operation, f"instance fields are invalid ({_summarise(exc)})", item) from exc


def _read_leniently(item: object, operation: str, on_skip: SkipEntry) -> Instance:
    """The instance, with the optional fields it cannot read left out and reported to `on_skip`;
    the validation error itself when an essential one cannot be read."""
    try:
        return Instance.model_validate(item)
    except (ValidationError, ValueError, TypeError) as exc:
        read = _without_unreadable(item, exc)
        if read is None:
            raise
        instance, dropped = read
        on_skip(operation, f"instance {instance.id}: {', '.join(dropped)} unreadable; left out")
        return instance


# What an instance is to the daemon; without any of these an entry cannot be read at all.
_ESSENTIAL_FIELDS = frozenset({"id", "name", "status", "type", "attributes"})


def _without_unreadable(item: object, exc: Exception) -> tuple[Instance, list[str]] | None:
    """The instance read without the optional fields that failed validation, and their names;
    None when an essential field failed or the failure names no field."""
    if not isinstance(item, dict):
        return None
    current, dropped = dict(item), []
    for _ in range(len(current)):
        if not isinstance(exc, ValidationError):
            return None
        keys = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
        if not keys or keys & _ESSENTIAL_FIELDS or not keys <= set(current):
            return None
        for key in sorted(keys):
            del current[key]
            dropped.append(key)
        try:
            return Instance.model_validate(current), dropped
        except (ValidationError, ValueError, TypeError) as again:
            exc = again
    return None


def _summarise(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:3])
    return mask_secrets(str(exc))[:200]  # masked before the cut: no half secret


def parse_instance_list(
    body: object, operation: str = "list_instances", on_skip: SkipEntry | None = None
) -> list[Instance]:
    """Every list variant: `data.instances`, flat `data`, `data.attributes.instances`.

    One odd entry (someone else's VM with a string GPU count) must not blind the daemon to its
    whole fleet: an entry whose id can be read but whose other fields cannot is kept as that id
    in an unknown status, so it counts in doubt and is never touched; an entry without a readable
    id fails the listing, since it may be ours. An id listed twice (pages that overlap) counts
    once; listed twice differently, it is in an unknown status. Each is reported to `on_skip`."""
    items: object = None
    if isinstance(body, dict):
        data = body.get("data")
        if isinstance(data, list):
            items = data
        elif isinstance(data, dict):
            items = data.get("instances")
            attributes = data.get("attributes")
            if items is None and isinstance(attributes, dict):
                items = attributes.get("instances")
        elif isinstance(body.get("instances"), list):
            items = body["instances"]
    if not isinstance(items, list):
        raise _malformed(operation, "no instance list found", body)
    report = on_skip or _skip_nothing
    flat = [_flatten(item) for item in items]
    try:
        instances = _INSTANCE_LIST.validate_python(flat)
    except (ValidationError, ValueError, TypeError):
        instances = [_instance_or_unknown(item, operation, report) for item in flat]
    at: dict[str, int] = {}
    unique: list[Instance] = []
    for instance in instances:
        first = at.get(instance.id)
        if first is None:
            at[instance.id] = len(unique)
            unique.append(instance)
        elif unique[first] == instance:
            report(operation, f"instance {instance.id} listed twice; counted once")
        else:  # which entry is true cannot be known: rule 11, counted in full and never touched
            unique[first] = unique[first].model_copy(update={"status": InstanceStatus.UNKNOWN})
            report(operation, f"instance {instance.id} listed twice, differently; counted in an unknown status")
    return unique


def _instance_or_unknown(item: object, operation: str, on_skip: SkipEntry) -> Instance:
    try:
        return _read_leniently(item, operation, on_skip)
    except (ValidationError, ValueError, TypeError) as exc:
        raw_id = item.get("id") if isinstance(item, dict) else None
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or not str(raw_id):
            raise _malformed(operation, f"instance fields are invalid ({_summarise(exc)})", item) from exc
        name = item.get("name") if isinstance(item, dict) else None
        on_skip(operation, f"instance {raw_id}: fields unreadable ({_summarise(exc)}); counted in an unknown status")
        return Instance(id=str(raw_id), name=name if isinstance(name, str) else None, status=InstanceStatus.UNKNOWN)


def parse_instance_reply(body: object, operation: str, on_skip: SkipEntry | None = None) -> Instance:
    """A single instance: wrapped in `data` or flat at the top level."""
    if isinstance(body, dict) and isinstance(body.get("data"), dict):
        return parse_instance(body["data"], operation, on_skip)
    return parse_instance(body, operation, on_skip)


def _pricing(raw: object) -> Pricing:
    """Missing or null per-resource prices count as 0: they are a small share of an offer's price."""
    if not isinstance(raw, dict):
        return Pricing()
    return Pricing.model_validate({k: v for k, v in raw.items() if k in Pricing.model_fields and v is not None})


SkipEntry = Callable[[str, str], None]  # (endpoint, why): one discovery entry was unreadable


def _skip_nothing(endpoint: str, why: str) -> None:
    pass


_UNREADABLE = (ValidationError, ValueError, TypeError, AttributeError, KeyError, MalformedResponseError)


def _readable(items: object, parse: Callable[[Any], T], what: str, operation: str, on_skip: SkipEntry) -> list[T]:
    """Every entry `parse` can read; each one it cannot is skipped and reported, never fatal."""
    out = []
    for item in items if isinstance(items, list) else []:
        try:
            out.append(parse(item))
        except _UNREADABLE as exc:
            on_skip(operation, f"{what}: {_summarise(exc)}")
    return out


def _entries(body: object, key: str, operation: str) -> list[object]:
    data = body.get("data") if isinstance(body, dict) else None
    items = data.get(key) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise _malformed(operation, f"no {key[:-1]} list found", body)
    return items


def parse_locations(
    body: object, operation: str = "list_locations", on_skip: SkipEntry = _skip_nothing
) -> list[Location]:
    """Every readable location; an unreadable location or GPU entry is skipped, not fatal."""
    entries = _entries(body, "locations", operation)
    return _readable(entries, lambda item: _parse_location(item, operation, on_skip), "location", operation, on_skip)


def _location_gpu(location_id: str, gpu: Any) -> LocationGpuOffer:
    resources = gpu.get("resources") or {}
    network = gpu.get("network_features") or {}
    return LocationGpuOffer(
        location_id=location_id,
        gpu_model=gpu.get("v0Name") or gpu["gpuV0Name"],
        display_name=gpu.get("displayName"),
        max_count=gpu.get("max_count") or 0,
        price_per_hr=gpu["price_per_hr"],
        max_vcpus=resources.get("max_vcpus"),
        max_ram_gb=resources.get("max_ram_gb"),
        max_storage_gb=resources.get("max_storage_gb"),
        pricing=_pricing(gpu.get("pricing")),
        dedicated_ip_available=bool(network.get("dedicated_ip_available", False)),
        port_forwarding_available=bool(network.get("port_forwarding_available", True)),
        network_storage_available=bool(network.get("network_storage_available", False)),
    )


def _parse_location(item: Any, operation: str, on_skip: SkipEntry) -> Location:
    location_id = item["id"]
    offers = _readable(
        item.get("gpus"), lambda gpu: _location_gpu(location_id, gpu), "location GPU", operation, on_skip
    )
    return Location(
        id=item["id"],
        city=item.get("city"),
        stateprovince=item.get("stateprovince"),
        country=item.get("country"),
        tier=item.get("tier"),
        gpus=tuple(offers),
    )


def parse_hostnodes(
    body: object, operation: str = "list_hostnodes", on_skip: SkipEntry = _skip_nothing
) -> list[Hostnode]:
    """Every readable host; an unreadable host or GPU entry is skipped, not fatal."""
    entries = _entries(body, "hostnodes", operation)
    return _readable(entries, lambda item: parse_hostnode(item, operation, on_skip), "hostnode", operation, on_skip)


def _host_gpu(gpu: Any) -> HostnodeGpu:
    return HostnodeGpu(
        gpu_model=gpu.get("v0Name") or gpu["gpuV0Name"],
        available_count=gpu.get("availableCount") or 0,
        price_per_hr=gpu["price_per_hr"],
    )


def parse_hostnode(item: object, operation: str, on_skip: SkipEntry = _skip_nothing) -> Hostnode:
    if not isinstance(item, dict):
        raise _malformed(operation, "hostnode is not an object", item)
    try:
        available = item.get("available_resources") or {}
        location = item.get("location") or {}
        return Hostnode(
            id=item["id"],
            location_id=item.get("location_id") or location.get("uuid"),
            engine=item.get("engine"),
            uptime_percentage=item.get("uptime_percentage"),
            gpus=tuple(_readable(available.get("gpus"), _host_gpu, "hostnode GPU", operation, on_skip)),
            vcpu_count=available.get("vcpu_count"),
            ram_gb=available.get("ram_gb"),
            storage_gb=available.get("storage_gb"),
            max_vcpus_per_gpu=available.get("max_vcpus_per_gpu"),
            max_ram_per_gpu=available.get("max_ram_per_gpu"),
            has_public_ip_available=bool(available.get("has_public_ip_available", False)),
            available_ports=tuple(available.get("available_ports") or ()),
            pricing=_pricing(item.get("pricing")),
            city=location.get("city"),
            stateprovince=location.get("stateprovince"),
            country=location.get("country"),
            tier=location.get("tier"),
        )
    except (ValidationError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _malformed(operation, f"hostnode fields are invalid ({_summarise(exc)})", item) from exc


def _gpus_wire(model: str, count: int, wire_format: WireFormat) -> object:
    if wire_format == "spec":
        return [{"gpuV0Name": model, "count": count}]
    return {model: {"count": count}}


def _cloud_config_text(cloud_init: Mapping[str, Any]) -> str:
    """The spec wants cloud-init as text; JSON is valid YAML, so no YAML writer is needed."""
    return "#cloud-config\n" + json.dumps(cloud_init, indent=2, sort_keys=True)


def create_body(request: CreateInstanceRequest, wire_format: WireFormat) -> JsonObject:
    resources: JsonObject = {
        "vcpu_count": request.vcpu_count,
        "ram_gb": request.ram_gb,
        "storage_gb": request.storage_gb,
    }
    if request.gpu_model is not None and request.gpu_count > 0:
        resources["gpus"] = _gpus_wire(request.gpu_model, request.gpu_count, wire_format)
    attributes: JsonObject = {
        "name": request.name,
        "type": "virtualmachine",
        "image": request.image,
        "resources": resources,
        "useDedicatedIp": request.use_dedicated_ip,
    }
    if request.ssh_key is not None:
        attributes["ssh_key"] = request.ssh_key
    else:
        attributes["ssh_key_id"] = request.ssh_key_id
    if request.location_id is not None:
        attributes["location_id"] = request.location_id
    if request.hostnode_id is not None:
        attributes["hostnode_id"] = request.hostnode_id
    if request.port_forwards:
        attributes["port_forwards"] = [pf.model_dump() for pf in request.port_forwards]
    if request.cloud_init is not None:
        attributes["cloud_init"] = (
            _cloud_config_text(request.cloud_init) if wire_format == "spec" else request.cloud_init
        )
    return {"data": {"type": "virtualmachine", "attributes": attributes}}


def modify_body(request: ModifyInstanceRequest, wire_format: WireFormat) -> JsonObject:
    body: JsonObject = {}
    if request.vcpu_count is not None:
        body["cpuCores"] = request.vcpu_count
    if request.ram_gb is not None:
        body["ramGb"] = request.ram_gb
    if request.storage_gb is not None:
        body["diskGb"] = request.storage_gb
    if request.gpu_model is not None and request.gpu_count is not None:
        body["gpus"] = (  # the documented modify body, which the Go clients send too
            {request.gpu_model: {"count": request.gpu_count}}
            if wire_format == "observed"
            else {"gpuV0Name": request.gpu_model, "count": request.gpu_count}
        )
    return body
