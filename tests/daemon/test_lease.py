"""Leadership is a lease (DESIGN rule 15): a frozen leader is replaced once its lease lapses, and
when it wakes it makes no call; the check runs right before every attempt that goes on the wire."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from autoscaler.common.clock import SystemClock
from autoscaler.engine.leader import LeaderElector
from autoscaler.store import FencedError, open_store
from autoscaler.store.postgres import PostgresStore, split_schema
from autoscaler.tensordock.fake import FakeServer, Timings, build_fake
from tests.support import free_port

from ..conftest import TOKEN
from ..core.conftest import pg_store_url  # noqa: F401 - the fixture
from .conftest import CONFIG
from .pgtools import CountingProxy, daemon_command
from .test_ha import leader_flags


def pg_store(url: str) -> PostgresStore:
    store = open_store(url)
    assert isinstance(store, PostgresStore)
    return store


def test_a_follower_takes_over_once_the_lease_lapses_and_the_frozen_leader_makes_no_call(
    pg_store_url: str,  # noqa: F811
) -> None:
    store = pg_store(pg_store_url)
    first = LeaderElector(pg_store_url, "fleet", store, lease_s=1.0)
    second = LeaderElector(pg_store_url, "fleet", store, lease_s=1.0)
    try:
        assert first.ensure() and not second.ensure()
        first.check_before_call("list_instances")  # leads: the check passes (and renews)
        time.sleep(0.6)
        assert first.ensure() and not second.ensure()  # renewed: still not lapsed
        time.sleep(1.3)  # `first` froze: no cycle, no call renewed its lease; its lock session still lives
        assert second.ensure() and second.token == 2  # took over: ended the holder's session, took the lock
        with pytest.raises(FencedError, match="lapsed"):
            first.check_before_call("start_instance")  # woke up: makes no call
        assert not first.is_leader and not first.ensure()  # and does not lead again while `second` renews
        second.check_before_call("start_instance")
    finally:
        first.step_down()
        second.step_down()
        store.close()


def test_the_check_before_a_call_refuses_when_the_lock_session_is_gone(pg_store_url: str) -> None:  # noqa: F811
    store = pg_store(pg_store_url)
    leader = LeaderElector(pg_store_url, "fleet", store, lease_s=30.0)
    try:
        assert leader.ensure()
        assert leader._conn is not None
        dsn, _ = split_schema(pg_store_url)
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (leader._conn.info.backend_pid,))
        time.sleep(0.2)
        with pytest.raises(FencedError, match="session"):
            leader.check_before_call("create_instance")  # the lease is young, but the lock is gone
        assert not leader.is_leader
    finally:
        leader.step_down()
        store.close()


@dataclass
class Cluster:
    fake_server: FakeServer
    signal_file: Path
    proxies: list[CountingProxy] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        """`wait_for`, failing with the end of each replica's log, so a failure on a loaded CI says why."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        tails = [
            f"--- replica {n}:\n" + "\n".join(log.read_text().splitlines()[-15:]) for n, log in enumerate(self.logs)
        ]
        pytest.fail(f"timed out waiting for {what}\n" + "\n".join(tails))

    def demand(self, queued: int) -> None:
        self.signal_file.write_text(json.dumps({"queued": queued, "running": 0, "observed_at": time.time()}))

    def instances(self) -> int:
        return len(self.fake_server.app.state.instances())


@pytest.fixture
def cluster(tmp_path: Path, pg_store_url: str) -> Iterator[Cluster]:  # noqa: F811
    fake = build_fake(
        TOKEN, "observed", clock=SystemClock(), timings=Timings(create_s=1, ip_s=0.5, start_s=1, stop_s=0.5)
    )
    server = FakeServer(fake).start()
    running = Cluster(server, tmp_path / "queue.json")
    running.demand(0)
    try:
        for n in range(2):
            proxy = CountingProxy(server.root_url).start()
            port = free_port()
            text = CONFIG.format(
                url=proxy.url, token=TOKEN, signal=running.signal_file, store="unused", port=port, max_gpus=8
            )
            text = "leader_lease_s = 5\n" + text.replace('url = "sqlite:///unused"', f'url = "{pg_store_url}"')
            # the lease must outlast the longest call (3.5 s here): calls to a local fake are short
            text = text.replace(
                "read_timeout_s = 5\n", "read_timeout_s = 2\ncreate_timeout_s = 2\ncall_deadline_s = 2\n"
            )
            text = text.replace("[tensordock]\n", "[tensordock]\nconnect_timeout_s = 1.5\n")
            config = tmp_path / f"replica-{n}.toml"
            config.write_text(text)
            env = {k: v for k, v in os.environ.items() if not k.startswith("TDAS_")}
            running.logs.append(tmp_path / f"replica-{n}.log")
            with running.logs[-1].open("wb") as log:
                process = subprocess.Popen(
                    daemon_command("run", "--config", str(config)),
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    env=env,
                )
            running.proxies.append(proxy)
            running.processes.append(process)
            running.ports.append(port)
        yield running
    finally:
        for process in running.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
                process.wait(timeout=10)
        for proxy in running.proxies:
            proxy.stop()
        server.stop()


