"""Reading every reply shape in the field notes and the spec, and refusing garbage cleanly."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.tensordock import InstanceStatus, MalformedResponseError
from autoscaler.tensordock.models import CreateInstanceRequest, ModifyInstanceRequest
from autoscaler.tensordock.wire import (
    create_body,
    find_error,
    modify_body,
    parse_hostnodes,
    parse_instance_list,
    parse_instance_reply,
    parse_locations,
)

FLAT = {
    "type": "virtualmachine",
    "id": "abc-1",
    "name": "fleet-x",
    "status": "running",
    "ipAddress": "174.94.145.71",
    "portForwards": [{"internal_port": 22, "external_port": 20456}],
    "rateHourly": 0.272999,
    "resources": {"vcpu_count": 8, "ram_gb": 32, "storage_gb": 100, "gpus": {"geforcertx4090-pcie-24gb": {"count": 1}}},
}
ENVELOPE = {
    "type": "virtualmachine",
    "id": "abc-1",
    "attributes": {
        "name": "fleet-x",
        "status": "running",
        "ipAddress": "174.94.145.71",
        "portForwards": {"22": 20456},
        "rateHourly": 0.272999,
        "resources": {
            "vcpu_count": 8,
            "ram_gb": 32,
            "storage_gb": 100,
            "gpus": [{"gpuV0Name": "geforcertx4090-pcie-24gb", "count": 1}],
        },
    },
}


@pytest.mark.parametrize(
    "body",
    [
        {"data": {"instances": [ENVELOPE]}},
        {"data": {"instances": [FLAT]}},
        {"data": [FLAT]},
        {"data": [ENVELOPE]},
        {"data": {"attributes": {"instances": [FLAT]}}},
    ],
    ids=["spec", "spec-flat-items", "flat-data", "flat-data-envelopes", "attributes-wrapped"],
)
def test_every_list_variant_reads_to_the_same_instance(body: object) -> None:
    (instance,) = parse_instance_list(body)
    assert instance.id == "abc-1"
    assert instance.status is InstanceStatus.RUNNING
    assert instance.gpu_model == "geforcertx4090-pcie-24gb"
    assert instance.gpu_count == 1
    assert instance.rate_hourly == pytest.approx(0.272999)
    assert instance.ip_address == "174.94.145.71"
    assert [(p.internal_port, p.external_port) for p in instance.port_forwards] == [(22, 20456)]
    assert instance.vcpu_count == 8


@pytest.mark.parametrize("body", [FLAT, {"data": FLAT}, {"data": ENVELOPE}], ids=["flat", "wrapped-flat", "spec"])
def test_get_reads_flat_or_wrapped(body: object) -> None:
    instance = parse_instance_reply(body, "get_instance")
    assert (instance.id, instance.name, instance.gpu_count) == ("abc-1", "fleet-x", 1)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("running", InstanceStatus.RUNNING),
        ("Running", InstanceStatus.RUNNING),
        ("Stopped", InstanceStatus.STOPPED),
        ("StoppedDisassociated", InstanceStatus.STOPPED_DISASSOCIATED),
        ("stopped_disassociated", InstanceStatus.STOPPED_DISASSOCIATED),
        ("Stopped-Disassociated", InstanceStatus.STOPPED_DISASSOCIATED),
        ("STARTING", InstanceStatus.STARTING),
        ("deleting", InstanceStatus.DELETING),
        ("hibernating", InstanceStatus.UNKNOWN),
        (None, InstanceStatus.UNKNOWN),
        (7, InstanceStatus.UNKNOWN),
    ],
)
def test_status_is_normalised(raw: object, expected: InstanceStatus) -> None:
    assert InstanceStatus.parse(raw) is expected


def test_create_reply_without_ip_or_resources_reads() -> None:
    instance = parse_instance_reply(
        {"data": {"type": "virtualmachine", "id": "n1", "name": "fleet-n1", "status": "Starting"}}, "create_instance"
    )
    assert instance.status is InstanceStatus.STARTING
    assert instance.ip_address is None and instance.rate_hourly is None and instance.gpus == ()


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"status": 400, "error": "No available nodes found"}, 400, "No available nodes found"),
        ({"error": "Hostnode unavailable", "status": 400}, 400, "Hostnode unavailable"),
        ({"errors": [{"status": "404", "title": "Not Found", "detail": "gone"}]}, 404, "gone"),
        ([{"code": "too_small", "message": "too small", "path": ["resources", "storage_gb"]}], 400, "storage_gb"),
        ({"success": False, "message": "nope"}, None, "nope"),
        ({"status": 400, "message": "Instance is locked", "data": None}, 400, "Instance is locked"),
        ({"status": "error", "message": "Instance is locked"}, None, "Instance is locked"),
        ({"status": "fail", "code": 409, "message": "busy", "data": {}}, 409, "busy"),
        ({"status": "fail", "data": {"instance": "is locked"}}, None, "status fail"),
    ],
)
def test_error_bodies_are_found(body: object, status: int | None, text: str) -> None:
    found = find_error(body)
    assert found is not None
    assert found[0] == status
    assert text in found[1]


@pytest.mark.parametrize(
    "body",
    [
        {"data": {"instances": []}},
        FLAT,
        {"data": ENVELOPE},
        [],
        None,
        "ok",
        {"id": "x", "name": "tdas-x", "status": "error"},  # a flat GET of an instance in error is no error reply
        {"status": "error", "data": {"id": "x", "name": "tdas-x", "status": "error"}},
        {"status": "success", "data": {"type": "success"}},
    ],
)
def test_success_bodies_are_not_errors(body: object) -> None:
    assert find_error(body) is None


@pytest.mark.parametrize(
    "body",
    [
        {"data": "nope"},
        {"data": {"instances": [{"id": ""}]}},
        {"data": {"instances": [{"id": True, "rateHourly": "expensive"}]}},
        {"data": {"instances": [{"name": "tdas-x", "resources": {"gpus": "many"}}]}},
        {"nothing": True},
    ],
)
def test_malformed_lists_raise_a_typed_error(body: object) -> None:
    """No list, or an entry whose id cannot be read: it may be ours, so nothing is decided."""
    with pytest.raises(MalformedResponseError, match="list_instances"):
        parse_instance_list(body)


@pytest.mark.parametrize(
    ("odd", "status", "why"),
    [
        ({"id": "x", "rateHourly": "expensive"}, InstanceStatus.UNKNOWN, "instance x: rateHourly unreadable"),
        ({"id": "x", "resources": {"gpus": "many"}}, InstanceStatus.UNKNOWN, "instance x: resources unreadable"),
        ({"id": "x", "name": {"not": "a name"}}, InstanceStatus.UNKNOWN, "instance x: fields unreadable"),
        (
            {"type": "virtualmachine", "id": "x", "attributes": {"status": "Running", "portForwards": [{"x": "y"}]}},
            InstanceStatus.RUNNING,
            "instance x: portForwards unreadable",
        ),
        ({"id": "x", "name": "tdas-x", "status": "running", "rateHourly": "$0.396"}, InstanceStatus.RUNNING, ""),
        ({"id": "x", "status": "stopped", "rateHourly": "0,396", "ram_gb": "lots"}, InstanceStatus.STOPPED, ""),
    ],
)
def test_an_entry_with_a_readable_id_and_odd_fields_is_read_without_them(
    odd: dict[str, object], status: InstanceStatus, why: str
) -> None:
    """Someone else's VM with an odd field must not blind the daemon to its own fleet, and a price
    written as "$0.396" must not hide a readable status: the odd optional fields are left out (the
    daemon's record stands in for them); an unreadable name or status leaves the id alone, in doubt."""
    skipped: list[str] = []
    good = {"id": "ours", "name": "tdas-a", "status": "running"}
    listed = parse_instance_list({"data": {"instances": [good, odd]}}, on_skip=lambda _, why: skipped.append(why))
    assert [(i.id, i.status) for i in listed] == [("ours", InstanceStatus.RUNNING), ("x", status)]
    assert listed[1].gpus == () and listed[1].rate_hourly is None and listed[1].port_forwards == ()
    assert len(skipped) == 1 and skipped[0].startswith(why or "instance x: ")
    assert listed[1].name == odd.get("name") or status is InstanceStatus.UNKNOWN


def test_a_single_instance_reply_is_read_without_its_odd_optional_fields() -> None:
    skipped: list[str] = []
    body = {"data": {"id": "a", "name": "tdas-a", "status": "running", "rateHourly": "$1.20", "ipAddress": "1.2.3.4"}}
    read = parse_instance_reply(body, "get_instance", on_skip=lambda _, why: skipped.append(why))
    assert (read.status, read.rate_hourly, read.ip_address) == (InstanceStatus.RUNNING, None, "1.2.3.4")
    assert skipped == ["instance a: rateHourly unreadable; left out"]
    with pytest.raises(MalformedResponseError, match="get_instance"):
        parse_instance_reply({"data": {"id": "a", "name": ["x"], "status": "running"}}, "get_instance")


def test_an_id_listed_twice_counts_once_and_in_doubt_when_its_entries_differ() -> None:
    skipped: list[str] = []
    first = {"id": "a", "name": "tdas-a", "status": "running", "resources": {"gpus": {"h100": {"count": 1}}}}
    other = {"id": "b", "status": "running"}
    body = {"data": {"instances": [first, {**first, "status": "stopped"}, other, dict(other)]}}
    listed = parse_instance_list(body, on_skip=lambda _, why: skipped.append(why))
    assert [(i.id, i.status) for i in listed] == [("a", InstanceStatus.UNKNOWN), ("b", InstanceStatus.RUNNING)]
    assert listed[0].gpu_count == 1  # its shape as first listed is kept
    assert skipped == [
        "instance a listed twice, differently; counted in an unknown status",
        "instance b listed twice; counted once",
    ]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
INSTANCE_KEYS = st.sampled_from(
    [
        "id",
        "name",
        "status",
        "rateHourly",
        "resources",
        "portForwards",
        "attributes",
        "gpus",
        "ipAddress",
        "vcpu_count",
        "data",
        "instances",
    ]
)
INSTANCEISH = st.recursive(
    JSON,
    lambda children: st.dictionaries(INSTANCE_KEYS, children, max_size=6) | st.lists(children, max_size=3),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(INSTANCEISH)
def test_any_json_either_parses_or_raises_malformed(body: object) -> None:
    for parse in (
        parse_instance_list,
        lambda b: parse_instance_reply(b, "get_instance"),
        parse_locations,
        parse_hostnodes,
    ):
        with contextlib.suppress(MalformedResponseError):
            parse(body)


def test_create_body_follows_the_wire_format() -> None:
    request = CreateInstanceRequest(
        name="fleet-1",
        image="ubuntu2404",
        gpu_model="l4-pcie-24gb",
        gpu_count=2,
        vcpu_count=8,
        ram_gb=32,
        storage_gb=100,
        location_id="loc",
        ssh_key="ssh-ed25519 AAA",
        cloud_init={"runcmd": ["true"]},
    )
    observed = create_body(request, "observed")["data"]["attributes"]
    spec = create_body(request, "spec")["data"]["attributes"]
    assert observed["resources"]["gpus"] == {"l4-pcie-24gb": {"count": 2}}
    assert spec["resources"]["gpus"] == [{"gpuV0Name": "l4-pcie-24gb", "count": 2}]
    assert observed["cloud_init"] == {"runcmd": ["true"]}
    assert spec["cloud_init"].startswith("#cloud-config\n")
    assert json.loads(spec["cloud_init"].split("\n", 1)[1]) == {"runcmd": ["true"]}
    assert "hostnode_id" not in observed and observed["location_id"] == "loc"


def test_modify_body_follows_the_wire_format() -> None:
    request = ModifyInstanceRequest(vcpu_count=4, gpu_model="l4-pcie-24gb", gpu_count=2)
    assert modify_body(request, "spec") == {"cpuCores": 4, "gpus": {"gpuV0Name": "l4-pcie-24gb", "count": 2}}
    assert modify_body(request, "observed") == {"cpuCores": 4, "gpus": {"l4-pcie-24gb": {"count": 2}}}


def test_request_models_refuse_what_tensordock_would() -> None:
    with pytest.raises(ValueError, match="storage_gb"):
        CreateInstanceRequest(
            name="a",
            image="ubuntu2404",
            gpu_model="x",
            vcpu_count=2,
            ram_gb=4,
            storage_gb=50,
            location_id="l",
            ssh_key="k",
        )
    with pytest.raises(ValueError, match="exactly one of location_id or hostnode_id"):
        CreateInstanceRequest(
            name="a", image="ubuntu2404", gpu_model="x", vcpu_count=2, ram_gb=4, storage_gb=100, ssh_key="k"
        )
    with pytest.raises(ValueError, match="gpu_model and gpu_count together"):
        ModifyInstanceRequest(gpu_model="x")
