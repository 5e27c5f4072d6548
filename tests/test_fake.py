"""The fake TensorDock behaves like the real one: lifecycle, capacity, billing, rules, faults."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from autoscaler.common.clock import ManualClock
from autoscaler.tensordock import CapacityUnavailableError, InstanceStatus, ModifyInstanceRequest
from autoscaler.tensordock.fake import FakeTensorDockApp, Faults, in_process_transport
from autoscaler.tensordock.wire import create_body

from .conftest import RTX4090, TOKEN, MakeClient, MakeFake, create_request, location_of, stopped_instance


def raw(app: FakeTensorDockApp, method: str, path: str, body: Any = None, token: str = TOKEN) -> httpx.Response:
    with httpx.Client(transport=in_process_transport(app), base_url="http://fake") as http:
        return http.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})


def test_lifecycle_follows_the_configured_delays(
    make_fake: MakeFake, make_client: MakeClient, clock: ManualClock
) -> None:
    app = make_fake("observed")
    client = make_client(app)
    inst = client.create_instance(create_request(location_of(app, "Chicago")))
    statuses = []
    for step in (10, 10, 9.9, 0.2):  # create takes 30 s
        clock.advance(step)
        statuses.append(client.get_instance(inst.id).status)
    assert statuses == [InstanceStatus.STARTING] * 3 + [InstanceStatus.RUNNING]
    client.stop_instance(inst.id)
    clock.advance(9.9)
    assert client.get_instance(inst.id).status is InstanceStatus.STOPPING
    clock.advance(0.2)
    assert client.get_instance(inst.id).status is InstanceStatus.STOPPED


def test_billing_charges_rate_while_up_and_storage_while_stopped(
    make_fake: MakeFake, make_client: MakeClient, clock: ManualClock
) -> None:
    app = make_fake("spec")
    client = make_client(app)
    inst = client.create_instance(create_request(location_of(app, "Chicago")))
    host = app.state.get(inst.id).host
    rate = host.pricing.hourly_price(host.gpus[RTX4090].price_per_hr, 1, 8, 32, 100)
    storage = host.pricing.storage_price(100)
    clock.advance(3600)  # 30 s starting + the rest running: all billed at the full rate
    client.stop_instance(inst.id)
    clock.advance(10 + 5 * 3600)  # 10 s stopping at the full rate, then 5 h of storage
    assert app.state.settle() and app.state.bill().total_usd == pytest.approx(
        rate * (3600 + 10) / 3600 + storage * 5, rel=1e-9
    )
    client.delete_instance(inst.id)
    before = app.state.bill().total_usd
    clock.advance(24 * 3600)
    app.state.settle()
    assert app.state.bill().total_usd == pytest.approx(before)
    bill = raw(app, "GET", "/_fake/bill").json()
    assert bill["total_usd"] == pytest.approx(before)
    assert bill["balance_usd"] == pytest.approx(10_000 - before)


@pytest.mark.parametrize("bill_storage", [True, False])
def test_the_fakes_billing_rate_in_each_phase(make_fake: MakeFake, make_client: MakeClient, bill_storage: bool) -> None:
    app = make_fake("spec")
    app.state.bill_stopped_storage = bill_storage
    inst = app.state.get(make_client(app).create_instance(create_request(location_of(app, "Chicago"))).id)
    assert inst.rate_hourly > inst.storage_rate_hourly > 0
    for phase, rate in (
        ("starting", inst.rate_hourly),
        ("running", inst.rate_hourly),
        ("stopping", inst.rate_hourly),  # billed in full until it has stopped
        ("stopped", inst.storage_rate_hourly if bill_storage else 0.0),
    ):
        inst.phase = phase  # type: ignore[assignment]
        assert app.state.billing_rate(inst) == rate, phase


def test_latency_delays_the_reply_not_the_work(
    make_fake: MakeFake, make_client: MakeClient, clock: ManualClock
) -> None:
    app = make_fake("observed", faults=Faults(latency_s=7.0))
    client = make_client(app)
    inst = client.create_instance(create_request(location_of(app, "Chicago")))
    clock.advance(3600)
    called = clock.now()
    client.stop_instance(inst.id)
    assert clock.now() == pytest.approx(called + 7.0), "the reply came late"
    app.state.settle()
    # the stop took effect on arrival: 10 s of stopping from the call, not from the reply
    assert app.state.get(inst.id).phase == "stopping"
    clock.advance(10.0 - 7.0 + 0.01)
    app.state.settle()
    assert app.state.get(inst.id).phase == "stopped"


def test_instances_consume_host_capacity_and_free_it_on_delete(make_fake: MakeFake, make_client: MakeClient) -> None:
    app = make_fake("observed")
    client = make_client(app)
    dallas = location_of(app, "Dallas")

    def offered_4090s() -> int:
        loc = next(loc for loc in client.list_locations() if loc.id == dallas)
        return sum(o.max_count for o in loc.gpus if o.gpu_model == RTX4090)

    assert offered_4090s() == 2
    first = client.create_instance(create_request(dallas, name="fleet-1"))
    client.create_instance(create_request(dallas, name="fleet-2"))
    assert offered_4090s() == 0
    with pytest.raises(CapacityUnavailableError):
        client.create_instance(create_request(dallas, name="fleet-3"))
    client.delete_instance(first.id)
    assert offered_4090s() == 1


def test_location_create_picks_the_cheapest_host_with_room(make_fake: MakeFake, make_client: MakeClient) -> None:
    app = make_fake("observed")
    client = make_client(app)
    inst = client.create_instance(create_request(location_of(app, "Toronto"), gpu_model="geforcertx3090-pcie-24gb"))
    assert app.state.get(inst.id).host.gpus["geforcertx3090-pcie-24gb"].price_per_hr == pytest.approx(0.20)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vcpu_count": 5}, "multiple of 2"),
        ({"ram_gb": 33}, "ramGb must be one of"),
        ({"storage_gb": 100, "vcpu_count": 4}, None),
        ({"gpu_model": RTX4090, "gpu_count": 3}, None),
    ],
)
def test_modify_rules(
    change: dict[str, Any], message: str | None, make_fake: MakeFake, make_client: MakeClient, clock: ManualClock
) -> None:
    app = make_fake("observed")
    client = make_client(app)
    instance_id = stopped_instance(client, clock, create_request(location_of(app, "Chicago"), gpu_count=2))
    if message is None:
        client.modify_instance(instance_id, ModifyInstanceRequest(**change))
        after = client.get_instance(instance_id)
        assert after.vcpu_count == change.get("vcpu_count", 8)
    else:
        with pytest.raises(Exception, match=message):
            client.modify_instance(instance_id, ModifyInstanceRequest(**change))


def test_modify_cannot_shrink_storage_or_remove_gpus(
    make_fake: MakeFake, make_client: MakeClient, clock: ManualClock
) -> None:
    app = make_fake("spec")
    client = make_client(app)
    instance_id = stopped_instance(client, clock, create_request(location_of(app, "Chicago"), gpu_count=2))
    client.modify_instance(instance_id, ModifyInstanceRequest(storage_gb=200))
    with pytest.raises(Exception, match="cannot shrink"):
        client.modify_instance(instance_id, ModifyInstanceRequest(storage_gb=150))
    before = app.state.get(instance_id).rate_hourly
    with pytest.raises(Exception, match="cannot be removed"):
        client.modify_instance(instance_id, ModifyInstanceRequest(gpu_model=RTX4090, gpu_count=1))
    assert app.state.get(instance_id).rate_hourly == before
    assert client.get_instance(instance_id).storage_gb == 200


@pytest.mark.parametrize(
    ("mutate", "detail"),
    [
        (lambda a: a["resources"].update(storage_gb=50), "storage_gb must be at least 100"),
        (lambda a: a.pop("ssh_key"), "ssh_key is required"),
        (lambda a: a.pop("port_forwards"), "port 22"),
        (lambda a: a["resources"].pop("gpus"), "At least one GPU"),
        (lambda a: a.update(image="debian9"), "Unknown image"),
        (lambda a: a.update(location_id="nowhere"), "Location nowhere not found"),
    ],
)
def test_create_validation_as_tensordock_words_it(dialect: str, make_fake: MakeFake, mutate: Any, detail: str) -> None:
    app = make_fake(dialect)
    body = create_body(create_request(location_of(app, "Chicago")), "spec" if dialect == "spec" else "observed")
    mutate(body["data"]["attributes"])
    response = raw(app, "POST", "/api/v2/instances", body)
    assert response.status_code == 400
    if dialect == "spec":
        (error,) = response.json()["errors"]
        assert error["status"] == "400" and detail in error["detail"]
    elif dialect == "documented":
        assert response.json()["status"] == 400 and detail in response.json()["message"]
    else:
        (error,) = response.json()
        assert detail in error["message"] and error["path"]
    assert app.state.instances() == []


def test_capacity_refusals_come_inside_200_in_the_observed_dialect(make_fake: MakeFake) -> None:
    app = make_fake("observed")
    body = create_body(create_request(location_of(app, "Dallas"), gpu_count=8), "observed")
    response = raw(app, "POST", "/api/v2/instances", body)
    assert response.status_code == 200
    assert response.json() == {"status": 400, "error": "No available nodes found"}


def test_wrong_token_gets_401_or_the_documented_403(dialect: str, make_fake: MakeFake) -> None:
    response = raw(make_fake(dialect), "GET", "/api/v2/instances", token="wrong")
    assert response.status_code == (403 if dialect == "documented" else 401)


def test_rate_limit_is_a_sliding_window_with_retry_after(make_fake: MakeFake, clock: ManualClock) -> None:
    app = make_fake("spec", rate_limit=100, rate_window_s=60)
    codes = []
    for _ in range(100):
        codes.append(raw(app, "GET", "/api/v2/instances").status_code)
        clock.advance(0.3)
    refused = raw(app, "GET", "/api/v2/instances")
    assert codes == [200] * 100 and refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 31
    clock.advance(float(refused.headers["Retry-After"]))
    assert raw(app, "GET", "/api/v2/instances").status_code == 200


def test_rate_limit_bursts_can_be_injected(make_fake: MakeFake) -> None:
    app = make_fake("observed", faults=Faults(rate_limit_burst_rate=1.0, rate_limit_burst_length=3))
    codes = [raw(app, "GET", "/api/v2/instances").status_code for _ in range(4)]
    assert codes[:3] == [429, 429, 429]


def test_stale_locations_list_offers_that_cannot_be_created(make_fake: MakeFake, make_client: MakeClient) -> None:
    app = make_fake("observed")
    chicago = location_of(app, "Chicago")
    app.state.faults = Faults(stale_locations=[chicago])
    client = make_client(app)
    listed = next(loc for loc in client.list_locations() if loc.id == chicago)
    assert any(o.gpu_model == RTX4090 and o.max_count > 0 for o in listed.gpus)
    with pytest.raises(CapacityUnavailableError, match="No available nodes found"):
        client.create_instance(create_request(chicago))


def test_stopped_tier0_instances_lose_their_gpus_over_time(
    make_fake: MakeFake, make_client: MakeClient, clock: ManualClock
) -> None:
    app = make_fake("observed", faults=Faults(reclaim_per_hour=2.0), seed=1)
    client = make_client(app)
    instance_id = stopped_instance(client, clock, create_request(location_of(app, "Dallas")))
    for _ in range(12):
        clock.advance(600)
        if client.get_instance(instance_id).status is InstanceStatus.STOPPED_DISASSOCIATED:
            break
    assert client.get_instance(instance_id).status is InstanceStatus.STOPPED_DISASSOCIATED
    host = app.state.get(instance_id).host
    assert app.state.free(host).gpus[RTX4090] == 1  # another renter holds them now
    clock.advance(7 * 3600)
    app.state.settle()
    assert app.state.free(host).gpus[RTX4090] == 2  # the renter left; ours no longer holds any


def test_an_empty_balance_stops_the_fleet(make_fake: MakeFake, make_client: MakeClient, clock: ManualClock) -> None:
    app = make_fake("observed", balance_usd=2.0)
    client = make_client(app)
    inst = client.create_instance(create_request(location_of(app, "Chicago")))
    clock.advance(10 * 3600)
    assert client.get_instance(inst.id).status is InstanceStatus.STOPPED
    with pytest.raises(Exception, match="Insufficient balance"):
        client.create_instance(create_request(location_of(app, "Chicago"), name="fleet-2"))


def test_observed_dialect_rotates_through_every_list_and_get_shape(
    make_fake: MakeFake, make_client: MakeClient
) -> None:
    app = make_fake("observed")
    client = make_client(app)
    client.create_instance(create_request(location_of(app, "Chicago")))
    shapes = set()
    for _ in range(4):
        body = raw(app, "GET", "/api/v2/instances").json()
        data = body["data"]
        shapes.add("list" if isinstance(data, list) else "attributes" if "attributes" in data else "instances")
    assert shapes == {"list", "attributes", "instances"}
    readings = {instance for _ in range(4) for instance in client.list_instances()}
    assert len(readings) == 1  # four wire shapes, one reading


def test_fault_settings_can_be_changed_over_http(make_fake: MakeFake) -> None:
    app = make_fake("observed")
    assert raw(app, "PUT", "/_fake/faults", {"timeout_rate": 0.5}).json()["timeout_rate"] == 0.5
    assert app.state.faults.timeout_rate == 0.5
    assert raw(app, "PUT", "/_fake/faults", {"timeout_rate": 5}).status_code == 400
    assert app.state.faults.timeout_rate == 0.5
