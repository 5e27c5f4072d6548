"""systemd's watchdog: pinged from the scheduler's liveness at WATCHDOG_USEC's pace, not from cycle success."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoscaler.common.clock import SystemClock
from autoscaler.tensordock.fake import FakeServer, Faults, build_fake
from tests.support import free_port

from ..conftest import TOKEN

CONFIG = """
max_signal_age_s = 3600
[tensordock]
base_url = "{api}"
token = "{token}"
max_attempts = 1
read_timeout_s = 2
[fleet]
ssh_key = "ssh-ed25519 AAAATEST watchdog"
[store]
url = "sqlite:///{store}"
[scheduler]
interval_s = {interval}
jitter_s = 0
cycle_stall_s = {stall}
shutdown_timeout_s = 5
[metrics]
port = 0
[log]
json_lines = true
[[signal.sources]]
kind = "{kind}"
options = {options}
"""


class Notify:
    """A NOTIFY_SOCKET that collects what the daemon tells systemd."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError, OSError):
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))

    def pings(self, since: float = 0.0) -> int:
        return sum(1 for at, m in self.messages if at >= since and "WATCHDOG=1" in m.split("\n"))


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[Notify]:
    n = Notify(tmp_path / "notify.sock")
    yield n
    n.sock.close()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: a demand read that takes its whole timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def _start(tmp_path: Path, notify: Notify, watchdog_usec: int, **values: object) -> subprocess.Popen[str]:
    config = tmp_path / "config.toml"
    defaults: dict[str, object] = {
        "token": TOKEN,
        "store": tmp_path / "state.db",
        "interval": 30,
        "stall": 900,
        "kind": "static",
        "options": "{ queued = 0 }",
    }
    config.write_text(CONFIG.format(**{**defaults, **values}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TDAS_", "WATCHDOG_"))}
    env |= {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(watchdog_usec)}
    return subprocess.Popen(
        [sys.executable, "-m", "autoscaler.commands.cli", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.terminate()
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate(timeout=10)
    return err


def test_pings_continue_through_an_api_outage_with_a_long_interval(tmp_path: Path, notify: Notify) -> None:
    """interval_s 30 against WatchdogSec=3 and an API that refuses every call: systemd still hears from it."""
    dead_api = f"http://127.0.0.1:{free_port()}/api/v2"
    process = _start(tmp_path, notify, 3_000_000, api=dead_api)
    try:
        notify.drain(8)
        assert process.poll() is None
    finally:
        err = _stop(process)
    assert "cycle_skipped" in err  # the cycles did fail: the API was down
    assert notify.pings() >= 3, notify.messages  # every second, whatever the cycles' result
    gaps = [b - a for (a, m), (b, n) in zip(notify.messages, notify.messages[1:], strict=False)]
    assert gaps and min(gaps) >= 0


def test_a_stuck_cycle_stops_the_pings(tmp_path: Path, notify: Notify, silent_server: str) -> None:
    """A cycle blocked past cycle_stall_s is a wedge: pings stop, so systemd restarts the daemon."""
    fake = build_fake(TOKEN, "observed", clock=SystemClock())
    server = FakeServer(fake).start()
    options = f'{{ url = "{silent_server}", queued_query = "q", timeout_s = 60 }}'
    process = _start(tmp_path, notify, 3_000_000, api=server.url, stall=2, kind="prometheus", options=options)
    try:
        notify.drain(5)  # the first cycle is now blocked on the silent source
        quiet_from = time.monotonic()
        notify.drain(4)
    finally:
        err = _stop(process)
        server.stop()
    assert notify.pings() >= 1  # pinged while the cycle was young
    assert notify.pings(since=quiet_from) == 0, notify.messages
    assert "watchdog_withheld" in err and "cycle_stall_s" in err


def test_a_long_cycle_of_slow_calls_is_busy_not_wedged(tmp_path: Path, notify: Notify) -> None:
    """Before: a cycle of creates each answered slowly ran past cycle_stall_s in all, and the pings
    stopped, so systemd killed a healthy daemon mid-create. Each call that goes out shows it moves."""
    fake = build_fake(TOKEN, "observed", clock=SystemClock(), faults=Faults(latency_s=0.8))
    server = FakeServer(fake).start()
    process = _start(tmp_path, notify, 3_000_000, api=server.url, stall=3, options="{ queued = 8 }")
    try:
        notify.drain(12)  # one cycle: three listings and eight creates, 0.8 s each
    finally:
        err = _stop(process)
        server.stop()
    assert fake.requests["create_instance"] >= 4  # the cycle ran well past cycle_stall_s
    assert "watchdog_withheld" not in err  # never judged wedged: the pings went on
    assert notify.pings() >= 4, notify.messages


def test_a_watchdog_too_short_to_ping_is_refused_at_start(tmp_path: Path, notify: Notify) -> None:
    process = _start(tmp_path, notify, 1_000_000, api=f"http://127.0.0.1:{free_port()}/api/v2")
    try:
        _, err = process.communicate(timeout=30)
    finally:
        _stop(process)
    assert process.returncode == 2
    assert "WatchdogSec" in err and "Traceback" not in err
