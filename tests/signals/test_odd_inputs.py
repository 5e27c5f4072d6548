"""What a queue's producers, its operators or a careless endpoint get wrong, against the real servers.

Each case was found by probing a running daemon; each failed before its fix.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest
import redis

from autoscaler.common.logging import configure_logging
from autoscaler.signals import SignalError
from autoscaler.signals.base import MAX_JOB_COUNT, whole_count
from autoscaler.signals.http_json import HttpJsonOptions, HttpJsonSignal
from autoscaler.signals.prometheus import PrometheusOptions, PrometheusSignal
from autoscaler.signals.rabbitmq import RabbitMqOptions, RabbitMqSignal
from autoscaler.signals.registry import SignalConfigError, SignalSettings, SignalSpec, build_signal
from autoscaler.signals.static import FileOptions, FileSignal

from .conftest import JsonEndpoint, dead_port, require_server
from .test_sources import PG_DSN, REDIS_URL, secret


@pytest.mark.parametrize(
    ("kind", "options", "field"),
    [
        ("redis", {"url": "http://127.0.0.1:6379/0", "key": "k"}, "signal.sources[0] (redis)"),
        ("rabbitmq", {"url": "amqp://guest:guest@127.0.0.1:notaport/", "queue": "q"}, "signal.sources[0] (rabbitmq)"),
        ("prometheus", {"url": "http://[::bad", "queued_query": "q"}, "signal.sources[0] (prometheus)"),
    ],
)
def test_an_address_the_client_library_refuses_is_a_configuration_error(
    kind: str, options: dict[str, object], field: str
) -> None:
    """Before: the library's own ValueError escaped, and a SIGHUP with it killed the daemon."""
    with pytest.raises(SignalConfigError) as refused:
        build_signal(SignalSettings(sources=[SignalSpec(kind=kind, options=options)]))
    assert str(refused.value).startswith(f"{field}: ")


@pytest.mark.parametrize("count", [MAX_JOB_COUNT + 1, 10**18, 10**400])
def test_a_count_no_queue_holds_is_refused(count: int) -> None:
    with pytest.raises(ValueError, match="more jobs than any queue holds"):
        whole_count(count, "queued")
    assert whole_count(MAX_JOB_COUNT, "queued") == MAX_JOB_COUNT


def test_a_count_past_float_range_fails_the_read_instead_of_every_cycle(json_endpoint: JsonEndpoint) -> None:
    """Before: a 401-digit count was believed, and every cycle then crashed converting it to a float."""
    json_endpoint.document = {"queue": {"waiting": 10**400}, "workers": {"tdas-a": None, "tdas-b": False}}
    source = HttpJsonSignal(
        HttpJsonOptions(url=json_endpoint.url, queued_path="queue.waiting", bearer_token=secret("s3cret-token"))
    )
    with pytest.raises(SignalError, match="a 401-digit number, more jobs than any queue holds"):
        source.read(time.time())


def test_a_null_busy_flag_is_unknown_not_idle(json_endpoint: JsonEndpoint, unique: str) -> None:
    """Rule 5: a worker whose state is unknown must not read as idle (stoppable)."""
    json_endpoint.document = {"queue": {"waiting": 1}, "workers": {"tdas-a": None, "tdas-b": False, "tdas-c": 1}}
    source = HttpJsonSignal(
        HttpJsonOptions(
            url=json_endpoint.url, queued_path="queue.waiting", busy_path="workers", bearer_token=secret("s3cret-token")
        )
    )
    assert source.read(time.time()).busy == {"tdas-b": False, "tdas-c": True}
    require_server("PostgreSQL", 5432)
    postgres = build_signal(
        SignalSettings(
            sources=[
                SignalSpec(
                    kind="postgres",
                    options={
                        "dsn": {"value": PG_DSN},
                        "query": "SELECT 1, 0",
                        "busy_query": "SELECT * FROM (VALUES ('w1', NULL::boolean), ('w2', true)) AS t",
                    },
                )
            ]
        )
    )
    try:
        assert postgres.read(time.time()).busy == {"w2": True}
    finally:
        postgres.close()


def test_a_query_that_commits_its_own_transaction_still_cannot_write(unique: str) -> None:
    """Before: `SELECT 1, 0; COMMIT; INSERT ...` ended the read-only transaction and wrote the row."""
    require_server("PostgreSQL", 5432)
    table = unique.replace("-", "_")
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (x int)")
    source = build_signal(
        SignalSettings(
            sources=[
                SignalSpec(
                    kind="postgres",
                    options={"dsn": {"value": PG_DSN}, "query": f"SELECT 1, 0; COMMIT; INSERT INTO {table} VALUES (1)"},
                )
            ]
        )
    )
    try:
        with pytest.raises(SignalError, match="multiple commands"):
            source.read(time.time())
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    finally:
        source.close()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")


