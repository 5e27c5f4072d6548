"""Tolerant reading (issue: the documented API): discovery noise is skipped and counted, GPU maps
keyed by display name are read by their inner v0Name, errors inside a 2xx are errors, and the
fake's new faults reach the real client over its transport."""

from __future__ import annotations

import pytest

from autoscaler.common.clock import ManualClock
from autoscaler.engine.metrics import CoreMetrics
from autoscaler.tensordock import (
    AuthenticationError,
    BadRequestError,
    CapacityUnavailableError,
    RateLimitedError,
)
from autoscaler.tensordock.errors import is_capacity_message
from autoscaler.tensordock.fake import Faults
from autoscaler.tensordock.fake.state import CAPACITY_WORDINGS
from autoscaler.tensordock.models import CreateInstanceRequest
from autoscaler.tensordock.wire import create_body, find_error, parse_instance_reply

from .conftest import RTX4090, MakeClient, MakeFake, create_request, host_named, location_of
from .test_fake import raw


def test_a_gpu_map_keyed_by_display_name_is_read_by_its_inner_v0name() -> None:
    detail = {"id": "i", "status": "Running", "gpus": {"NVIDIA GeForce RTX 4090": {"count": 2, "v0Name": RTX4090}}}
    instance = parse_instance_reply(detail, "get_instance")
    assert (instance.gpu_model, instance.gpu_count) == (RTX4090, 2)


def test_a_status_and_message_inside_a_200_is_an_error() -> None:
    assert find_error({"status": 400, "message": "No available public IP"}) == (400, "No available public IP")
    assert find_error({"data": {"status": "running"}, "status": 200}) is None


@pytest.mark.parametrize("wording", CAPACITY_WORDINGS)
def test_every_capacity_wording_of_the_field_notes_is_capacity(wording: str) -> None:
    assert is_capacity_message(wording)


def test_discovery_junk_is_skipped_counted_and_the_rest_used(make_fake: MakeFake, make_client: MakeClient) -> None:
    clean = make_client(make_fake()).list_hostnodes()
    metrics = CoreMetrics()
    client = make_client(make_fake(faults=Faults(discovery_junk=True)), observer=metrics)
    locations = client.list_locations()
    hosts = client.list_hostnodes()
    assert {h.id for h in hosts if h.gpus} == {h.id for h in clean if h.gpus}
    assert {loc.id for loc in locations} >= {loc.id for loc in make_client(make_fake()).list_locations()}
    skipped = {
        endpoint: metrics.discovery_skipped.labels(endpoint)._value.get()
        for endpoint in ("list_locations", "list_hostnodes")
    }
    assert skipped["list_locations"] >= 3 and skipped["list_hostnodes"] >= 3


def test_locations_can_drain_while_hostnodes_have_stock(make_fake: MakeFake, make_client: MakeClient) -> None:
    client = make_client(make_fake(faults=Faults(locations_empty=True)))
    assert client.list_locations() == []
    assert any(g.available_count for h in client.list_hostnodes() for g in h.gpus)


def test_a_missing_token_is_403_and_an_authentication_error(make_fake: MakeFake, make_client: MakeClient) -> None:
    with pytest.raises(AuthenticationError):
        make_client(make_fake(), token="wrong").list_instances()


def test_a_429_without_retry_after_and_with_html_backs_off_and_recovers(
    make_fake: MakeFake, make_client: MakeClient, clock: ManualClock
) -> None:
    app = make_fake(
        faults=Faults(rate_limit_burst_rate=1.0, rate_limit_burst_length=2, retry_after_header=False, html_errors=True)
    )
    client = make_client(app, max_attempts=4)
    started = clock.now()
    app.state.faults = app.state.faults.model_copy(update={"rate_limit_burst_rate": 0.0})
    app._burst_left = 2
    assert client.list_instances() == []
    assert clock.now() - started >= 2.0  # the client's own back-off schedule, not a zero wait
    app._burst_left = 10
    with pytest.raises(RateLimitedError):
        client.list_instances()


def test_hostnode_creates_take_their_ports_from_the_host(make_fake: MakeFake, make_client: MakeClient) -> None:
    app = make_fake()
    client = make_client(app)
    host_id = host_named(app, "l4-pcie-24gb", "Chicago")
    (host,) = [h for h in client.list_hostnodes() if h.id == host_id]
    assert host.available_ports
    taken = host.available_ports[0]
    client.create_instance(create_request(hostnode_id=host_id, gpu_model="l4-pcie-24gb", name="tdas-a"))
    (after,) = [h for h in client.list_hostnodes() if h.id == host_id]
    assert 20022 not in after.available_ports and taken in after.available_ports
    with pytest.raises(BadRequestError, match="port"):  # 20022 is held now
        client.create_instance(create_request(hostnode_id=host_id, gpu_model="l4-pcie-24gb", name="tdas-b"))


