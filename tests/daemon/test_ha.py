"""High availability on PostgreSQL: one replica acts, a deposed leader is fenced, a follower takes over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from autoscaler.common.clock import SystemClock
from autoscaler.engine.leader import LeaderElector, advisory_key, lock_ids
from autoscaler.store import FencedError, open_store
from autoscaler.store.postgres import PostgresStore, split_schema
from autoscaler.tensordock.fake import FakeServer, Timings, build_fake
from tests.support import free_port

from ..conftest import TOKEN
from ..core.conftest import pg_store_url  # noqa: F401 - the fixture
from .conftest import CONFIG


def test_a_deposed_leaders_intent_is_refused_by_the_store(pg_store_url: str) -> None:  # noqa: F811
    store = open_store(pg_store_url)
    assert isinstance(store, PostgresStore)
    first, second = LeaderElector(pg_store_url, "fleet", store), LeaderElector(pg_store_url, "fleet", store)
    try:
        assert first.ensure() and not second.ensure()
        assert store.journal_intent("c1", 0.0, "stop", instance_id="i1") > 0
        dsn, _ = split_schema(pg_store_url)
        lock_session = first._conn.info.backend_pid if first._conn else None
        with psycopg.connect(dsn, autocommit=True) as admin:  # cut the leader's lock session
            admin.execute("SELECT pg_terminate_backend(%s)", (lock_session,))
        time.sleep(0.2)
        assert not first.ensure()  # it notices at its next cycle and stands down
        deposed = PostgresStore(pg_store_url)
        deposed.fence("fleet", 1)
        assert second.ensure() and second.token == 2
        with pytest.raises(FencedError):
            deposed.journal_intent("c2", 1.0, "create", name="tdas-late")
        assert "tdas-late" not in deposed.created_names()
        deposed.close()
    finally:
        first.step_down()
        second.step_down()
        store.close()


@pytest.fixture
def replicas(tmp_path: Path, pg_store_url: str) -> Iterator[Callable[[int], list[subprocess.Popen[str]]]]:  # noqa: F811
    fake = build_fake(
        TOKEN, "documented", clock=SystemClock(), timings=Timings(create_s=1, ip_s=0.5, start_s=1, stop_s=0.5)
    )
    server = FakeServer(fake).start()
    signal_file = tmp_path / "queue.json"
    processes: list[subprocess.Popen[str]] = []
    ports: list[int] = []

    def start(count: int) -> list[subprocess.Popen[str]]:
        signal_file.write_text(json.dumps({"queued": 0, "running": 0, "observed_at": time.time()}))
        for n in range(count):
            port = free_port()
            config = tmp_path / f"replica-{n}.toml"
            text = CONFIG.format(url=server.url, token=TOKEN, signal=signal_file, store="unused", port=port, max_gpus=8)
            config.write_text(text.replace('url = "sqlite:///unused"', f'url = "{pg_store_url}"'))
            env = {k: v for k, v in os.environ.items() if not k.startswith("TDAS_")}
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "autoscaler.commands.cli", "run", "--config", str(config)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )
            ports.append(port)
        return processes

    start.fake = fake  # type: ignore[attr-defined]
    start.ports = ports  # type: ignore[attr-defined]
    start.signal_file = signal_file  # type: ignore[attr-defined]
    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    server.stop()


def gauge_of_each(ports: list[int], name: str) -> list[float | None]:
    """An unlabelled gauge as each replica exports it (None: no answer)."""
    values: list[float | None] = []
    for port in ports:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            values.append(None)
            continue
        value = next((line.split()[-1] for line in text.splitlines() if line.startswith(f"{name} ")), None)
        values.append(float(value) if value is not None else None)
    return values


def leader_flags(ports: list[int]) -> list[float | None]:
    return gauge_of_each(ports, "tensordock_autoscaler_leader")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_one_of_three_replicas_acts_and_a_follower_takes_over_after_sigkill(
    replicas: Callable[[int], list[subprocess.Popen[str]]],
    pg_store_url: str,  # noqa: F811
) -> None:
    processes = replicas(3)
    ports = replicas.ports  # type: ignore[attr-defined]
    fake = replicas.fake  # type: ignore[attr-defined]
    wait_for(lambda: sorted(f or 0 for f in leader_flags(ports)) == [0, 0, 1], "exactly one leader of three")
    replicas.signal_file.write_text(json.dumps({"queued": 2, "running": 0, "observed_at": time.time()}))  # type: ignore[attr-defined]
    wait_for(lambda: len(fake.state.instances()) == 2, "the leader's scale-up")
    leader = leader_flags(ports).index(1.0)
    killed_at = time.monotonic()
    processes[leader].send_signal(signal.SIGKILL)
    processes[leader].wait(timeout=10)
    survivors = [p for i, p in enumerate(ports) if i != leader]
    wait_for(lambda: 1.0 in leader_flags(survivors), "a follower to take over")
    took_over_s = time.monotonic() - killed_at
    print(f"failover took {took_over_s:.2f}s")
    assert took_over_s < 2 * 1 + 1  # two intervals of 1 s, plus a second for the scrape that sees it
    replicas.signal_file.write_text(json.dumps({"queued": 3, "running": 0, "observed_at": time.time()}))  # type: ignore[attr-defined]
    wait_for(lambda: len(fake.state.instances()) == 3, "the new leader's scale-up")
    time.sleep(2)
    assert len(fake.state.instances()) == 3  # nobody double-created
    dsn, schema = split_schema(pg_store_url)
    with psycopg.connect(dsn) as conn:
        conn.execute(f"SET search_path TO {schema}")
        names = [row[0] for row in conn.execute("SELECT name FROM journal WHERE kind = 'create' AND outcome = 'ok'")]
        tokens = {row[0] for row in conn.execute("SELECT DISTINCT fencing_token FROM journal")}
    assert len(names) == len(set(names)) == 3
    assert len(tokens) == 2  # two leaderships, each with its own token


def test_a_leader_cut_off_from_the_database_stops_acting_and_another_takes_over(
    replicas: Callable[[int], list[subprocess.Popen[str]]],
    pg_store_url: str,  # noqa: F811
) -> None:
    replicas(2)
    ports = replicas.ports  # type: ignore[attr-defined]
    fake = replicas.fake  # type: ignore[attr-defined]
    wait_for(lambda: sorted(f or 0 for f in leader_flags(ports)) == [0, 1], "one leader of two")
    old_leader = leader_flags(ports).index(1.0)
    replicas.signal_file.write_text(json.dumps({"queued": 1, "running": 0, "observed_at": time.time()}))  # type: ignore[attr-defined]
    wait_for(
        lambda: gauge_of_each(ports, "tensordock_autoscaler_gpus_active")[old_leader] == 1.0, "the first leader's fleet"
    )
    dsn, schema = split_schema(pg_store_url)
    with psycopg.connect(dsn, autocommit=True) as admin:
        (holder,) = admin.execute(  # this fleet's lock only: other runs share the database
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
            " AND classid::bigint = %s AND objid::bigint = %s",
            lock_ids(advisory_key(schema, "tdas")),
        ).fetchone() or (None,)
        admin.execute("SELECT pg_terminate_backend(%s)", (holder,))
    wait_for(lambda: leader_flags(ports) == ([0.0, 1.0] if old_leader == 0 else [1.0, 0.0]), "leadership to move")
    replicas.signal_file.write_text(json.dumps({"queued": 2, "running": 0, "observed_at": time.time()}))  # type: ignore[attr-defined]
    wait_for(lambda: len(fake.state.instances()) == 2, "the new leader's scale-up")
    time.sleep(2)
    assert len(fake.state.instances()) == 2
    # the replica that stands by describes no fleet: a sum over replicas is the leader's alone
    gpus = gauge_of_each(ports, "tensordock_autoscaler_gpus_active")
    assert gpus[old_leader] == 0.0 and gpus[1 - old_leader] == 2.0, gpus
    with psycopg.connect(dsn) as conn:
        conn.execute(f"SET search_path TO {schema}")
        rows = conn.execute("SELECT fencing_token FROM journal ORDER BY id").fetchall()
    tokens = [r[0] for r in rows]
    assert set(tokens) == {1, 2} and tokens == sorted(tokens)  # the first leader's, then only the new one's
