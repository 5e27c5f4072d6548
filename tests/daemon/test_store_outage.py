"""A dropped PostgreSQL session does not wedge the fleet: the store reconnects with back-off, a
leader cut off from its store stands down, and /readyz says so meanwhile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from autoscaler.common.clock import SystemClock
from autoscaler.engine.leader import LeaderElector
from autoscaler.store import FencedError, open_store
from autoscaler.store.postgres import PostgresStore, StoreUnavailableError
from autoscaler.tensordock.fake import FakeServer, Timings, build_fake
from tests.support import free_port

from ..conftest import TOKEN
from ..core.conftest import (
    PG_URL,
    pg_store_url,  # noqa: F401 - the fixture
)
from ..signals.conftest import require_server
from .conftest import CONFIG
from .pgtools import PgRole, daemon_command
from .test_ha import leader_flags, wait_for


@pytest.fixture
def role() -> Iterator[PgRole]:
    require_server("PostgreSQL", 5432)
    made = PgRole()
    try:
        yield made
    finally:
        made.drop()


def test_the_store_reconnects_after_its_backend_is_terminated(role: PgRole) -> None:
    store = open_store(role.url)
    assert isinstance(store, PostgresStore)
    try:
        store.adopt("i1", "tdas-one", 0.0, None)
        assert role.terminate("tdas-store") == 1
        with pytest.raises(psycopg.OperationalError):
            store.owned()  # the statement the session died under fails: its outcome is the caller's to judge
        assert store.problem is not None and store.problem.startswith("session lost")
        assert list(store.owned()) == ["i1"]  # the next use opens a new session
        assert store.problem is None
    finally:
        store.close()


def test_while_the_database_refuses_the_store_fails_fast_and_backs_off(role: PgRole) -> None:
    store = open_store(role.url)
    assert isinstance(store, PostgresStore)
    try:
        with role.outage():
            with pytest.raises(psycopg.OperationalError):
                store.owned()
            with pytest.raises(StoreUnavailableError, match="cannot reconnect"):
                store.owned()  # tried, refused: the back-off starts
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="next try in"):
                store.owned()  # within the back-off: no attempt at all
            assert time.monotonic() - started < 0.1
        deadline = time.monotonic() + 10
        while True:
            try:
                assert store.owned() == {}
                break
            except StoreUnavailableError:
                assert time.monotonic() < deadline, "the store never came back"
                time.sleep(0.1)
        assert store.problem is None
    finally:
        store.close()


def test_a_leader_whose_store_is_gone_stands_down_and_leads_again_when_it_is_back(role: PgRole) -> None:
    store = open_store(role.url)
    assert isinstance(store, PostgresStore)
    leader = LeaderElector(role.url, "fleet", store, lease_s=30.0)
    try:
        assert leader.ensure()
        with role.outage():
            assert not leader.ensure()
            assert not leader.is_leader
            assert leader.problem is not None and leader.problem.startswith("store unreachable")
            with pytest.raises(FencedError):
                leader.check_before_call("create_instance")
        deadline = time.monotonic() + 15
        while not leader.ensure():
            assert time.monotonic() < deadline, f"never led again: {leader.problem}"
            time.sleep(0.2)
        assert leader.problem is None and leader.token == 2
    finally:
        leader.step_down()
        store.close()


def test_the_daemon_says_not_ready_while_its_store_is_gone_and_acts_again_when_it_is_back(
    tmp_path: Path, role: PgRole
) -> None:
    fake = build_fake(
        TOKEN, "observed", clock=SystemClock(), timings=Timings(create_s=1, ip_s=0.5, start_s=1, stop_s=0.5)
    )
    server = FakeServer(fake).start()
    signal_file = tmp_path / "queue.json"

    def demand(queued: int) -> None:
        signal_file.write_text(json.dumps({"queued": queued, "running": 0, "observed_at": time.time()}))

    demand(0)
    port = free_port()
    text = CONFIG.format(url=server.url, token=TOKEN, signal=signal_file, store="unused", port=port, max_gpus=8)
    config = tmp_path / "daemon.toml"
    config.write_text(text.replace('url = "sqlite:///unused"', f'url = "{role.url}"'))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TDAS_")}
    log = (tmp_path / "daemon.log").open("wb")
    process = subprocess.Popen(
        daemon_command("run", "--config", str(config)),
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=env,
    )

    def readyz() -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
        except httpx.HTTPError:
            return 0

    try:
        wait_for(lambda: readyz() == 200 and leader_flags([port]) == [1.0], "ready and leading", timeout=60)
        demand(1)
        wait_for(lambda: len(fake.state.instances()) == 1, "the first scale-up", timeout=60)
        with role.outage():  # every session of the store's role cut (pg_terminate_backend), new ones refused
            wait_for(lambda: readyz() == 503, "/readyz to say the store is gone", timeout=30)
            reason = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).text
            assert "store" in reason
            assert leader_flags([port]) == [0.0]  # it stood down
            demand(2)
            time.sleep(2)
            assert len(fake.state.instances()) == 1  # nothing acted on without a store
            assert process.poll() is None
        wait_for(lambda: readyz() == 200, "/readyz to recover", timeout=60)
        wait_for(lambda: len(fake.state.instances()) == 2, "the scale-up after the store came back", timeout=60)
        assert leader_flags([port]) == [1.0]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()
        server.stop()


def test_sigterm_while_the_store_does_not_answer_exits_within_the_shutdown_timeout(
    tmp_path: Path, role: PgRole
) -> None:
    """Before: the cycle's lease renewal waited on a store that did not answer, holding the elector,
    and SIGTERM's step-down waited on the elector until the store answered (81 s in a probe: a
    proxy that stopped passing bytes; here a lock another session holds on the lease table)."""
    server = FakeServer(build_fake(TOKEN, "observed", clock=SystemClock())).start()
    signal_file = tmp_path / "queue.json"
    signal_file.write_text(json.dumps({"queued": 0, "running": 0, "observed_at": time.time()}))
    port = free_port()
    text = CONFIG.format(url=server.url, token=TOKEN, signal=signal_file, store="unused", port=port, max_gpus=8)
    text = text.replace('url = "sqlite:///unused"', f'url = "{role.url}"')
    config = tmp_path / "daemon.toml"
    config.write_text(text.replace("shutdown_timeout_s = 20\n", "shutdown_timeout_s = 3\n"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TDAS_")}
    log = (tmp_path / "daemon.log").open("wb")
    process = subprocess.Popen(
        daemon_command("run", "--config", str(config)), stdout=subprocess.DEVNULL, stderr=log, env=env
    )
    blocker = psycopg.connect(PG_URL)
    try:
        wait_for(lambda: leader_flags([port]) == [1.0], "leading", timeout=60)
        blocker.execute(f"LOCK TABLE {role.schema}.leadership IN ACCESS EXCLUSIVE MODE")  # held: no commit
        time.sleep(3)  # the next cycle's renewal waits on the lock, holding the elector
        sent_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        took = time.monotonic() - sent_at
        logged = (tmp_path / "daemon.log").read_text()
        assert code == 0 and took < 30, (took, logged[-2000:])  # 3 s of shutdown timeout, not the store's
        assert "the store, which does not answer" in logged
    finally:
        blocker.close()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()
        server.stop()


def test_a_leader_stuck_on_its_store_stops_saying_it_leads_once_its_lease_lapsed(tmp_path: Path, role: PgRole) -> None:
    """Before: `tensordock_autoscaler_leader` stayed 1 on a replica whose renewal hung on the store,
    while another replica had taken over: a sum over replicas said two leaders (found by a probe)."""
    import threading

    from autoscaler.config import load_settings
    from autoscaler.service.daemon import Daemon

    server = FakeServer(build_fake(TOKEN, "observed", clock=SystemClock())).start()
    text = CONFIG.format(url=server.url, token=TOKEN, signal=tmp_path / "q.json", store="unused", port=0, max_gpus=2)
    config = tmp_path / "c.toml"
    text = text.replace("read_timeout_s = 5\n", "read_timeout_s = 1\ncreate_timeout_s = 1\ncall_deadline_s = 1\n")
    config.write_text("leader_lease_s = 7\n" + text.replace('url = "sqlite:///unused"', f'url = "{role.url}"'))
    made = Daemon(load_settings(config), config)
    stuck, release = threading.Event(), threading.Event()

    def renewal_stuck_on_the_store() -> None:
        with made.elector._mutex:  # type: ignore[union-attr]  # as ensure() holds it in a store call
            stuck.set()
            release.wait(30)

    def leader() -> float | None:
        return made.metrics.registry.get_sample_value("tensordock_autoscaler_leader")

    try:
        assert made.elector is not None and made.elector.ensure()
        assert leader() == 1.0
        holder = threading.Thread(target=renewal_stuck_on_the_store, daemon=True)
        holder.start()
        assert stuck.wait(10)
        # a reload (on the main thread, where SIGTERM is acted on) does not wait for the stuck renewal
        reload = threading.Thread(target=made.elector.set_lease, args=(9.0,), daemon=True)
        reload.start()
        reload.join(timeout=10)
        assert not reload.is_alive() and made.elector.lease_s == 9.0
        wait_for(lambda: leader() == 0.0, "leader 0 once the 9-s lease lapsed", timeout=30)
    finally:
        release.set()
        if made.elector is not None:
            made.elector.step_down()
        made.runtime.close()
        server.stop()


def test_replicas_opening_a_new_store_together_all_start(pg_store_url: str) -> None:  # noqa: F811
    """Before: two of four died of a duplicate key in pg_namespace or pg_type (IF NOT EXISTS races)."""
    import threading

    errors: list[str] = []

    def open_one() -> None:
        try:
            PostgresStore(pg_store_url).close()
        except Exception as exc:  # what the test looks for
            errors.append(repr(exc)[:200])

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