def test_varied_capacity_wording_is_still_a_capacity_refusal(make_fake: MakeFake, make_client: MakeClient) -> None:
    app = make_fake(faults=Faults(varied_capacity_wording=True, stale_create_rate=1.0))
    client = make_client(app)
    for n in range(6):
        with pytest.raises(CapacityUnavailableError):
            client.create_instance(create_request(location_of(app, "Chicago"), name=f"tdas-{n}"))


def test_ssh_key_and_ssh_key_id_are_exclusive(make_fake: MakeFake, make_client: MakeClient) -> None:
    app = make_fake()
    client = make_client(app)
    body = create_body(create_request(location_of(app, "Chicago")), "documented")
    body["data"]["attributes"]["ssh_key_id"] = "key-1"
    both = raw(app, "POST", "/api/v2/instances", body)
    assert both.status_code == 400 and "not both" in both.json()["message"]
    with pytest.raises(ValueError, match="exactly one"):
        CreateInstanceRequest(**{**create_request(location_of(app, "Chicago")).model_dump(), "ssh_key_id": "k"})
    by_id = create_request(location_of(app, "Chicago"), name="tdas-k").model_copy(
        update={"ssh_key": None, "ssh_key_id": "key-1"}
    )
    assert client.create_instance(by_id).name == "tdas-k"


def test_write_files_with_encoding_is_refused_as_documented(make_fake: MakeFake, make_client: MakeClient) -> None:
    app = make_fake()
    request = create_request(location_of(app, "Chicago")).model_copy(
        update={"cloud_init": {"write_files": [{"path": "/x", "content": "eA==", "encoding": "b64"}]}}
    )
    with pytest.raises(BadRequestError, match="encoding"):
        make_client(app).create_instance(request)


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ({"ram_gb": 40}, None),  # steps of 8 GB, not the observed fixed set
        ({"ram_gb": 36}, "multiple of 8"),
        ({"storage_gb": 250}, None),
        ({"storage_gb": 220}, "multiple of 50"),
        ({"vcpu_count": 5}, "multiple of 2"),
    ],
)
def test_documented_modify_steps(
    change: dict[str, int], refused: str | None, make_fake: MakeFake, make_client: MakeClient, clock: ManualClock
) -> None:
    from autoscaler.tensordock.models import ModifyInstanceRequest

    from .conftest import stopped_instance

    app = make_fake()
    client = make_client(app)
    instance_id = stopped_instance(client, clock, create_request(location_of(app, "Chicago")))
    if refused is None:
        client.modify_instance(instance_id, ModifyInstanceRequest(**change))
        fake = app.state.get(instance_id)
        assert all(getattr(fake, key) == value for key, value in change.items())
    else:
        with pytest.raises(BadRequestError, match=refused):
            client.modify_instance(instance_id, ModifyInstanceRequest(**change))


def test_documented_modify_is_allowed_when_disassociated_and_takes_gpus_only_as_gpuv0name(
    make_fake: MakeFake, make_client: MakeClient, clock: ManualClock
) -> None:
    from .conftest import stopped_instance
    from .test_fake import raw

    app = make_fake()
    client = make_client(app)
    instance_id = stopped_instance(client, clock, create_request(location_of(app, "Chicago")))
    app.state.reclaim(instance_id)  # StoppedDisassociated
    resized = raw(app, "PUT", f"/api/v2/instances/{instance_id}/modify", {"diskGb": 150})
    assert resized.status_code == 200 and app.state.get(instance_id).storage_gb == 150
    other = stopped_instance(client, clock, create_request(location_of(app, "Chicago"), name="tdas-two"))
    keyed = raw(app, "PUT", f"/api/v2/instances/{other}/modify", {"gpus": {RTX4090: {"count": 2}}})
    assert keyed.status_code == 400 and "gpuV0Name" in keyed.json()["message"]
    v0 = raw(app, "PUT", f"/api/v2/instances/{other}/modify", {"gpus": {"gpuV0Name": RTX4090, "count": 2}})
    assert v0.status_code == 200 and app.state.get(other).gpu_count == 2
