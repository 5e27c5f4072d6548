"""The real client against the fake, in both dialects: operations, errors, retries, throttling."""

from __future__ import annotations

import io
import logging
import time
from collections import Counter

import pytest

from autoscaler.common.clock import ManualClock, SystemClock
from autoscaler.common.logging import configure_logging, register_secret
from autoscaler.tensordock import (
    AuthenticationError,
    BadRequestError,
    CapacityUnavailableError,
    InstanceStatus,
    ModifyInstanceRequest,
    NotFoundError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    TensorDockError,
    TokenBucket,
)
from autoscaler.tensordock.client import TensorDockClient
from autoscaler.tensordock.fake import FakeServer, Faults, build_fake

from .conftest import (
    RTX4090,
    TOKEN,
    MakeClient,
    MakeFake,
    create_request,
    host_named,
    location_of,
    stopped_instance,
)


class Recorder:
    """An ApiObserver that keeps what it is told."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.waits: list[float] = []

    def request_finished(self, operation: str, outcome: str, seconds: float) -> None:
        self.outcomes[outcome] += 1

    def rate_limit_waited(self, seconds: float) -> None:
        self.waits.append(seconds)


def test_every_operation_through_a_whole_lifecycle(
    dialect: str, make_fake: MakeFake, make_client: MakeClient, clock: ManualClock
) -> None:
    app = make_fake(dialect)
    client = make_client(app)
    locations = client.list_locations()
    assert {loc.city for loc in locations} >= {"Chicago", "Dallas"}
    offer = next(o for loc in locations for o in loc.gpus if o.gpu_model == RTX4090 and loc.city == "Chicago")
    assert offer.price_per_hr == pytest.approx(0.40)
    hostnodes = client.list_hostnodes()
    assert hostnodes and all(h.location_id for h in hostnodes)

    documented = dialect == "documented"
    created = client.create_instance(create_request(offer.location_id))
    # the documented create reply already says running, though the instance still boots
    assert created.status is (InstanceStatus.RUNNING if documented else InstanceStatus.STARTING)
    assert client.get_instance(created.id).ip_address is None  # the IP arrives later, as on TensorDock
    assert client.get_instance(created.id).status is InstanceStatus.STARTING
    clock.advance(31)
    running = client.get_instance(created.id)
    assert running.status is InstanceStatus.RUNNING
    assert running.rate_hourly == pytest.approx(offer.hourly_price(1, 8, 32, 100))
    assert running.ip_address
    if documented:  # the GPU map, when a GET has one, is keyed by display name with v0Name inside
        assert {client.get_instance(created.id).gpu_model for _ in range(2)} == {RTX4090, None}
    else:
        assert running.gpu_model == RTX4090
    assert [i.id for i in client.list_instances()] == [created.id]

    assert client.stop_instance(created.id) is InstanceStatus.STOPPING
    clock.advance(11)
    assert client.get_instance(created.id).status is InstanceStatus.STOPPED
    client.modify_instance(created.id, ModifyInstanceRequest(vcpu_count=16, ram_gb=64, gpu_model=RTX4090, gpu_count=2))
    modified = client.get_instance(created.id)
    if documented:  # the documented GET says nothing of resources: the fake's state does
        fake = app.state.get(created.id)
        assert (fake.gpu_count, fake.vcpu_count, fake.ram_gb) == (2, 16, 64)
    else:
        assert (modified.gpu_count, modified.vcpu_count, modified.ram_gb) == (2, 16, 64)
    assert modified.rate_hourly == pytest.approx(offer.hourly_price(2, 16, 64, 100))
    assert client.start_instance(created.id) is InstanceStatus.STARTING
    clock.advance(21)
    assert client.get_instance(created.id).status is InstanceStatus.RUNNING
    client.delete_instance(created.id)
    with pytest.raises(NotFoundError):
        client.get_instance(created.id)
    assert client.list_instances() == []


def test_hostnode_based_create_lands_on_that_host(dialect: str, make_fake: MakeFake, make_client: MakeClient) -> None:
    app = make_fake(dialect)
    client = make_client(app)
    host_id = host_named(app, "l4-pcie-24gb", "Chicago")
    created = client.create_instance(create_request(hostnode_id=host_id, gpu_model="l4-pcie-24gb"))
    assert app.state.get(created.id).host.id == host_id
    (host,) = [h for h in client.list_hostnodes() if h.id == host_id]
    assert host.gpus[1].available_count == 7


def test_wrong_token_is_an_authentication_error(dialect: str, make_fake: MakeFake, make_client: MakeClient) -> None:
    client = make_client(make_fake(dialect), token="not-the-token")
    with pytest.raises(AuthenticationError) as caught:
        client.list_instances()
    assert caught.value.status == (403 if dialect == "documented" else 401)
    assert "not-the-token" not in str(caught.value)


def test_unknown_instance_is_not_found(dialect: str, make_fake: MakeFake, make_client: MakeClient) -> None:
    client = make_client(make_fake(dialect))
    with pytest.raises(NotFoundError):
        client.get_instance("00000000-0000-4000-8000-000000000000")
    with pytest.raises(NotFoundError):
        client.stop_instance("00000000-0000-4000-8000-000000000000")


def test_bad_requests_carry_the_servers_detail(dialect: str, make_fake: MakeFake, make_client: MakeClient) -> None:
    app = make_fake(dialect)
    client = make_client(app)
    chicago = location_of(app, "Chicago")
    with pytest.raises(BadRequestError, match="Unknown GPU model: nonexistent-gpu") as caught:
        client.create_instance(create_request(chicago, gpu_model="nonexistent-gpu"))
    assert not isinstance(caught.value, CapacityUnavailableError)
    created = client.create_instance(create_request(chicago))
    with pytest.raises(BadRequestError, match="must be stopped"):
        client.modify_instance(created.id, ModifyInstanceRequest(vcpu_count=4))
    with pytest.raises(BadRequestError, match="vCPUs per GPU"):
        client.create_instance(create_request(chicago, vcpu=64))


def test_capacity_errors_are_their_own_kind_even_inside_a_200(
    dialect: str, make_fake: MakeFake, make_client: MakeClient, clock: ManualClock
) -> None:
    app = make_fake(dialect)
    client = make_client(app)
    dallas = location_of(app, "Dallas")  # residential: at most two RTX 4090 on one host
    with pytest.raises(CapacityUnavailableError, match="No available nodes found") as caught:
        client.create_instance(create_request(dallas, gpu_count=4))
    assert caught.value.detail == "No available nodes found"
    host_id = host_named(app, "h100-sxm5-80gb", "New York")
    with pytest.raises(CapacityUnavailableError, match="Hostnode unavailable"):
        client.create_instance(create_request(hostnode_id=host_id, gpu_model=RTX4090))

    instance_id = stopped_instance(client, clock, create_request(dallas))
    app.state.reclaim(instance_id)
    expected = InstanceStatus.STOPPED if dialect == "spec" else InstanceStatus.STOPPED_DISASSOCIATED
    assert client.get_instance(instance_id).status is expected
    with pytest.raises(CapacityUnavailableError, match="no longer available"):
        client.start_instance(instance_id)
    if dialect == "observed":
        assert app.statuses[200] > app.statuses[400]  # those refusals really came inside 200 replies


def test_rate_limited_reports_retry_after_and_then_waits_it_out(
    make_fake: MakeFake, make_client: MakeClient, clock: ManualClock
) -> None:
    app = make_fake("spec", rate_limit=3, rate_window_s=60)
    impatient = make_client(app, max_attempts=1, rate_limit=1000, rate_window_s=1)
    for _ in range(3):
        impatient.list_instances()
    with pytest.raises(RateLimitedError) as caught:
        impatient.list_instances()
    assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 60

    recorder = Recorder()
    patient = make_client(app, rate_limit=1000, rate_window_s=1, observer=recorder)
    started = clock.now()
    assert patient.list_instances() == []
    assert clock.now() - started >= 59  # waited for the window named by Retry-After, on the injected clock
    assert recorder.outcomes["429"] == 1 and recorder.outcomes["200"] == 1


def test_idempotent_calls_retry_server_errors(make_fake: MakeFake, make_client: MakeClient) -> None:
    app = make_fake("observed", faults=Faults(server_error_rate=0.4), seed=7)
    client = make_client(app, max_attempts=8)
    for _ in range(20):
        assert client.list_instances() == []
    assert app.requests["list_instances"] > 20
    assert app.statuses[200] == 20


def test_create_is_not_repeated_after_a_server_error(make_fake: MakeFake, make_client: MakeClient) -> None:
    app = make_fake("observed", faults=Faults(server_error_rate=1.0))
    client = make_client(app)
    with pytest.raises(ServerError):
        client.create_instance(create_request(location_of(app, "Chicago")))
    assert app.requests["create_instance"] == 1


def test_timeouts_are_typed_and_retried_only_when_safe(make_fake: MakeFake, make_client: MakeClient) -> None:
    app = make_fake("observed", faults=Faults(timeout_rate=1.0))
    client = make_client(app, max_attempts=3)
    with pytest.raises(RequestTimeoutError):
        client.list_instances()
    assert app.requests["list_instances"] == 3
    with pytest.raises(RequestTimeoutError):
        client.stop_instance("whatever")
    assert app.requests["stop_instance"] == 1


def test_lost_replies_of_start_and_stop_are_not_repeated_but_delete_is(
    make_fake: MakeFake, make_client: MakeClient, clock: ManualClock
) -> None:
    app = make_fake("spec")
    client = make_client(app)
    created = client.create_instance(create_request(location_of(app, "Chicago")))
    clock.advance(31)
    app.state.faults = Faults(lose_next_replies=1)
    with pytest.raises(RequestTimeoutError):
        client.stop_instance(created.id)
    assert app.requests["stop_instance"] == 1  # not repeated: the next listing tells
    assert client.get_instance(created.id).status is InstanceStatus.STOPPING  # yet it happened

    app.state.faults = Faults(lose_next_replies=1)
    client.delete_instance(created.id)  # first reply lost; the retry's 404 means it is gone
    assert app.requests["delete_instance"] == 2
    assert app.state.instances() == []


@pytest.mark.parametrize("over_sockets", [False, True], ids=["in-process", "socket"])
def test_lost_create_reply_is_resolved_by_name_without_a_duplicate(over_sockets: bool) -> None:
    app = build_fake(TOKEN, "observed", faults=Faults(lost_reply_rate=1.0), clock=SystemClock())
    with FakeServer(app) as server:
        if over_sockets:
            client = TensorDockClient(server.url, TOKEN, read_timeout_s=2, backoff_initial_s=0.01)
        else:
            from autoscaler.tensordock.fake import in_process_transport

            client = TensorDockClient("http://fake/api/v2", TOKEN, transport=in_process_transport(app))
        with client:
            request = create_request(location_of(app, "Chicago"), name="fleet-lost-1")
            with pytest.raises(RequestTimeoutError):
                client.create_instance(request)
            app.state.faults = Faults()
            found = [i for i in client.list_instances() if i.name == "fleet-lost-1"]
    assert len(found) == 1
    assert app.requests["create_instance"] == 1
    assert len(app.state.instances()) == 1


def test_token_bucket_never_exceeds_the_limit_in_any_window() -> None:
    clock = ManualClock()
    bucket = TokenBucket(clock, limit=10, window_s=60, burst=3)
    stamps = []
    for _ in range(100):
        bucket.acquire()
        stamps.append(clock.now())
    for i, start in enumerate(stamps):
        in_window = [t for t in stamps[i:] if t < start + 60]
        assert len(in_window) <= 10
    assert stamps[-1] - stamps[0] >= (100 - 3) / (10 - 3) * 60 - 1e-6


def test_token_bucket_spares_a_call_only_with_half_its_burst_free_now_or_by_a_later_time() -> None:
    """`spare(at)`: what the bucket will hold at `at` if nothing is taken before (the simulator's
    watch asks it for readings ahead of its clock); never past the burst, never inside a pause."""
    clock = ManualClock(1000.0)
    bucket = TokenBucket(clock, limit=100, window_s=60.0)  # burst 10, refilled at 1.5 a second
    for _ in range(9):
        bucket.acquire()
    assert not bucket.spare()  # 1 token left, 5 needed
    assert not bucket.spare(at=1002.0)  # 4
    assert bucket.spare(at=1003.0)  # 5.5
    assert not bucket.spare(at=900.0)  # a time already past counts as now
    clock.advance(1000.0)
    assert bucket.spare()  # full again, capped at the burst
    bucket.pause(30.0)
    assert not bucket.spare() and not bucket.spare(at=clock.now() + 29.0)
    assert bucket.spare(at=clock.now() + 30.0)


def test_token_bucket_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(ManualClock(), limit=10, window_s=1, burst=10)
    with pytest.raises(ValueError, match="limit >= 2"):
        TokenBucket(ManualClock(), limit=1, window_s=1)


def test_burst_of_300_calls_never_draws_a_429_over_real_sockets() -> None:
    app = build_fake(TOKEN, "observed", clock=SystemClock(), rate_limit=50, rate_window_s=1.0)
    recorder = Recorder()
    with (
        FakeServer(app) as server,
        TensorDockClient(
            server.url, TOKEN, rate_limit=50, rate_window_s=1.0, rate_burst=5, observer=recorder
        ) as client,
    ):
        started = time.monotonic()
        for _ in range(300):
            client.list_instances()
        elapsed = time.monotonic() - started
    assert recorder.outcomes == Counter({"200": 300})
    assert app.statuses == Counter({200: 300})
    assert recorder.waits, "the client must have throttled itself"
    assert elapsed >= (300 - 5) / 45 * 0.95  # paced at (limit - burst) per window


def test_the_token_never_leaks(make_fake: MakeFake, make_client: MakeClient, caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", json_lines=True, stream=stream)
    caplog.set_level(logging.DEBUG)
    app = make_fake("observed", faults=Faults(server_error_rate=0.3, timeout_rate=0.1), seed=3, rate_limit=5)
    recorder = Recorder()
    client = make_client(app, observer=recorder, max_attempts=2)
    errors: list[TensorDockError] = []
    chicago = location_of(app, "Chicago")
    for attempt in range(25):
        try:
            client.list_instances()
            client.create_instance(create_request(chicago, name=f"fleet-{attempt}", gpu_model="bogus"))
        except TensorDockError as exc:
            errors.append(exc)
    assert errors, "the fault mix must have produced errors"
    texts = [
        stream.getvalue(),
        caplog.text,
        repr(client),
        *map(str, errors),
        *map(repr, errors),
        str(recorder.outcomes),
    ]
    assert stream.getvalue().count("tensordock_request") > 25
    for text in texts:
        assert TOKEN not in text
    register_secret(TOKEN)
    configure_logging("DEBUG", json_lines=True, stream=stream)
    import structlog

    structlog.get_logger("test").info("leak attempt", header=f"Bearer {TOKEN}")
    assert TOKEN not in stream.getvalue() and "Bearer ***" in stream.getvalue()
    configure_logging("WARNING")
