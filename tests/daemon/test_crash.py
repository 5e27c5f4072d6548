"""Crash safety with real processes: SIGKILL the daemon at random points of scale-ups and
scale-downs (seeded), restart it each time, and check nothing was lost or doubled, and that the
ledger is within 1 % of the fake's bill.

Time runs 30 times faster than in production (1-s cycles), so the API's rate-limit window is
shrunk by the same factor on both sides (the fake's and the daemon's), and stops are followed
every 20 ms (5 s in production). Instances here run a few seconds between transitions, where in
production they run hours, so this is a harder test of the ledger than production is.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from autoscaler.common.clock import SystemClock
from autoscaler.tensordock.fake import FakeServer, Faults, Timings, build_fake
from autoscaler.tensordock.wire import create_body
from tests.support import free_port

from ..conftest import TOKEN, create_request
from .conftest import CONFIG, start_daemon_process

KILLS = 20


# The default chain deletes surplus; this test kills the daemon mid-stop too, so its chain stops it.
STOP_SURPLUS = 'options = { scale_down = "stop" }\n'
STOPPING_CHAIN = "".join(
    f'\n[[policies]]\nname = "{name}"\n' + (STOP_SURPLUS if name == "cheapest_throughput" else "")
    for name in ("queue_target", "schedule", "cheapest_throughput", "idle", "consolidate", "budget")
)


@pytest.mark.timeout(900)  # a loaded 2-core machine: waits below are generous, none is a margin
def test_twenty_sigkills_lose_no_instance_and_double_none(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("TDAS_CRASH_SEED", "20261126")))  # other seeds: measure the spread
    fake = build_fake(
        TOKEN,
        "documented",
        clock=SystemClock(),
        faults=Faults(latency_s=0.05),
        timings=Timings(create_s=0.5, ip_s=0.2, start_s=0.5, stop_s=0.3),
        rate_window_s=2,
    )
    signal_file, store = tmp_path / "queue.json", tmp_path / "state.db"
    config = tmp_path / "config.toml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TDAS_")}
    chicago = next(loc.id for loc in fake.state.catalog.locations if loc.city == "Chicago")
    foreign = fake.state.create(
        create_body(create_request(chicago, name="someone-else"), "observed")["data"]["attributes"]
    )
    with FakeServer(fake) as server:
        port = free_port()
        config.write_text(
            CONFIG.format(url=server.url, token=TOKEN, signal=signal_file, store=store, port=port, max_gpus=6)
            .replace("scale_down_delay_s = 3", "scale_down_delay_s = 1")
            .replace("interval_s = 1\n", "interval_s = 1\ntransition_poll_s = 0.02\n")
            .replace("max_attempts = 2\n", "max_attempts = 2\nrate_window_s = 2\n")
            + STOPPING_CHAIN
        )
        assert "transition_poll_s" in config.read_text() and "rate_window_s" in config.read_text()

        def queue(queued: int) -> None:
            signal_file.write_text(json.dumps({"queued": queued, "running": 0, "observed_at": time.time()}))

        started: list[subprocess.Popen[bytes]] = []

        def start_daemon(queued: int) -> subprocess.Popen[bytes]:
            queue(queued)
            process = start_daemon_process(config, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started.append(process)
            return process

        def fleet_is(phase: str, count: int, within_s: float) -> None:
            deadline = time.monotonic() + within_s
            while time.monotonic() < deadline:
                with fake.state.lock:
                    fake.state.settle()
                    ours = [i for i in fake.state.instances() if i.id != foreign.id]
                    if len(ours) >= count and all(i.phase == phase for i in ours):
                        return
                time.sleep(0.1)
            raise AssertionError(f"the fleet did not come to {count} {phase} within {within_s}s")

        try:
            # In production a daemon runs for a while before it crashes: it has watched stops end, and
            # so knows how long they take when it must date one it did not see (after a restart).
            process = start_daemon(6)
            fleet_is("running", 6, 60)
            queue(0)
            fleet_is("stopped", 6, 60)
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
            kills = 0
            while kills < KILLS:
                process = start_daemon(rng.choice([0, 1, 3, 6]))
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:  # wait until it serves, so the kill lands inside its work
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 2.5))
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)
                kills += 1
            # a last clean run settles whatever the kills left unresolved, and lets the fleet come to rest
            # (all stopped) so that the bill and the ledger can be compared without a cycle's lag
            process = start_daemon(0)
            fleet_is("stopped", 1, 120)
            time.sleep(3)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:  # whatever failed above, no daemon outlives the test
            for leftover in started:
                if leftover.poll() is None:
                    leftover.kill()
                    leftover.wait(timeout=10)
    with fake.state.lock:
        fake.state.settle()
        instances = fake.state.instances()
    names = [i.name for i in instances]
    assert len(names) == len(set(names)), "a create was doubled"
    assert fake.state.get(foreign.id).phase == "running", "the unowned instance was touched"
    instances = [i for i in instances if i.id != foreign.id]
    with sqlite3.connect(store) as db:
        owned = {row[0] for row in db.execute("SELECT id FROM instances")}
        unresolved = db.execute("SELECT count(*) FROM journal WHERE outcome IS NULL").fetchone()[0]
        created = db.execute("SELECT count(*) FROM journal WHERE kind = 'create'").fetchone()[0]
    assert {i.id for i in instances} == owned, "an instance the store does not know, or one it lost"
    assert unresolved == 0, "an intent never resolved"
    assert created >= 3, "the kills never hit a scale-up"
    assert sum(i.gpu_count for i in instances if i.phase != "stopped") <= 6
    bill = fake.state.bill()
    billed = bill.total_usd - bill.per_instance_usd.get(foreign.id, 0.0)  # the fleet is at rest: no lag
    with sqlite3.connect(store) as db:
        ledger = db.execute("SELECT COALESCE(SUM(usd), 0) FROM ledger").fetchone()[0]
        interrupted = db.execute("SELECT count(*) FROM journal WHERE outcome = 'interrupted'").fetchone()[0]
    # Stops end between looks: each is charged until the look that sees it (~50 ms here), or,
    # when a kill hid it, until its call plus the longest stop watched before.
    print(f"ledger/bill {ledger / billed:.4f} over {kills} kills, {interrupted} of them inside a start/stop call")
    assert abs(ledger - billed) <= 0.01 * billed, f"ledger ${ledger:.5f} vs the fake's bill ${billed:.5f}"
