"""A lost store must not build a second fleet (rule 13), with the real daemon process.

Before: deleting or truncating `state.db` and restarting gave 5-6 GPUs against `max_gpus = 3`,
with 2-3 instances left billing that the store did not own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import RunningDaemon, start_daemon_process


def _gpus(running: RunningDaemon) -> int:
    with running.fake.state.lock:
        running.fake.state.settle()
        return sum(i.gpu_count for i in running.fake.state.instances() if i.phase != "stopped")


@pytest.fixture
def restarted() -> Iterator[Callable[[RunningDaemon], subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []

    def restart(running: RunningDaemon) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TDAS_")}
        process = start_daemon_process(
            running.config, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
        )
        processes.append(process)
        running.process = process
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            try:
                if running.get("/readyz").status_code == 200:
                    return process
            except httpx.HTTPError:
                pass
            assert process.poll() is None, "the restarted daemon exited"
            time.sleep(0.2)
        pytest.fail("the restarted daemon never became ready")

    yield restart
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.parametrize("loss", ["deleted", "truncated", "older copy"])
def test_a_lost_store_creates_no_second_fleet(
    daemon: Callable[..., RunningDaemon],
    restarted: Callable[[RunningDaemon], subprocess.Popen[str]],
    loss: str,
    tmp_path: Path,
) -> None:
    running = daemon(max_gpus=3)
    older = tmp_path / "older.db"
    shutil.copy(running.store, older)  # a backup from before anything was created
    running.set_demand(queued=3)
    running.wait_until(lambda: _gpus(running) == 3, "3 GPUs running")
    assert running.stop() == 0
    for suffix in ("", "-wal", "-shm"):
        Path(f"{running.store}{suffix}").unlink(missing_ok=True)
    if loss == "truncated":
        running.store.write_bytes(b"")
    elif loss == "older copy":
        shutil.copy(older, running.store)
    running.set_demand(queued=5)
    restarted(running)
    time.sleep(8)  # eight cycles at interval_s = 1
    running.set_demand(queued=5)
    time.sleep(3)
    assert _gpus(running) == 3
    orphans = running.metric("tensordock_autoscaler_orphan_instances")
    assert orphans is not None and orphans >= 1
    active = running.metric("tensordock_autoscaler_gpus_active")
    assert active is not None and active >= 3  # the orphans count against the bounds


def test_a_store_file_deleted_under_the_running_daemon_stops_it_acting_and_says_why(
    daemon: Callable[..., RunningDaemon],
) -> None:
    """Before: cycles went on `ok`, /readyz said 200, and new creates were journaled into the deleted
    file, lost at the next start. Now: nothing more is bought, /readyz says why, one line a cycle."""
    d = daemon(max_gpus=4)
    d.set_demand(queued=1)
    d.wait_until(lambda: d.phases() == ["running"], "the first instance")
    for path in (d.store, d.store.with_name(d.store.name + "-wal"), d.store.with_name(d.store.name + "-shm")):
        path.unlink(missing_ok=True)
    d.set_demand(queued=3)
    d.wait_until(lambda: d.get("/readyz").status_code == 503, "/readyz to turn 503")
    assert "deleted or replaced" in d.get("/readyz").text
    time.sleep(3)  # several cycles at interval 1 s
    assert d.phases() == ["running"]  # nothing bought that no restart would remember
    assert d.stop() == 0
    events = d.events()
    assert [e for e in events if e["event"] == "store_lost"]
    assert [e for e in events if e["event"] == "cycle_skipped" and "deleted or replaced" in str(e.get("reason"))]
    assert not [e for e in events if e["event"] == "cycle_crashed"]
