"""Every wait of the client is bounded (DESIGN rule 14): a total deadline per call, a clamped
Retry-After, a capped reply size, SIGTERM cutting waits, and a hook before every attempt."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from autoscaler.common.clock import ManualClock, SystemClock
from autoscaler.tensordock import MalformedResponseError, RateLimitedError, RequestTimeoutError, ServerError
from autoscaler.tensordock.client import CallNotSentError, TensorDockClient

from .conftest import TOKEN
from .rawhttp import raw_server, read_request, reply, trickle

LISTING = b'{"data": {"instances": []}}'


def real_client(url: str, **options: object) -> TensorDockClient:
    settings: dict[str, object] = {"clock": SystemClock(), "max_attempts": 1, "read_timeout_s": 5.0}
    return TensorDockClient(url, TOKEN, **(settings | options))  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["body", "head"])
def test_a_reply_trickled_one_byte_at_a_time_fails_the_call_by_its_deadline(where: str) -> None:
    """Each byte comes well within read_timeout_s (5 s), so only a deadline on the whole call ends it."""

    def slow_loris(conn: socket.socket) -> None:
        read_request(conn)
        whole = reply("200 OK", LISTING + b" " * 400)
        if where == "body":
            conn.sendall(whole[: whole.index(b"\r\n\r\n") + 4])
            trickle(conn, whole[whole.index(b"\r\n\r\n") + 4 :], 0.05)
        else:
            trickle(conn, whole, 0.05)

    with raw_server(slow_loris) as server:
        client = real_client(server.url, call_deadline_s=1.0)
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            client.list_instances()
        took = time.monotonic() - started
        client.close()
    assert took < 3.0  # the deadline (1 s) plus scheduling slack; the trickle alone would take 20+ s


def test_an_oversized_reply_is_a_failed_call_read_no_further_than_the_cap() -> None:
    sent = {"bytes": 0}

    def huge(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b" " * 65536
        for _ in range(3200):  # 200 MB, never announced by a Content-Length
            conn.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent["bytes"] += len(chunk)

    with raw_server(huge) as server:
        client = real_client(server.url, max_reply_bytes=1024 * 1024)
        with pytest.raises(MalformedResponseError, match="max_reply_bytes"):
            client.list_instances()
        client.close()
    assert sent["bytes"] < 50 * 1024 * 1024  # the reader stopped early; the socket buffers hold the rest


def test_a_declared_oversized_reply_is_refused_before_its_body_is_read() -> None:
    def announced(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 209715200\r\n\r\n")
        time.sleep(2)

    with raw_server(announced) as server:
        client = real_client(server.url, max_reply_bytes=1024 * 1024)
        started = time.monotonic()
        with pytest.raises(MalformedResponseError, match="209715200 bytes"):
            client.list_instances()
        assert time.monotonic() - started < 1.5
        client.close()


def rate_limited_then_ok(retry_after: str, log: list[float], clock: ManualClock) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        log.append(clock.now())
        if len(log) == 1:
            return httpx.Response(429, headers={"Retry-After": retry_after}, json={"error": "slow down"})
        return httpx.Response(200, content=LISTING)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    ("header", "waited"),
    [("inf", 300.0), ("1e9", 300.0), ("1e999", 300.0), ("-5", 0.0), ("nan", None), ("soon", None), ("7", 7.0)],
)
def test_retry_after_is_clamped_and_garbage_is_no_overflow(header: str, waited: float | None) -> None:
    """inf used to raise OverflowError in sleep; 1e9 wedged the daemon. Garbage is no Retry-After at all:
    the client's own back-off schedule (2 s, jittered by up to 2 s, for the first retry)."""
    clock = ManualClock()
    log: list[float] = []
    client = TensorDockClient(
        "http://td.invalid", TOKEN, clock=clock, transport=rate_limited_then_ok(header, log, clock)
    )
    assert client.list_instances() == []
    assert len(log) == 2
    if waited is None:
        assert 2.0 <= log[1] - log[0] <= 4.01
    else:
        assert log[1] - log[0] == pytest.approx(waited, abs=0.01)


def test_a_retry_after_past_the_deadline_is_not_waited_for_on_the_real_clock() -> None:
    clock = SystemClock()
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        return httpx.Response(429, headers={"Retry-After": "1e9"}, json={"error": "slow down"})

    client = TensorDockClient(
        "http://td.invalid", TOKEN, clock=clock, call_deadline_s=2.0, transport=httpx.MockTransport(handler)
    )
    started = time.monotonic()
    with pytest.raises(CallNotSentError, match="deadline"):
        client.list_instances()
    assert time.monotonic() - started < 1.5 and len(calls) == 1


