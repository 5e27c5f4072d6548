"""Every demand read ends by its timeout, and a time stamp from the future is not believed."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import redis

from autoscaler.signals import SignalError
from autoscaler.signals.base import Demand, Secret, SignalSource, SourceOptions
from autoscaler.signals.combined import CombinedSignal
from autoscaler.signals.postgres import PostgresOptions, PostgresSignal
from autoscaler.signals.redis_queue import RedisOptions, RedisSignal
from autoscaler.signals.registry import SignalSettings, SignalSpec, build_signal
from autoscaler.signals.static import FileOptions, FileSignal

from .conftest import require_server

REDIS_URL = "redis://127.0.0.1:6379/15"


def file_settings(path: Path, timeout_s: float = 1.0) -> SignalSettings:
    return SignalSettings(
        sources=[SignalSpec(kind="file", name="queue-file", options={"path": str(path), "timeout_s": timeout_s})]
    )


def test_a_file_source_pointed_at_a_fifo_with_no_writer_fails_by_its_timeout(tmp_path: Path) -> None:
    fifo = tmp_path / "queue.fifo"
    os.mkfifo(fifo)
    signal = build_signal(file_settings(fifo))
    for _ in range(2):  # and the next cycle's read is not stuck behind the first
        started = time.monotonic()
        with pytest.raises(SignalError, match="queue-file"):
            signal.read(time.time())
        assert time.monotonic() - started < 3.0  # timeout_s 1 plus a second's grace, not forever
    signal.close()


def test_a_fifo_whose_writer_is_slow_fails_by_the_timeout_and_one_that_writes_is_read(tmp_path: Path) -> None:
    fifo = tmp_path / "queue.fifo"
    os.mkfifo(fifo)
    source = FileSignal(FileOptions(path=fifo, timeout_s=0.5))
    document = json.dumps({"queued": 4, "running": 1, "observed_at": time.time()}).encode()

    def writer(stall_s: float) -> None:
        fd = os.open(fifo, os.O_WRONLY)  # blocks until the reader opens
        try:
            os.write(fd, document[:5])
            time.sleep(stall_s)
            with contextlib.suppress(BrokenPipeError):  # the reader gave up: what the test wants
                os.write(fd, document[5:])
        finally:
            os.close(fd)

    took: list[float] = []

    def read_with_writer(stall_s: float) -> Demand:
        thread = threading.Thread(target=writer, args=(stall_s,), daemon=True)
        thread.start()
        time.sleep(0.2)  # let the writer wait in open(): the reader must see it connected
        started = time.monotonic()
        try:
            return source.read(time.time())
        finally:
            took.append(time.monotonic() - started)
            thread.join(timeout=10)

    with pytest.raises(SignalError, match="timeout_s"):
        read_with_writer(3.0)
    assert took[0] < 2.0  # timeout_s is 0.5; the writer stalls 3 s
    assert read_with_writer(0.0).queued_jobs == 4


class Hangs(SignalSource):
    """A plugin whose read never comes back (a server that accepts and never answers)."""

    kind = "hangs"

    def __init__(self) -> None:
        super().__init__(SourceOptions(timeout_s=0.5), "hangs")
        self.release = threading.Event()
        self.calls = 0

    def read(self, now: float) -> Demand:
        self.calls += 1
        self.release.wait(30)
        return Demand(queued_jobs=1, running_jobs=0, observed_at=now, source=self.name)


def test_a_source_that_never_answers_fails_the_read_and_is_not_asked_twice_at_once() -> None:
    source = Hangs()
    signal = CombinedSignal([source])
    started = time.monotonic()
    with pytest.raises(SignalError, match=r"no answer within timeout_s \(0.5s\)"):
        signal.read(time.time())
    assert time.monotonic() - started < 2.5
    with pytest.raises(SignalError, match="previous read has not ended"):
        signal.read(time.time())
    assert source.calls == 1
    source.release.set()
    time.sleep(0.2)
    assert signal.read(time.time()).queued_jobs == 1  # once it ends, reads go on
    signal.close()


@pytest.mark.parametrize(
    ("stamp_of", "hint"),
    [
        (lambda now: (now - 3600) * 1000, "milliseconds"),  # an hour old, in ms
        (lambda now: now * 1_000_000, "microseconds"),
        (lambda now: now + 7200, "clock or unit"),
    ],
)
def test_demand_observed_in_the_future_is_refused_naming_the_likely_unit(tmp_path: Path, stamp_of, hint) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    path = tmp_path / "queue.json"
    path.write_text(json.dumps({"queued": 5, "running": 0, "observed_at": stamp_of(now)}))
    signal = build_signal(file_settings(path))
    with pytest.raises(SignalError, match=f"observed_at.*future.*{hint}"):
        signal.read(now)
    path.write_text(json.dumps({"queued": 5, "running": 0, "observed_at": now + 10}))  # within the skew: fine
    assert signal.read(now).queued_jobs == 5
    signal.close()


def test_a_heartbeat_stamped_in_milliseconds_does_not_keep_a_dead_worker_busy() -> None:
    require_server("Redis", 6379)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    key = f"tdas-test-hearts-{os.getpid()}-{time.monotonic_ns()}"
    now = time.time()
    try:
        client.hset(
            key,
            mapping={
                "tdas-ms": f"busy:{(now - 3600) * 1000}",  # died an hour ago, stamped in ms
                "tdas-live": f"busy:{now}",
                "tdas-ahead": f"busy:{now + 5}",  # a little clock skew is fine
            },
        )
        source = RedisSignal(
            RedisOptions(url=Secret.model_validate({"value": REDIS_URL}), key=f"{key}:q", heartbeat_key=key)
        )
        busy = source.read(now).busy
        assert busy == {"tdas-live": True, "tdas-ahead": True}
        source.close()
    finally:
        client.delete(key)


class QuietingProxy:
    """A TCP proxy whose open connections can go quiet (bytes swallowed both ways, sockets kept
    open: a half-open link) while new connections still pass."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.quiet: set[int] = set()
        self.connections: list[tuple[int, socket.socket, socket.socket]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            number = len(self.connections)
            self.connections.append((number, client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(number, source, target), daemon=True).start()

    def _pump(self, number: int, source: socket.socket, target: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            if number not in self.quiet:
                with contextlib.suppress(OSError):
                    target.sendall(data)

    def silence_open_connections(self) -> None:
        self.quiet |= {number for number, _, _ in self.connections}

    def close(self) -> None:
        self.listener.close()
        for _, client, upstream in self.connections:
            client.close()
            upstream.close()


def test_a_postgres_connection_gone_quiet_is_given_up_and_the_next_read_connects_afresh() -> None:
    """Before: a half-open connection kept its read stuck (psycopg has no client timeout), so every
    later read said 'the previous read has not ended' until TCP gave up, hours later, and the fleet
    held all that while."""
    require_server("postgres", 5432)
    proxy = QuietingProxy(5432)
    dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
    source = PostgresSignal(PostgresOptions(dsn=Secret(value=dsn), query="SELECT 2, 1", timeout_s=1))
    signal = CombinedSignal([source])
    try:
        assert signal.read(time.time()).queued_jobs == 2
        proxy.silence_open_connections()
        with pytest.raises(SignalError, match="no answer within timeout_s"):
            signal.read(time.time())
        deadline = time.monotonic() + 20
        while True:  # the stuck read has ended: the next one connects afresh and answers
            try:
                assert signal.read(time.time()).queued_jobs == 2
                break
            except SignalError as exc:
                assert time.monotonic() < deadline, exc
                time.sleep(0.5)
    finally:
        signal.close()
        proxy.close()


def test_sigterm_gives_up_a_read_in_progress() -> None:
    """Rule 14. Before: a read of a stalled source with timeout_s 60 held SIGTERM for 53 s."""
    source = Hangs()
    source.options = SourceOptions(timeout_s=60)
    signal = CombinedSignal([source])
    signal.cancel = threading.Event()
    threading.Timer(0.3, signal.cancel.set).start()
    started = time.monotonic()
    with pytest.raises(SignalError, match="read abandoned: the daemon is stopping"):
        signal.read(time.time())
    assert time.monotonic() - started < 10  # 60 s before
    source.release.set()
    signal.close()


class Says(SignalSource):
    kind = "says"

    def __init__(self, name: str, busy: dict[str, bool]) -> None:
        super().__init__(SourceOptions(), name)
        self.busy = busy

    def read(self, now: float) -> Demand:
        return Demand(queued_jobs=0, running_jobs=1, observed_at=now, source=self.name, busy=self.busy)


def test_a_worker_busy_in_any_source_is_busy() -> None:
    """Rule 5. Before: the source read last won, so a worker busy with one queue's job and idle
    in another's eyes read as idle, and the daemon stopped it."""
    for order in ((0, 1), (1, 0)):
        sources = [Says("qa", {"w1": True, "w2": False}), Says("qb", {"w1": False, "w3": False})]
        signal = CombinedSignal([sources[i] for i in order])
        assert signal.read(time.time()).busy == {"w1": True, "w2": False, "w3": False}
        signal.close()
