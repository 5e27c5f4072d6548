"""Real servers for the demand sources. A missing server fails loudly; nothing is skipped."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from werkzeug.serving import WSGIRequestHandler

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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

    def wait_for(self, query: str, expected: float, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                result = httpx.get(f"{self.url}/api/v1/query", params={"query": query}, timeout=2).json()
                values = [float(r["value"][1]) for r in result["data"]["result"]]
                last = values
                if values and abs(sum(values) - expected) < 1e-9:
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.25)
        pytest.fail(f"Prometheus never showed {query} == {expected} (last {last})")


@pytest.fixture(scope="session")
def prometheus_server() -> Iterator[PrometheusServer]:
    """A real Prometheus (Debian's package) on a loopback port, scraping an exporter this test runs."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the prometheus binary is missing; .ci/run installs Debian's 'prometheus' package")
    registry = CollectorRegistry()
    queued = Gauge("tdas_test_queue_depth", "jobs waiting", registry=registry)
    running = Gauge("tdas_test_jobs_running", "jobs running", registry=registry)
    busy = Gauge("tdas_test_worker_busy", "1 when the worker runs a job", ["instance_name"], registry=registry)
    exporter_port = free_port()
    server, thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="tdas-prom-"))
    (workdir / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: queue\n    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n"
    )
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"Prometheus did not start: {process.stderr.read().decode()[-500:] if process.stderr else ''}")
        time.sleep(0.2)
    try:
        yield PrometheusServer(url, queued, running, busy)
    finally:
        process.terminate()
        process.wait(timeout=10)
        server.shutdown()
        thread.join(timeout=5)
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class JsonEndpoint:
    url: str
    document: dict[str, Any]


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


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

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint.url = f"http://127.0.0.1:{server.server_port}/queue"
    yield endpoint
    server.shutdown()
    thread.join(timeout=5)
