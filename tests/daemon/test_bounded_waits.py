"""The real daemon against an API that is down or throttling: SIGTERM cuts every wait (DESIGN rules
9 and 14), and a demand stamped in milliseconds is not taken for fresh (rule 4)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from autoscaler.common.clock import SystemClock
from autoscaler.config import load_settings
from autoscaler.service.daemon import Daemon
from autoscaler.tensordock.fake import FakeServer, build_fake
from tests.support import free_port

from ..conftest import TOKEN
from ..rawhttp import RawServer, raw_server, read_request, reply
from .conftest import CONFIG, RunningDaemon
from .pgtools import daemon_command


def answering(status: str, headers: dict[str, str]) -> Callable[[socket.socket], None]:
    def handler(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(reply(status, b'{"error": "try later"}', headers))

    return handler


@contextlib.contextmanager
def daemon_calling(tmp_path: Path, api: RawServer, edit: Callable[[str], str]) -> Iterator[subprocess.Popen[bytes]]:
    """The real daemon on `api`, its configuration changed by `edit`, once its first call went out."""
    signal_file = tmp_path / "queue.json"
    signal_file.write_text(json.dumps({"queued": 1, "running": 0, "observed_at": time.time()}))
    text = CONFIG.format(
        url=api.url, token=TOKEN, signal=signal_file, store=tmp_path / "state.db", port=free_port(), max_gpus=8
    )
    config = tmp_path / "config.toml"
    config.write_text(edit(text))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TDAS_")}
    with (tmp_path / "daemon.log").open("wb") as log:
        process = subprocess.Popen(
            daemon_command("run", "--config", str(config)), stdout=subprocess.DEVNULL, stderr=log, env=env
        )
    try:
        deadline = time.monotonic() + 60
        while api.requests < 1:
            assert process.poll() is None, (tmp_path / "daemon.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the daemon never called the API"
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.parametrize(
    ("status", "headers"),
    [("503 Service Unavailable", {}), ("429 Too Many Requests", {"Retry-After": "1e9"})],
    ids=["503-back-off", "429-retry-after-1e9"],
)
def test_sigterm_during_an_api_outage_exits_at_once_and_starts_no_new_attempt(
    tmp_path: Path, status: str, headers: dict[str, str]
) -> None:
    """Before: the back-off sleeps (2, 4, 8 s...) ran out first, 17.8 s; a Retry-After of 1e9 never ended."""

    def long_waits(text: str) -> str:
        waits = "max_attempts = 6\nbackoff_initial_s = 20\ncall_deadline_s = 900\nretry_after_max_s = 300"
        assert "max_attempts = 2\nbackoff_initial_s = 0.05" in text
        return text.replace("max_attempts = 2\nbackoff_initial_s = 0.05", waits)

    with raw_server(answering(status, headers)) as api, daemon_calling(tmp_path, api, long_waits) as process:
        time.sleep(1.0)  # now it waits: a 20 s back-off, or a Retry-After clamped to 300 s
        seen = api.requests
        sent_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        took = time.monotonic() - sent_at
        print(f"SIGTERM to exit during a {status} outage: {took:.2f}s")
        assert code == 0
        assert took < 5.0  # ~0.3 s unloaded; the wait it cut was 20 s or more
        assert api.requests == seen  # no new attempt started


def never_answering(conn: socket.socket) -> None:
    read_request(conn)
    time.sleep(300)  # a reply that never comes; the read timeout is longer still


def test_a_call_in_flight_longer_than_the_shutdown_timeout_does_not_keep_the_process(tmp_path: Path) -> None:
    """Before: `stopped` was logged after shutdown_timeout_s, but the process lived on until the
    call's own read timeout (create_timeout_s, 120 s), past systemd's TimeoutStopSec."""

    def long_read_short_shutdown(text: str) -> str:
        text = text.replace("read_timeout_s = 5\n", "read_timeout_s = 280\ncall_deadline_s = 900\n")
        return text.replace("shutdown_timeout_s = 20\n", "shutdown_timeout_s = 2\n")

    with raw_server(never_answering) as api, daemon_calling(tmp_path, api, long_read_short_shutdown) as process:
        time.sleep(0.5)  # the listing is in flight, and stays so
        sent_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        took = time.monotonic() - sent_at
    logged = (tmp_path / "daemon.log").read_text()
    assert code == 0 and took < 30, (took, logged[-2000:])  # 2 s of shutdown timeout, not 280 s of read
    assert '"shutdown_timeout"' in logged and '"clean": false' in logged


@pytest.fixture
def made(tmp_path: Path) -> Iterator[Daemon]:
    """The daemon in this process, not started: its parts are driven by hand."""
    server = FakeServer(build_fake(TOKEN, "documented", clock=SystemClock())).start()
    text = CONFIG.format(
        url=server.url, token=TOKEN, signal=tmp_path / "q.json", store=tmp_path / "s.db", port=0, max_gpus=2
    )
    config = tmp_path / "c.toml"
    config.write_text(text)
    daemon = Daemon(load_settings(config), config)
    try:
        yield daemon
    finally:
        daemon.runtime.close()
        server.stop()


def test_the_signal_handler_takes_no_lock_the_interrupted_main_thread_may_hold(made: Daemon) -> None:
    """A handler runs between two bytecodes of the main thread. Before: it set the stop event, whose
    lock the main loop's `Event.wait` holds at its start; a SIGTERM landing there waited on that lock
    forever, and the daemon never stopped (the case above, once in CI, killed after 60 s)."""
    for signum in (signal.SIGHUP, signal.SIGTERM):
        with made._stop._cond:  # type: ignore[attr-defined]  # held so at the start of Event.wait
            handler = threading.Thread(target=made._on_signal, args=(signum, None), daemon=True)
            handler.start()
            handler.join(timeout=10)
            assert not handler.is_alive(), "the handler waited on a lock the main thread holds"
        reload_asked = made._reload_asked()  # the main loop acts on what the handler recorded
        assert reload_asked == (signum == signal.SIGHUP)
        assert made._stop.is_set() == (signum == signal.SIGTERM)


def test_a_cycle_reaching_the_cycle_lock_after_shutdown_took_it_ends(made: Daemon) -> None:
    """Shutdown takes the cycle lock and keeps it. Before: a cycle whose lease renewal returned
    during the shutdown then waited on that lock forever, and the interpreter waited for its thread
    at exit: SIGTERM never ended the process (found in review)."""
    made.runtime.stopping.set()  # what shutdown does first
    assert made._cycle_lock.acquire(timeout=5)  # and then keeps
    cycle = threading.Thread(target=made._cycle, daemon=True)
    cycle.start()
    cycle.join(timeout=20)
    assert not cycle.is_alive(), "the cycle waits on the lock shutdown keeps"


def test_demand_stamped_in_milliseconds_is_refused_and_holds_the_fleet(
    daemon: Callable[..., RunningDaemon],
) -> None:
    running = daemon()
    an_hour_ago_in_ms = (time.time() - 3600) * 1000
    running.signal_file.write_text(json.dumps({"queued": 2, "running": 0, "observed_at": an_hour_ago_in_ms}))
    running.wait_until(lambda: running.metric("tensordock_autoscaler_signal_up", source="queue-file") == 0.0, "hold")
    time.sleep(2)
    assert running.phases() == []  # before: read as fresh, two instances created for stale demand
    running.set_demand(2)  # the same demand stamped in seconds is acted on
    running.wait_until(lambda: len(running.phases()) == 2, "the scale-up on demand in seconds")
    assert running.stop() == 0