def test_sigstop_the_leader_past_its_lease_a_follower_leads_and_the_woken_leader_calls_nothing(
    cluster: Cluster,
    pg_store_url: str,  # noqa: F811
) -> None:
    ports = cluster.ports
    cluster.wait(lambda: sorted(f or 0 for f in leader_flags(ports)) == [0, 1], "one leader of two")
    cluster.demand(1)
    cluster.wait(lambda: cluster.instances() == 1, "the leader's scale-up")
    old = leader_flags(ports).index(1.0)
    new = 1 - old
    cluster.processes[old].send_signal(signal.SIGSTOP)  # frozen: its sessions and its lock stay
    stopped_at = time.monotonic()
    cluster.wait(lambda: leader_flags([ports[new]]) == [1.0], "the follower to take over")
    took_over_s = time.monotonic() - stopped_at
    print(f"takeover after SIGSTOP: {took_over_s:.1f}s (lease 5 s, interval 1 s)")
    assert took_over_s >= 1.0  # not before the lease could lapse: the lock was still held
    cluster.demand(2)
    cluster.wait(lambda: cluster.instances() == 2, "the new leader's scale-up")
    time.sleep(3)  # the frozen one stays frozen well past its lease
    woke_at = time.monotonic()
    cluster.processes[old].send_signal(signal.SIGCONT)
    cluster.wait(lambda: leader_flags([ports[old]]) == [0.0], "the woken leader to stand down")
    time.sleep(3)  # several of its intervals
    assert cluster.proxies[old].since(woke_at) == []  # not one request went out after it woke
    assert leader_flags(ports)[new] == 1.0 and cluster.instances() == 2
    assert cluster.proxies[new].since(woke_at)  # the leader goes on calling
    dsn, schema = split_schema(pg_store_url)
    with psycopg.connect(dsn) as conn:
        conn.execute(f"SET search_path TO {schema}")
        names = [row[0] for row in conn.execute("SELECT name FROM journal WHERE kind = 'create' AND outcome = 'ok'")]
        tokens = [row[0] for row in conn.execute("SELECT fencing_token FROM journal ORDER BY id")]
    assert len(names) == len(set(names)) == 2
    assert tokens == sorted(tokens) and len(set(tokens)) == 2  # the old token never wrote after the new one


def test_a_start_whose_leader_lost_its_lock_during_a_retry_after_wait_is_not_sent(
    pg_store_url: str,  # noqa: F811
) -> None:
    """Before: fencing was checked when the intent was written, and the 429 wait came after it."""
    import httpx

    from autoscaler.common.clock import ManualClock
    from autoscaler.core.plan import Action, ActionKind
    from autoscaler.core.snapshot import InstanceShape
    from autoscaler.engine.actuator import Actuator, InstanceTemplate
    from autoscaler.tensordock.client import TensorDockClient

    store = pg_store(pg_store_url)
    leader = LeaderElector(pg_store_url, "fleet", store, lease_s=60.0)
    clock = ManualClock()
    sent: list[str] = []
    dsn, _ = split_schema(pg_store_url)

    def throttled(request: httpx.Request) -> httpx.Response:
        sent.append(f"{request.method} {request.url.path}")
        assert leader._conn is not None
        with psycopg.connect(dsn, autocommit=True) as admin:  # the lock's session dies during the wait
            admin.execute("SELECT pg_terminate_backend(%s)", (leader._conn.info.backend_pid,))
        return httpx.Response(429, headers={"Retry-After": "6"}, json={"error": "slow down"})

    client = TensorDockClient(
        "http://td.invalid",
        TOKEN,
        clock=clock,
        transport=httpx.MockTransport(throttled),
        before_attempt=leader.check_before_call,
    )
    actuator = Actuator(
        client,
        store,
        clock,
        template=InstanceTemplate(ssh_key="ssh-ed25519 AAAATEST"),
        shape=InstanceShape(),
        name_prefix="tdas",
    )
    try:
        assert leader.ensure()
        started = clock.now()
        [result] = actuator.execute("c1", [Action(ActionKind.START, "demand", "test", instance_id="i-1", gpus=1)])
        assert clock.now() - started == pytest.approx(6.0)  # it did wait out the Retry-After
        assert len(sent) == 1  # and then the retry was not sent: the lock was gone
        assert result.outcome == "fenced"
        [entry] = store.journal(10)
        assert entry.outcome == "failed" and entry.error is not None and "not sent" in entry.error
    finally:
        leader.step_down()
        client.close()
        store.close()


