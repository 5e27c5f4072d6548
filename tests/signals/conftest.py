"""Real servers for the demand sources. A missing server fails loudly; nothing is skipped."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import Gauge

from autoscaler.common.wsgi import QuietHandler
from tests.support import LocalPrometheus, free_port

START_HINT = {
    "PostgreSQL": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "Redis": "redis-server --daemonize yes --port 6379",
    "RabbitMQ": "rabbitmq-server -detached",
    "NATS": "nats-server -p 4222 -js",
}


def require_server(name: str, port: int) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return
    except OSError:
        pytest.fail(f"{name} is not running on 127.0.0.1:{port}; .ci/run starts it ({START_HINT[name]})")


def dead_port() -> int:
    return free_port()  # bound and released: nothing listens there


@pytest.fixture
def unique() -> str:
    return f"tdas-test-{uuid.uuid4().hex[:8]}"


@dataclass
class PrometheusServer:
    url: str
    queued: Gauge
    running: Gauge
    busy: Gauge
    server: LocalPrometheus

    def wait_for(self, query: str, expected: float) -> None:
        self.server.wait_for(query, expected)


@pytest.fixture(scope="session")
def prometheus_server() -> Iterator[PrometheusServer]:
    """A real Prometheus (Debian's package) on a loopback port, scraping an exporter this test runs."""
    local = LocalPrometheus()
    queued = local.gauge("tdas_test_queue_depth", "jobs waiting")
    running = local.gauge("tdas_test_jobs_running", "jobs running")
    busy = local.gauge("tdas_test_worker_busy", "1 when the worker runs a job", ("instance_name",))
    try:
        local.start()
    except RuntimeError as exc:
        pytest.fail(f"{exc}; .ci/run installs Debian's 'prometheus' package")
    try:
        yield PrometheusServer(local.url, queued, running, busy, local)
    finally:
        local.stop()


@dataclass
class JsonEndpoint:
    url: str
    document: dict[str, Any]


@pytest.fixture
def json_endpoint() -> Iterator[JsonEndpoint]:
    from werkzeug.serving import make_server
    from werkzeug.wrappers import Request, Response

    endpoint = JsonEndpoint("", {})

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        import json

        request = Request(environ)
        if request.headers.get("Authorization") != "Bearer s3cret-token":
            return Response("{}", 401, mimetype="application/json")(environ, start_response)
        return Response(json.dumps(endpoint.document), mimetype="application/json")(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint.url = f"http://127.0.0.1:{server.server_port}/queue"
    yield endpoint
    server.shutdown()
    thread.join(timeout=5)
