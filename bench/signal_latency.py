"""Read latency of every demand source against the local servers, next to the bare client call.

    .venv/bin/python bench/signal_latency.py [--reads 200]

`ours` is `source.read()` (timeouts, validation, error mapping, and for NATS a connection per
read); `bare` is the one library call that fetches the same number on a connection kept open.
Needs the services `.ci/run` starts (Redis, RabbitMQ, PostgreSQL, NATS) and Debian's prometheus.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import pika
import psycopg
import redis
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from autoscaler.common.logging import configure_logging
from autoscaler.signals.base import Secret
from autoscaler.signals.http_json import HttpJsonOptions, HttpJsonSignal
from autoscaler.signals.nats_jetstream import NatsOptions, NatsSignal
from autoscaler.signals.postgres import PostgresOptions, PostgresSignal
from autoscaler.signals.prometheus import PrometheusOptions, PrometheusSignal
from autoscaler.signals.rabbitmq import RabbitMqOptions, RabbitMqSignal
from autoscaler.signals.redis_queue import RedisOptions, RedisSignal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/support.py
from autoscaler.common.wsgi import QuietHandler
from tests.support import LocalPrometheus


def _queue_app(environ: dict[str, Any], start_response: Any) -> Any:
    return Response('{"queue": {"waiting": 5}}', mimetype="application/json")(environ, start_response)


def secret(value: str) -> Secret:
    return Secret.model_validate({"value": value})


def timings(fn: Callable[[], object], reads: int) -> list[float]:
    out = []
    for _ in range(reads):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def p99(values: list[float]) -> float:
    return sorted(values)[max(0, round(len(values) * 0.99) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    configure_logging("WARNING")
    tag = f"bench-{uuid.uuid4().hex[:6]}"
    rows: list[tuple[str, list[float], list[float]]] = []

    r = redis.Redis.from_url("redis://127.0.0.1:6379/15")
    r.rpush(tag, *range(10))
    src = RedisSignal(RedisOptions(url=secret("redis://127.0.0.1:6379/15"), key=tag))
    rows.append(
        ("redis (list)", timings(lambda: src.read(time.time()), args.reads), timings(lambda: r.llen(tag), args.reads))
    )
    r.delete(tag)

    amqp = "amqp://guest:guest@127.0.0.1:5672/%2F"
    conn = pika.BlockingConnection(pika.URLParameters(amqp))
    channel = conn.channel()
    channel.queue_declare(tag)
    rabbit = RabbitMqSignal(RabbitMqOptions(url=secret(amqp), queue=tag))
    rows.append(
        (
            "rabbitmq",
            timings(lambda: rabbit.read(time.time()), args.reads),
            timings(lambda: channel.queue_declare(tag, passive=True), args.reads),
        )
    )
    channel.queue_delete(tag)
    conn.close()
    rabbit.close()

    dsn = "postgresql://postgres@127.0.0.1:5432/postgres"
    query = "SELECT count(*), 0 FROM pg_class"
    pg = PostgresSignal(PostgresOptions(dsn=secret(dsn), query=query))
    raw = psycopg.connect(dsn, autocommit=True)
    rows.append(
        (
            "postgres",
            timings(lambda: pg.read(time.time()), args.reads),
            timings(lambda: raw.execute(query).fetchone(), args.reads),
        )
    )
    raw.close()
    pg.close()

    stream = tag.replace("-", "_")

    async def nats_setup() -> None:
        nc = await nats.connect("nats://127.0.0.1:4222")
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{tag}.jobs"])
        await js.add_consumer(stream, durable_name="w", ack_policy="explicit")
        await nc.close()

    async def nats_bare(reads: int) -> list[float]:
        nc = await nats.connect("nats://127.0.0.1:4222")
        js = nc.jetstream()
        out = []
        for _ in range(reads):
            started = time.perf_counter()
            await js.consumer_info(stream, "w")
            out.append((time.perf_counter() - started) * 1000)
        await js.delete_stream(stream)
        await nc.close()
        return out

    asyncio.run(nats_setup())
    nsrc = NatsSignal(NatsOptions(url=secret("nats://127.0.0.1:4222"), stream=stream, consumer="w"))
    ours_nats = timings(lambda: nsrc.read(time.time()), args.reads)
    rows.append(("nats jetstream", ours_nats, asyncio.run(nats_bare(args.reads))))

    prom = LocalPrometheus()
    depth = prom.gauge("bench_queue_depth", "jobs")
    depth.set(4)
    prom.start()
    try:
        prom.wait_for("sum(bench_queue_depth)", 4)
        psrc = PrometheusSignal(PrometheusOptions(url=prom.url, queued_query="sum(bench_queue_depth)"))
        http = httpx.Client()
        rows.append(
            (
                "prometheus",
                timings(lambda: psrc.read(time.time()), args.reads),
                timings(
                    lambda: http.get(f"{prom.url}/api/v1/query", params={"query": "sum(bench_queue_depth)"}).json(),
                    args.reads,
                ),
            )
        )
        server = make_server("127.0.0.1", 0, _queue_app, threaded=True, request_handler=QuietHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_port}/queue"
        jsrc = HttpJsonSignal(HttpJsonOptions(url=url, queued_path="queue.waiting"))
        rows.append(
            (
                "http json",
                timings(lambda: jsrc.read(time.time()), args.reads),
                timings(lambda: http.get(url).json(), args.reads),
            )
        )
        server.shutdown()
    finally:
        prom.stop()

    print(
        f"{'source':<16} {'ours p50 ms':>12} {'ours p99 ms':>12} {'bare p50 ms':>12} {'bare p99 ms':>12}"
        f" {'p50 ratio':>10}"
    )
    for name, ours, bare in rows:
        print(
            f"{name:<16} {statistics.median(ours):>12.2f} {p99(ours):>12.2f} {statistics.median(bare):>12.2f}"
            f" {p99(bare):>12.2f} {statistics.median(ours) / statistics.median(bare):>9.2f}x"
        )


if __name__ == "__main__":
    main()