def cancel_after(event: threading.Event, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, event.set)
    timer.start()
    return timer


def test_cancel_cuts_the_back_off_sleep_and_no_new_attempt_starts() -> None:
    attempts: list[float] = []

    def down(request: httpx.Request) -> httpx.Response:
        attempts.append(time.monotonic())
        return httpx.Response(503, json={"error": "maintenance"})

    cancel = threading.Event()
    client = TensorDockClient(
        "http://td.invalid",
        TOKEN,
        clock=SystemClock(),
        max_attempts=5,
        backoff_initial_s=20.0,
        call_deadline_s=600,
        transport=httpx.MockTransport(down),
        cancel=cancel,
    )
    timer = cancel_after(cancel, 0.3)
    started = time.monotonic()
    with pytest.raises((ServerError, CallNotSentError)):
        client.list_instances()
    timer.cancel()
    assert time.monotonic() - started < 2.0  # the back-off alone is 20-40 s
    assert len(attempts) == 1


def test_cancel_cuts_the_retry_after_wait() -> None:
    attempts: list[float] = []

    def limited(request: httpx.Request) -> httpx.Response:
        attempts.append(time.monotonic())
        return httpx.Response(429, headers={"Retry-After": "100"}, json={"error": "slow down"})

    cancel = threading.Event()
    client = TensorDockClient(
        "http://td.invalid",
        TOKEN,
        clock=SystemClock(),
        call_deadline_s=600,
        transport=httpx.MockTransport(limited),
        cancel=cancel,
    )
    timer = cancel_after(cancel, 0.3)
    started = time.monotonic()
    with pytest.raises(CallNotSentError, match="shutting down"):
        client.list_instances()
    timer.cancel()
    assert time.monotonic() - started < 2.0 and len(attempts) == 1
    with pytest.raises(CallNotSentError):  # and nothing new starts afterwards
        client.list_instances()
    assert len(attempts) == 1


class Deposed(Exception):
    pass


def test_the_hook_runs_before_every_attempt_even_after_a_429_wait_and_can_stop_it() -> None:
    clock = ManualClock()
    sent: list[float] = []
    checked: list[tuple[str, float]] = []

    def limited(request: httpx.Request) -> httpx.Response:
        sent.append(clock.now())
        return httpx.Response(429, headers={"Retry-After": "6"}, json={"error": "slow down"})

    def check(operation: str) -> None:
        checked.append((operation, clock.now()))
        if len(checked) > 1:
            raise Deposed("lost the lease during the wait")

    client = TensorDockClient(
        "http://td.invalid", TOKEN, clock=clock, transport=httpx.MockTransport(limited), before_attempt=check
    )
    with pytest.raises(Deposed):
        client.start_instance("i-1")
    assert len(sent) == 1  # the retry after Retry-After never went on the wire
    assert [op for op, _ in checked] == ["start_instance", "start_instance"]
    assert checked[1][1] - checked[0][1] == pytest.approx(6.0)  # checked after the wait, not before it


def test_a_rate_limited_call_still_ends_by_its_deadline_on_the_real_clock() -> None:
    """A pause already in force (another call's 429) is not waited past this call's deadline either."""
    client = TensorDockClient(
        "http://td.invalid",
        TOKEN,
        clock=SystemClock(),
        call_deadline_s=1.0,
        transport=httpx.MockTransport(lambda r: httpx.Response(200, content=LISTING)),
    )
    client._bucket.pause(30)
    started = time.monotonic()
    with pytest.raises(CallNotSentError):
        client.list_instances()
    assert time.monotonic() - started < 0.5
    assert not isinstance(CallNotSentError("x", "y"), RateLimitedError)


def test_the_hook_runs_before_a_retry_after_back_off_too() -> None:
    clock = ManualClock()
    sent: list[str] = []
    checked: list[float] = []

    def failing(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        return httpx.Response(503, json={"error": "maintenance"})

    def check(operation: str) -> None:
        checked.append(clock.now())
        if len(checked) == 3:
            raise Deposed("fenced before the third attempt")

    client = TensorDockClient(
        "http://td.invalid",
        TOKEN,
        clock=clock,
        max_attempts=5,
        backoff_initial_s=2.0,
        transport=httpx.MockTransport(failing),
        before_attempt=check,
    )
    with pytest.raises(Deposed):
        client.delete_instance("i-1")  # idempotent: retried after a back-off sleep
    assert sent == ["DELETE", "DELETE"]
    assert checked[1] > checked[0] and checked[2] > checked[1]  # each check came after its back-off
