"""Every demand source against its real server: fill, read, drain, read; dead server: unknown."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import nats
import pika
import psycopg
import pytest
import redis

from autoscaler.signals import SignalError
from autoscaler.signals.base import Secret
from autoscaler.signals.combined import CombinedSignal
from autoscaler.signals.http_json import HttpJsonOptions, HttpJsonSignal
from autoscaler.signals.nats_jetstream import NatsOptions, NatsSignal
from autoscaler.signals.postgres import PostgresOptions, PostgresSignal
from autoscaler.signals.prometheus import PrometheusOptions, PrometheusSignal
from autoscaler.signals.rabbitmq import RabbitMqOptions, RabbitMqSignal
from autoscaler.signals.redis_queue import RedisOptions, RedisSignal
from autoscaler.signals.static import StaticSignal

from .conftest import JsonEndpoint, PrometheusServer, dead_port, require_server

REDIS_URL = "redis://127.0.0.1:6379/15"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
NATS_URL = "nats://127.0.0.1:4222"


def secret(value: str) -> Secret:
    return Secret.model_validate({"value": value})


def expect_unknown(read: Callable[[], object], within_s: float = 10.0) -> str:
    started = time.monotonic()
    with pytest.raises(SignalError) as caught:
        read()
    assert time.monotonic() - started < within_s, "a dead source must fail within its timeout"
    return str(caught.value)


# -- Redis -----------------------------------------------------------------------------------


@pytest.fixture
def redis_client() -> redis.Redis:
    require_server("Redis", 6379)
    return redis.Redis.from_url(REDIS_URL, decode_responses=True)


def test_redis_list_fill_read_drain(redis_client: redis.Redis, unique: str) -> None:
    source = RedisSignal(RedisOptions(url=secret(REDIS_URL), key=unique))
    try:
        redis_client.rpush(unique, *[f"job{n}" for n in range(7)])
        assert source.read(time.time()).queued_jobs == 7
        redis_client.delete(unique)
        assert source.read(time.time()).queued_jobs == 0
    finally:
        redis_client.delete(unique)


def test_redis_rq_conventions(redis_client: redis.Redis, unique: str) -> None:
    source = RedisSignal(RedisOptions(url=secret(REDIS_URL), mode="rq", key=unique))
    misspelt = RedisSignal(RedisOptions(url=secret(REDIS_URL), mode="rq", key=unique + "s"))
    try:
        redis_client.sadd("rq:queues", f"rq:queue:{unique}")  # RQ registers a queue on its first enqueue
        redis_client.rpush(f"rq:queue:{unique}", "a", "b", "c")
        redis_client.zadd(f"rq:wip:{unique}", {"d": time.time() + 60})
        demand = source.read(time.time())
        assert (demand.queued_jobs, demand.running_jobs) == (3, 1)
        with pytest.raises(SignalError, match=f"RQ knows no queue '{unique}s'"):  # before: an empty queue
            misspelt.read(time.time())
    finally:
        redis_client.delete(f"rq:queue:{unique}", f"rq:wip:{unique}")
        redis_client.srem("rq:queues", f"rq:queue:{unique}")


def test_redis_celery_sorted_set_and_heartbeats(redis_client: redis.Redis, unique: str) -> None:
    now = time.time()
    hearts = f"{unique}:workers"
    try:
        redis_client.rpush(unique, "x", "y")
        redis_client.hset(
            hearts, mapping={"tdas-a": f"busy:{now}", "tdas-b": f"idle:{now}", "tdas-dead": f"busy:{now - 3600}"}
        )
        redis_client.hset(hearts, "tdas-garbled", b"\xffbusy:\xfe")  # binary: that worker unheard, no more
        celery = RedisSignal(RedisOptions(url=secret(REDIS_URL), mode="celery", key=unique, heartbeat_key=hearts))
        demand = celery.read(now)
        assert demand.queued_jobs == 2 and demand.busy == {"tdas-a": True, "tdas-b": False}
        assert demand.running_jobs >= 1  # the busy worker
        redis_client.zadd(f"{unique}:z", {"j1": 1, "j2": 2})
        zset = RedisSignal(RedisOptions(url=secret(REDIS_URL), mode="zset", key=f"{unique}:z"))
        assert zset.read(now).queued_jobs == 2
    finally:
        redis_client.delete(unique, hearts, f"{unique}:z")


def test_redis_stream_lag_and_pending(redis_client: redis.Redis, unique: str) -> None:
    try:
        redis_client.xgroup_create(unique, "workers", id="0", mkstream=True)
        for n in range(5):
            redis_client.xadd(unique, {"job": n})
        redis_client.xreadgroup("workers", "w1", {unique: ">"}, count=2)  # two delivered, not acked
        source = RedisSignal(RedisOptions(url=secret(REDIS_URL), mode="stream", key=unique, group="workers"))
        demand = source.read(time.time())
        assert (demand.queued_jobs, demand.running_jobs) == (3, 2)
        # an entry deleted before delivery: Redis reports no lag; the unread entries are counted instead
        # (before: the read failed until the group read past it, which with no worker up never happened)
        undelivered = [entry_id for entry_id, _ in redis_client.xrange(unique)][3]
        redis_client.xdel(unique, undelivered)
        assert next(g for g in redis_client.xinfo_groups(unique) if g["name"] == "workers")["lag"] is None
        demand = source.read(time.time())
        assert (demand.queued_jobs, demand.running_jobs) == (2, 2)
        with pytest.raises(SignalError, match="no consumer group"):
            RedisSignal(RedisOptions(url=secret(REDIS_URL), mode="stream", key=unique, group="nope")).read(time.time())
    finally:
        redis_client.delete(unique)


def test_redis_dead_server_is_unknown() -> None:
    source = RedisSignal(RedisOptions(url=secret(f"redis://127.0.0.1:{dead_port()}/0"), key="q", timeout_s=1))
    assert "ConnectionError" in expect_unknown(lambda: source.read(time.time()))


# -- RabbitMQ ----------------------------------------------------------------------------------


def test_rabbitmq_ready_messages_and_consumers(unique: str) -> None:
    require_server("RabbitMQ", 5672)
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(unique, auto_delete=False)
    source = RabbitMqSignal(RabbitMqOptions(url=secret(AMQP_URL), queue=unique))
    try:
        for n in range(4):
            channel.basic_publish("", unique, f"job{n}".encode())
        assert source.read(time.time()).queued_jobs == 4
        worker = connection.channel()
        worker.basic_qos(prefetch_count=1)
        worker.basic_consume(unique, lambda *_: None)  # takes one, never acks: one job running
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.1)
            demand = source.read(time.time())
            if demand.queued_jobs == 3:
                break
        assert (demand.queued_jobs, demand.running_jobs) == (3, 1)
        channel.queue_purge(unique)
        assert source.read(time.time()).queued_jobs == 0
        with pytest.raises(SignalError, match="NOT_FOUND"):
            RabbitMqSignal(RabbitMqOptions(url=secret(AMQP_URL), queue=f"{unique}-missing")).read(time.time())
    finally:
        source.close()
        channel.queue_delete(unique)
        connection.close()


def test_a_rabbitmq_connection_the_broker_dropped_between_reads_is_opened_again(unique: str) -> None:
    """Before: the connection kept between reads sends no heartbeats; once the broker dropped it,
    the next read failed (`StreamLostError`), every few cycles with a long interval (found by a probe)."""
    require_server("RabbitMQ", 5672)
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(unique, auto_delete=False)
    source = RabbitMqSignal(RabbitMqOptions(url=secret(f"{AMQP_URL}?heartbeat=1"), queue=unique))
    try:
        channel.basic_publish("", unique, b"job")
        assert source.read(time.time()).queued_jobs == 1
        kept = source._connection
        time.sleep(6)  # three times what a broker waits for a 1-s heartbeat: it has closed the connection
        assert source.read(time.time()).queued_jobs == 1
        assert source._connection is not kept  # read on a new connection, the dropped one closed
    finally:
        source.close()
        channel.queue_delete(unique)
        connection.close()


def test_rabbitmq_dead_server_is_unknown() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{dead_port()}/%2F"
    source = RabbitMqSignal(RabbitMqOptions(url=secret(url), queue="q", timeout_s=1))
    expect_unknown(lambda: source.read(time.time()))


# -- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture
def jobs_table(unique: str) -> str:
    require_server("PostgreSQL", 5432)
    table = unique.replace("-", "_")
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id serial primary key, state text not null, worker text)")
    yield table  # type: ignore[misc]
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def test_postgres_user_query_fill_read_drain(jobs_table: str) -> None:
    query = (
        f"SELECT count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'running') FROM {jobs_table}"
    )
    busy_query = f"SELECT worker, bool_or(state = 'running') FROM {jobs_table} WHERE worker IS NOT NULL GROUP BY 1"
    source = PostgresSignal(PostgresOptions(dsn=secret(PG_DSN), query=query, busy_query=busy_query))
    try:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO {jobs_table} (state, worker) VALUES ('queued', NULL), ('queued', NULL),"
                " ('running', 'tdas-a'), ('done', 'tdas-b')"
            )
        demand = source.read(time.time())
        assert (demand.queued_jobs, demand.running_jobs) == (2, 1)
        assert demand.busy == {"tdas-a": True, "tdas-b": False}
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"DELETE FROM {jobs_table}")
        assert source.read(time.time()).queued_jobs == 0
    finally:
        source.close()


def test_postgres_refuses_a_query_that_writes_and_times_out_slow_ones(jobs_table: str) -> None:
    writer = PostgresSignal(
        PostgresOptions(
            dsn=secret(PG_DSN),
            query=f"WITH gone AS (DELETE FROM {jobs_table} RETURNING 1) SELECT count(*), 0 FROM gone",
        )
    )
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {jobs_table} (state) VALUES ('queued')")
    with pytest.raises(SignalError, match="tries to write"):
        writer.read(time.time())
    with psycopg.connect(PG_DSN) as conn:
        assert conn.execute(f"SELECT count(*) FROM {jobs_table}").fetchone() == (1,)  # nothing was deleted
    slow = PostgresSignal(PostgresOptions(dsn=secret(PG_DSN), query="SELECT pg_sleep(5), 0", timeout_s=1))
    assert "statement timeout" in expect_unknown(lambda: slow.read(time.time()), within_s=4)
    writer.close()
    slow.close()


def test_postgres_dead_server_is_unknown() -> None:
    source = PostgresSignal(
        PostgresOptions(
            dsn=secret(f"postgresql://postgres@127.0.0.1:{dead_port()}/x"), query="SELECT 1, 0", timeout_s=1
        )
    )
    expect_unknown(lambda: source.read(time.time()))


# -- NATS JetStream --------------------------------------------------------------------------------


def test_nats_consumer_pending_and_ack_pending(unique: str) -> None:
    require_server("NATS", 4222)
    stream, subject = unique.replace("-", "_"), f"{unique}.jobs"

    async def setup_and_fill() -> None:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject])
        await js.add_consumer(stream, durable_name="workers", ack_policy="explicit")
        for n in range(6):
            await js.publish(subject, f"job{n}".encode())
        sub = await js.pull_subscribe(subject, durable="workers", stream=stream)
        await sub.fetch(2, timeout=5)  # two delivered and not acked: running
        await nc.close()

    async def drain() -> None:
        nc = await nats.connect(NATS_URL)
        await nc.jetstream().purge_stream(stream)
        await nc.close()

    async def teardown() -> None:
        nc = await nats.connect(NATS_URL)
        await nc.jetstream().delete_stream(stream)
        await nc.close()

    source = NatsSignal(NatsOptions(url=secret(NATS_URL), stream=stream, consumer="workers"))
    asyncio.run(setup_and_fill())
    try:
        demand = source.read(time.time())
        assert (demand.queued_jobs, demand.running_jobs) == (4, 2)
        asyncio.run(drain())
        assert source.read(time.time()).queued_jobs == 0
        with pytest.raises(SignalError, match="no consumer"):
            NatsSignal(NatsOptions(url=secret(NATS_URL), stream=stream, consumer="nope")).read(time.time())
    finally:
        asyncio.run(teardown())


def test_nats_dead_server_is_unknown(caplog: pytest.LogCaptureFixture) -> None:
    source = NatsSignal(
        NatsOptions(url=secret(f"nats://127.0.0.1:{dead_port()}"), stream="s", consumer="c", timeout_s=1)
    )
    with caplog.at_level("DEBUG", logger="nats"):
        reason = expect_unknown(lambda: source.read(time.time()))
    # the cause, not a bare "TimeoutError: ", and no library ERROR line with a traceback object per read
    assert "refused" in reason.lower() or "connect call failed" in reason.lower(), reason
    assert not [r for r in caplog.records if r.name.startswith("nats") and r.levelname == "ERROR"]


@pytest.mark.parametrize("order", ["busy-first", "idle-first"])
def test_an_instance_named_twice_is_busy_if_either_says_so(order: str) -> None:
    """Rule 5. Before: the last series or row won, so `busy 1` then `busy 0` for one worker read idle,
    and it was deleted as surplus (two Prometheus series, two PostgreSQL rows; found by a probe)."""
    from autoscaler.signals.base import busy_flags

    said = [("tdas-a", True), ("tdas-a", False), ("tdas-b", 0), ("tdas-b", 0), ("tdas-c", False), ("tdas-c", None)]
    if order == "idle-first":
        said.reverse()
    assert busy_flags(said) == {"tdas-a": True, "tdas-b": False}  # tdas-c: in doubt, left out


# -- Prometheus ----------------------------------------------------------------------------------


def test_prometheus_queries_fill_read_drain(prometheus_server: PrometheusServer) -> None:
    source = PrometheusSignal(
        PrometheusOptions(
            url=prometheus_server.url,
            queued_query="sum(tdas_test_queue_depth)",
            running_query="sum(tdas_test_jobs_running)",
            busy_query="tdas_test_worker_busy",
        )
    )
    prometheus_server.queued.set(9)
    prometheus_server.running.set(2)
    prometheus_server.busy.labels("tdas-a").set(1)
    prometheus_server.busy.labels("tdas-b").set(0)
    prometheus_server.wait_for("sum(tdas_test_queue_depth)", 9)
    prometheus_server.wait_for("sum(tdas_test_worker_busy)", 1)
    demand = source.read(time.time())
    assert (demand.queued_jobs, demand.running_jobs) == (9, 2)
    assert demand.busy == {"tdas-a": True, "tdas-b": False}
    prometheus_server.queued.set(0)
    prometheus_server.wait_for("sum(tdas_test_queue_depth)", 0)
    assert source.read(time.time()).queued_jobs == 0
    # two series for each worker, the second a zero copy: a worker is busy if either says so
    doubled = PrometheusSignal(
        PrometheusOptions(
            url=prometheus_server.url,
            queued_query="sum(tdas_test_queue_depth)",
            busy_query='tdas_test_worker_busy or label_replace(tdas_test_worker_busy * 0, "copy", "zero", "", "")',
        )
    )
    assert doubled.read(time.time()).busy == {"tdas-a": True, "tdas-b": False}
    with pytest.raises(SignalError, match="no series"):
        PrometheusSignal(PrometheusOptions(url=prometheus_server.url, queued_query="nonexistent_metric")).read(0)
    with pytest.raises(SignalError, match="failed"):
        PrometheusSignal(PrometheusOptions(url=prometheus_server.url, queued_query="sum(")).read(0)


def test_prometheus_dead_server_is_unknown() -> None:
    source = PrometheusSignal(PrometheusOptions(url=f"http://127.0.0.1:{dead_port()}", queued_query="up", timeout_s=1))
    expect_unknown(lambda: source.read(time.time()))


# -- HTTP JSON --------------------------------------------------------------------------------------


def test_http_json_paths_and_auth(json_endpoint: JsonEndpoint) -> None:
    json_endpoint.document = {"queue": {"waiting": 5, "active": [{"n": 2}]}, "workers": {"tdas-a": True}}
    source = HttpJsonSignal(
        HttpJsonOptions(
            url=json_endpoint.url,
            queued_path="queue.waiting",
            running_path="queue.active.0.n",
            busy_path="workers",
            bearer_token=secret("s3cret-token"),
        )
    )
    demand = source.read(time.time())
    assert (demand.queued_jobs, demand.running_jobs, demand.busy) == (5, 2, {"tdas-a": True})
    json_endpoint.document = {"queue": {"waiting": 0, "active": [{"n": 0}]}, "workers": {}}
    assert source.read(time.time()).queued_jobs == 0
    json_endpoint.document = {"queue": {"waiting": "lots"}, "workers": {}}
    with pytest.raises(SignalError, match="not a count"):
        source.read(time.time())
    unauthenticated = HttpJsonSignal(HttpJsonOptions(url=json_endpoint.url, queued_path="queue.waiting"))
    with pytest.raises(SignalError, match=r"queue: HTTP 401$"):  # the status, not only "HTTPStatusError"
        unauthenticated.read(time.time())


def test_http_json_dead_server_is_unknown() -> None:
    source = HttpJsonSignal(HttpJsonOptions(url=f"http://127.0.0.1:{dead_port()}/q", queued_path="q", timeout_s=1))
    expect_unknown(lambda: source.read(time.time()))


# -- combining ----------------------------------------------------------------------------------


def test_sources_combine_by_sum_or_max_and_one_failure_makes_all_unknown() -> None:
    a, b = StaticSignal(3, 1, name="a"), StaticSignal(5, 0, name="b")
    assert CombinedSignal([a, b], "sum").read(0).queued_jobs == 8
    assert CombinedSignal([a, b], "max").read(0).queued_jobs == 5
    b.failing = "connection refused"
    combined = CombinedSignal([a, b], "sum")
    with pytest.raises(SignalError, match="b: connection refused"):
        combined.read(0)
    assert [(r.name, r.up) for r in combined.readings] == [("a", True), ("b", False)]


def test_a_dead_source_makes_the_engine_hold_and_says_which(tmp_path: object) -> None:
    from autoscaler.common.clock import ManualClock
    from autoscaler.config import Settings
    from autoscaler.service.runtime import build_runtime
    from autoscaler.store import SqliteStore
    from autoscaler.tensordock.fake import build_fake, in_process_transport

    from ..conftest import TOKEN

    require_server("Redis", 6379)
    clock = ManualClock()
    fake = build_fake(TOKEN, "observed", clock=clock)
    good = RedisSignal(RedisOptions(url=secret(REDIS_URL), key="tdas-test-engine-empty"), name="jobs")
    dead = RedisSignal(
        RedisOptions(url=secret(f"redis://127.0.0.1:{dead_port()}/0"), key="q", timeout_s=1), name="other-jobs"
    )
    runtime = build_runtime(
        Settings(
            tensordock={"base_url": "http://fake/api/v2", "token": TOKEN},  # type: ignore[arg-type]
            fleet={"ssh_key": "ssh-ed25519 AAAA test"},
        ),  # type: ignore[arg-type]
        clock=clock,
        transport=in_process_transport(fake),
        signal=CombinedSignal([good, dead], "sum"),
        store=SqliteStore(":memory:"),
    )
    try:
        report = runtime.engine.run_cycle()
        assert report.snapshot is not None and report.snapshot.demand is None
        assert "other-jobs" in (report.snapshot.demand_error or "")
        assert report.results == []
        registry = runtime.engine.metrics.registry
        assert registry.get_sample_value("tensordock_autoscaler_signal_up", {"source": "jobs"}) == 1.0
        assert registry.get_sample_value("tensordock_autoscaler_signal_up", {"source": "other-jobs"}) == 0.0
    finally:
        runtime.close()


def test_signal_options_are_checked_when_the_config_loads() -> None:
    from autoscaler.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"signal\.sources\[0\] \(redis\)\.options\.key"):
        load_settings(None, signal={"sources": [{"kind": "redis", "options": {"mode": "list"}}]})
    with pytest.raises(ConfigError, match="unknown source 'kafka'"):
        load_settings(None, signal={"sources": [{"kind": "kafka"}]})


# -- the queue's width mix (issue 16) ---------------------------------------------------------------


def test_demand_refuses_a_width_mix_that_cannot_be_true() -> None:
    from autoscaler.signals import Demand

    ok = Demand(3, 1, 0.0, max_job_gpus=8, queued_by_width={1: 2, 8: 1}, running_by_width={4: 1})
    assert ok.widths_known
    for bad, match in (
        ({"queued_by_width": {1: 4}}, "more than the 3"),  # counts more jobs than are queued
        ({"queued_by_width": {0: 1}}, "not a job width"),
        ({"queued_by_width": {1: -1}}, "not a whole number"),
        ({"queued_by_width": {8: 1}, "max_job_gpus": 4}, "max_job_gpus is 4"),
        ({"running_by_width": {1: 2}}, "more than the 1"),
    ):
        with pytest.raises(ValueError, match=match):
            Demand(3, 1, 0.0, **{"max_job_gpus": 8, **bad})  # type: ignore[arg-type]


def test_file_source_reads_the_width_mix(tmp_path: object) -> None:
    from pathlib import Path

    from autoscaler.signals.static import FileSignal

    path = Path(str(tmp_path)) / "queue.json"
    path.write_text('{"queued": 5, "running": 1, "queued_by_width": {"1": 3, "8": 2}, "running_by_width": {"4": 1}}')
    demand = FileSignal(path).read(time.time())
    assert (demand.queued_by_width, demand.running_by_width, demand.max_job_gpus) == ({1: 3, 8: 2}, {4: 1}, 8)
    path.write_text('{"queued": 5, "running": 1}')
    assert FileSignal(path).read(time.time()).queued_by_width is None  # cannot tell: today's behaviour
    path.write_text('{"queued": 1, "queued_by_width": {"1": 3}}')
    with pytest.raises(SignalError, match="more than the 1"):
        FileSignal(path).read(time.time())
    path.write_text('{"queued": 3, "queued_by_width": {"one": 3}}')
    with pytest.raises(SignalError, match="not a count"):
        FileSignal(path).read(time.time())
    # a JSON key is always a string: the error is about the number it spells, not "a string"
    for key, said in (("-1", "width is -1, a negative count"), ("1.5", "width is 1.5, not a count")):
        path.write_text(f'{{"queued": 3, "queued_by_width": {{"{key}": 3}}}}')
        with pytest.raises(SignalError, match=said):
            FileSignal(path).read(time.time())


def test_a_queue_file_with_observed_at_in_the_wrong_form_says_what_to_write(tmp_path: object) -> None:
    """Before: `float() argument must be a string or a real number, not 'NoneType'` and `list indices
    must be integers`, naming neither the field nor the fix (found by a probe)."""
    from pathlib import Path

    from autoscaler.signals.static import FileSignal

    path = Path(str(tmp_path)) / "queue.json"
    for document, said in (
        ('{"queued": 1, "observed_at": null}', "observed_at is None; write Unix seconds"),
        ('{"queued": 1, "observed_at": "2026-11-28T16:00:00Z"}', "observed_at is '2026-11-28T16:00:00Z'; write Unix"),
        ("[1, 2]", 'is list; write an object: {"queued": N'),
    ):
        path.write_text(document)
        with pytest.raises(SignalError, match=re.escape(said)):
            FileSignal(path).read(time.time())
    path.write_text('{"queued": 1, "observed_at": "1767225600.5"}')  # a number in a string: as before
    assert FileSignal(path).read(time.time()).observed_at == 1767225600.5


def test_postgres_width_query_reports_the_mix(jobs_table: str) -> None:
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {jobs_table} ADD COLUMN gpus int NOT NULL DEFAULT 1")
        conn.execute(
            f"INSERT INTO {jobs_table} (state, gpus) VALUES ('queued', 1), ('queued', 1), ('queued', 8),"
            " ('running', 4), ('done', 8)"
        )
    counts = (
        f"SELECT count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'running') FROM {jobs_table}"
    )
    widths = (
        f"SELECT gpus, count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'running') "
        f"FROM {jobs_table} GROUP BY gpus"
    )
    source = PostgresSignal(PostgresOptions(dsn=secret(PG_DSN), query=counts, width_query=widths))
    plain = PostgresSignal(PostgresOptions(dsn=secret(PG_DSN), query=counts))
    try:
        demand = source.read(time.time())
        assert {w: n for w, n in (demand.queued_by_width or {}).items() if n} == {1: 2, 8: 1}
        assert {w: n for w, n in (demand.running_by_width or {}).items() if n} == {4: 1}
        assert demand.max_job_gpus == 8
        assert plain.read(time.time()).queued_by_width is None
        liar = PostgresSignal(
            PostgresOptions(dsn=secret(PG_DSN), query=counts, width_query="SELECT 1, 99")  # 99 of 3 queued
        )
        with pytest.raises(SignalError, match="more than the 3"):
            liar.read(time.time())
        liar.close()
    finally:
        source.close()
        plain.close()


def test_http_json_width_paths(json_endpoint: JsonEndpoint) -> None:
    json_endpoint.document = {"q": 4, "r": 1, "mix": {"waiting": {"1": 3, "2": 1}, "running": [[8, 1]]}}
    source = HttpJsonSignal(
        HttpJsonOptions(
            url=json_endpoint.url,
            queued_path="q",
            running_path="r",
            queued_by_width_path="mix.waiting",
            running_by_width_path="mix.running",
            bearer_token=secret("s3cret-token"),
        )
    )
    demand = source.read(time.time())
    assert (demand.queued_by_width, demand.running_by_width, demand.max_job_gpus) == ({1: 3, 2: 1}, {8: 1}, 2)
    json_endpoint.document = {"q": 4, "r": 1, "mix": {"waiting": {"1": "three"}, "running": []}}
    with pytest.raises(SignalError, match="not a count"):
        source.read(time.time())
    json_endpoint.document = {"q": 4, "r": 1}
    with pytest.raises(SignalError, match="not found"):
        source.read(time.time())
    source.close()


def test_redis_width_field_reads_a_bounded_sample_of_the_head(redis_client: redis.Redis, unique: str) -> None:
    import json

    source = RedisSignal(RedisOptions(url=secret(REDIS_URL), key=unique, width_field="spec.gpus", width_sample=4))
    try:
        jobs = [{"spec": {"gpus": 8}}, {"spec": {"gpus": 1}}, {"other": 1}, "not json", {"spec": {"gpus": 4}}]
        redis_client.rpush(unique, *[json.dumps(j) if not isinstance(j, str) else j for j in jobs])
        demand = source.read(time.time())
        # the first four only: 8, 1, and two without the field (one GPU each); the fifth is not read
        assert (demand.queued_jobs, demand.queued_by_width, demand.max_job_gpus) == (5, {8: 1, 1: 3}, 8)
        redis_client.lset(unique, 0, json.dumps({"spec": {"gpus": "eight"}}))
        odd = source.read(time.time())  # a producer's bug: that job's width is unknown, the rest still count
        assert (odd.queued_jobs, odd.queued_by_width, odd.max_job_gpus) == (5, {1: 3}, 1)
        redis_client.delete(unique)
        assert source.read(time.time()).queued_by_width == {}
        # a binary payload (a pickled job) is one job, of one GPU: before, the whole queue was unreadable
        redis_client.rpush(unique, b"\x80\x04\x95pickle\xff", json.dumps({"spec": {"gpus": 8}}))
        binary = source.read(time.time())
        assert (binary.queued_jobs, binary.queued_by_width) == (2, {1: 1, 8: 1})
    finally:
        redis_client.delete(unique)
        source.close()
    with pytest.raises(ValueError, match="width_field works with"):
        RedisOptions(url=secret(REDIS_URL), key=unique, mode="zset", width_field="gpus")