def test_the_lease_defaults_from_the_interval_and_must_outlast_a_cycle() -> None:
    from autoscaler.config import ConfigError, load_settings

    # the longest call (a create: 120 s, connecting 5 s) and a cycle (30 s + 2 s jitter) go by unrenewed
    assert load_settings(None).lease_s == 157.0
    quick = {"create_timeout_s": 20, "call_deadline_s": 20, "connect_timeout_s": 1}
    assert load_settings(None, tensordock=quick).lease_s == 96.0  # 3 x (30 s + 2 s jitter)
    short = {"interval_s": 1, "jitter_s": 0}
    assert load_settings(None, scheduler=short, tensordock=quick).lease_s == 22.0
    quicker = {**quick, "create_timeout_s": 2, "call_deadline_s": 2}
    assert load_settings(None, scheduler=short, tensordock=quicker).lease_s == 10.0  # at least 10 s
    assert load_settings(None, leader_lease_s=45, tensordock=quick).lease_s == 45.0
    with pytest.raises(ConfigError, match=r"^leader_lease_s: .*not longer than scheduler.interval_s"):
        load_settings(None, leader_lease_s=20)
    # before: a lease shorter than a slow create lapsed during it, and leadership changed hands after each
    with pytest.raises(ConfigError, match=r"^leader_lease_s: 100 is not longer than the longest call \(125s"):
        load_settings(None, leader_lease_s=100)


def test_a_renewal_answered_after_its_lease_could_lapse_lets_no_call_out(
    pg_store_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: the renewal's UPDATE ran, its reply was held (a stalled network) past the lease, a
    follower took over, and the old leader's DELETE still went out on the late `RETURNING token`."""
    store = pg_store(pg_store_url)
    leader = LeaderElector(pg_store_url, "fleet", store, lease_s=1.0)
    try:
        assert leader.ensure()
        leader.check_before_call("list_instances")
        conn = leader._connection()
        execute = conn.execute

        def answered_late(*args: Any, **kwargs: Any) -> Any:
            cursor = execute(*args, **kwargs)  # the UPDATE runs on the server at once...
            time.sleep(1.2)  # ...its reply is held past the lease
            return cursor

        monkeypatch.setattr(conn, "execute", answered_late)
        with pytest.raises(FencedError, match=r"renewing the lease of 'fleet' took 1\.\ds of its 1s"):
            leader.check_before_call("delete_instance")
        assert not leader.is_leader
    finally:
        leader.step_down()
        store.close()


def test_a_leader_cut_off_from_its_store_stands_down_before_the_follower_calls(
    cluster: Cluster,
    pg_store_url: str,  # noqa: F811
) -> None:
    """Every session of the leader's process is ended as soon as it opens (its store and its lock):
    the follower takes over, and the cut-off leader's last call precedes the new leader's first."""
    import threading

    ports = cluster.ports
    cluster.wait(lambda: sorted(f or 0 for f in leader_flags(ports)) == [0, 1], "one leader of two")
    cluster.demand(1)
    cluster.wait(lambda: cluster.instances() == 1, "the leader's scale-up")
    old = leader_flags(ports).index(1.0)
    new = 1 - old
    pid = cluster.processes[old].pid
    dsn, _ = split_schema(pg_store_url)
    cutting = threading.Event()
    cut: list[int] = []

    def cut_off() -> None:
        with psycopg.connect(dsn, autocommit=True) as admin:
            while not cutting.is_set():
                rows = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
                    (f"tdas-%:{pid}:%",),
                ).fetchall()
                cut.append(len(rows))
                time.sleep(0.05)

    cutter = threading.Thread(target=cut_off, daemon=True)
    cut_at = time.monotonic()
    cutter.start()
    try:
        cluster.wait(lambda: leader_flags([ports[new]]) == [1.0], "the follower to take over")
        cluster.demand(2)
        cluster.wait(lambda: cluster.instances() == 2, "the new leader's scale-up")
        assert leader_flags([ports[old]]) == [0.0]
    finally:
        cutting.set()
        cutter.join(timeout=10)
    assert sum(cut) >= 2  # its store and lock sessions were ended
    old_calls = [at for at, _ in cluster.proxies[old].arrivals if at >= cut_at]
    new_calls = [at for at, _ in cluster.proxies[new].arrivals if at >= cut_at]
    assert new_calls
    assert not old_calls or max(old_calls) < min(new_calls)  # never both at once
    time.sleep(2)  # its sessions come back: it stays a follower, the new leader keeps its lease
    assert leader_flags(ports)[old] == 0.0 and leader_flags(ports)[new] == 1.0
    assert cluster.instances() == 2