def test_one_job_with_an_unreadable_width_does_not_blind_the_queue(unique: str) -> None:
    """Before: one producer's `{"gpus": "2"}` at the head failed every read, so with no worker up
    nothing ever took it off the queue and the fleet never scaled. Its width is now unknown."""
    require_server("Redis", 6379)
    client = redis.Redis.from_url(REDIS_URL)
    bad = [json.dumps({"gpus": "2"}), json.dumps({"gpus": 2.5}), "[" * 100_000]
    client.rpush(unique, *bad, *[json.dumps({"gpus": 8})] * 2, *[json.dumps({"gpus": 1})] * 5)
    source = build_signal(
        SignalSettings(
            sources=[SignalSpec(kind="redis", options={"url": REDIS_URL, "key": unique, "width_field": "gpus"})]
        )
    )
    try:
        demand = source.read(time.time())
        assert demand.queued_jobs == 10
        assert demand.queued_by_width == {8: 2, 1: 5} and demand.max_job_gpus == 8
    finally:
        source.close()
        client.delete(unique)


def test_an_endless_reply_fails_the_read_instead_of_filling_memory(json_endpoint: JsonEndpoint) -> None:
    json_endpoint.document = {"queue": {"waiting": 1}, "padding": "x" * (9 * 1024 * 1024)}
    source = HttpJsonSignal(
        HttpJsonOptions(url=json_endpoint.url, queued_path="queue.waiting", bearer_token=secret("s3cret-token"))
    )
    with pytest.raises(SignalError, match="reply larger than 8388608 bytes"):
        source.read(time.time())
    json_endpoint.document = {"queue": {"waiting": 1}}
    assert source.read(time.time()).queued_jobs == 1


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ([], "the reply is not a Prometheus API object"),
        ({"status": "success", "data": None}, "the reply has no data object"),
        ({"status": "success", "data": {"resultType": "vector", "result": [{"metric": None, "value": [0, "3"]}]}}, 3),
    ],
)
def test_a_prometheus_reply_of_another_shape_is_a_failed_read_not_a_plugin_bug(
    json_endpoint: JsonEndpoint, reply: object, expected: object
) -> None:
    """Before: a list, or a null `metric`, raised AttributeError/TypeError (the plugin-bug path)."""
    json_endpoint.document = reply  # type: ignore[assignment]
    source = PrometheusSignal(
        PrometheusOptions(url=json_endpoint.url, queued_query="q", bearer_token=secret("s3cret-token"))
    )
    if isinstance(expected, int):
        assert source.read(time.time()).queued_jobs == expected
        return
    with pytest.raises(SignalError, match=str(expected)):
        source.read(time.time())


def test_a_file_sources_busy_flags_take_one_zero_and_null_as_the_readme_says(tmp_path: Path) -> None:
    """Before: `{"w": 1}` or `{"w": null}` failed the whole read, and demand became unknown."""
    path = tmp_path / "queue.json"
    path.write_text(json.dumps({"queued": 1, "busy": {"a": 1, "b": 0, "c": None, "d": True}}))
    demand = FileSignal(FileOptions(path=str(path))).read(time.time())
    assert demand.queued_jobs == 1 and demand.busy == {"a": True, "b": False, "d": True}  # c: unknown
    path.write_text(json.dumps({"queued": 1, "busy": ["a"]}))
    with pytest.raises(SignalError, match="busy must map instance names"):
        FileSignal(FileOptions(path=str(path))).read(time.time())


def test_a_refused_rabbitmq_connection_names_where_and_pika_says_nothing_at_info(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Before: 22 pika ERROR lines a second, tracebacks among them, and `AMQPConnectionError:` alone."""
    configure_logging("INFO", json_lines=True)
    port = dead_port()
    source = RabbitMqSignal(RabbitMqOptions(url=secret(f"amqp://guest:guest@127.0.0.1:{port}/"), queue="q"))
    with pytest.raises(SignalError) as failed:
        source.read(time.time())
    assert f"127.0.0.1:{port}" in str(failed.value)
    assert "AMQPConnectionError: " in str(failed.value) and not str(failed.value).endswith("AMQPConnectionError: ")
    source.close()
    captured = capfd.readouterr()
    assert "pika" not in captured.err and "Traceback" not in captured.err


def test_two_sources_of_one_name_are_refused() -> None:
    """Before: two unnamed file sources shared one `signal_up{source="file"}`, which read 1 while one was down."""
    specs = [SignalSpec(kind="static", options={"queued": 1}), SignalSpec(kind="static", options={"queued": 2})]
    with pytest.raises(SignalConfigError, match=r"signal.sources\[1\].name: 'static' is also signal.sources\[0\]"):
        build_signal(SignalSettings(sources=specs))
    named = [SignalSpec(kind="static", name="a", options={"queued": 1}), SignalSpec(kind="static", name="b")]
    build_signal(SignalSettings(sources=named)).close()
