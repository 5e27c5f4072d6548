"""The daemon as users run it: scales, exports, reloads, stops cleanly, and says when it is unready."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from autoscaler.tensordock.fake import Faults

from ..conftest import TOKEN
from .conftest import RunningDaemon


def test_scales_up_and_down_and_exports_valid_metrics(daemon: Callable[..., RunningDaemon]) -> None:
    d = daemon()
    d.set_demand(queued=2)
    d.wait_until(lambda: d.phases() == ["running", "running"], "two running instances")
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing; .ci/run installs Debian's 'prometheus' package")
    text = d.get("/metrics").text
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert d.metric("tensordock_autoscaler_gpus_active") == 2
    assert (d.metric("tensordock_autoscaler_fleet_cost_usd_per_hour", managed="true") or 0) > 0
    assert (d.metric("tensordock_autoscaler_api_requests_total", operation="create_instance", code="200") or 0) >= 2
    assert d.metric("tensordock_autoscaler_signal_up", source="queue-file") == 1
    assert d.get("/healthz").status_code == 200
    d.set_demand(queued=0)
    # `scale_down = "auto"`: deleted where the listing gives the GPUs back as cheaply, else stopped
    d.wait_until(lambda: set(d.phases()) <= {"stopped"}, "both gone or stopped after the scale-down delay")
    assert d.stop() == 0
    assert TOKEN not in (d.process.stderr.read() if d.process.stderr else "")


def test_sighup_reloads_and_a_bad_config_is_refused(daemon: Callable[..., RunningDaemon]) -> None:
    d = daemon(max_gpus=1)
    d.set_demand(queued=3)
    d.wait_until(lambda: len(d.phases()) == 1, "one instance under max_gpus = 1")
    time.sleep(2)
    assert len(d.phases()) == 1
    d.write_config(max_gpus=3)
    d.process.send_signal(signal.SIGHUP)
    d.wait_until(lambda: len(d.phases()) == 3, "three instances after the reload raised max_gpus")
    assert d.metric("tensordock_autoscaler_config_reloads_total", result="ok") == 1
    d.config.write_text(d.config.read_text().replace("max_gpus = 3", "max_gpus = -5"))
    d.process.send_signal(signal.SIGHUP)
    d.wait_until(
        lambda: d.metric("tensordock_autoscaler_config_reloads_total", result="refused") == 1, "the bad reload refused"
    )
    assert d.get("/readyz").status_code == 200  # still running on the old configuration
    assert d.stop() == 0


def test_sigterm_mid_cycle_exits_zero_with_the_journal_consistent(daemon: Callable[..., RunningDaemon]) -> None:
    d = daemon(fake_faults=Faults(latency_s=0.4))
    d.set_demand(queued=6)
    d.wait_until(lambda: len(d.phases()) >= 1, "the scale-up to begin")
    started = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - started < 20
    outcomes = d.journal_outcomes()
    assert outcomes and None not in outcomes  # every intent has its outcome
    assert len(d.phases()) == sum(1 for o in outcomes if o == "ok")  # every instance is journaled


def test_readyz_turns_unready_when_the_api_is_down(daemon: Callable[..., RunningDaemon]) -> None:
    d = daemon()
    assert d.get("/readyz").status_code == 200
    d.server.stop()
    d.wait_until(lambda: d.get("/readyz").status_code == 503, "/readyz to report unready", timeout=30)
    assert "more than 3 intervals" in d.get("/readyz").text
    assert d.stop() == 0


def test_systemd_is_told_ready_status_watchdog_and_stopping(
    daemon: Callable[..., RunningDaemon], tmp_path: Path
) -> None:
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.2)
    messages: list[str] = []

    def drain() -> None:
        with contextlib.suppress(TimeoutError, OSError):
            while True:
                messages.append(sock.recv(4096).decode())

    try:
        d = daemon(env_extra={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000"})
        d.set_demand(queued=1)
        d.wait_until(lambda: (drain(), any("STATUS=1 instances" in m for m in messages))[1], "a fleet summary")
        assert d.stop() == 0
        drain()
    finally:
        sock.close()
    text = "\n".join(messages)
    assert "READY=1" in text and "STOPPING=1" in text
    assert text.index("READY=1") < text.index("WATCHDOG=1") < text.index("STOPPING=1")
    assert "STATUS=" in text and "$" in text and "/h" in text


def test_every_decision_is_one_json_line_with_cycle_action_reason_and_cost(
    daemon: Callable[..., RunningDaemon],
) -> None:
    d = daemon()
    d.set_demand(queued=1)
    d.wait_until(lambda: len(d.phases()) == 1, "one instance")
    assert d.stop() == 0
    lines = d.events()
    decisions = [line for line in lines if line["event"] == "decision"]
    assert decisions, "no decision lines logged"
    for key in ("cycle", "action", "instance", "reason", "usd_per_hour", "outcome", "timestamp"):
        assert key in decisions[0]
    assert decisions[0]["action"] == "create" and decisions[0]["usd_per_hour"] > 0


def test_new_work_between_cycles_is_provisioned_without_waiting_for_the_interval(
    daemon: Callable[..., RunningDaemon],
) -> None:
    d = daemon(interval_s=600, scheduler_extra="watch_s = 1")
    # /readyz answered: the first cycle ran on an empty queue, and the next is 600 s away
    d.set_demand(queued=1)
    d.wait_until(lambda: len(d.phases()) == 1, "an instance long before the 600-s interval", timeout=120)
    assert d.metric("tensordock_autoscaler_cycles_early_total") == 1
    d.set_demand(queued=0)  # a queue that shrinks runs nothing early: scale-down waits for its cycle
    time.sleep(3)
    assert d.metric("tensordock_autoscaler_cycles_early_total") == 1
    assert d.stop() == 0
    lines = d.events()
    grew = [line for line in lines if line["event"] == "queue_grew"]
    assert [(line["queued_jobs"], line["cycle"]) for line in grew] == [(1, "now")]
