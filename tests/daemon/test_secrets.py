"""A distinctive secret planted in every credential field is found in no output of any command.

Every command runs as its own process (what an operator sees), the daemon runs real cycles, the
API answers with an error page that echoes the request headers, and the store's tables are read.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from autoscaler.common.clock import SystemClock
from autoscaler.common.secrets import MaskingStream, mask_secrets, register_secret
from autoscaler.store import open_store
from autoscaler.tensordock import MalformedResponseError
from autoscaler.tensordock.client import TensorDockClient
from autoscaler.tensordock.fake import FakeServer, Timings, build_fake
from tests.support import free_port

SECRET = "Pl4nted-S3cret-q7Zx"
API_TOKEN = f"td-{SECRET}-token"
SCHEMA = f"tdas_secrets_{os.getpid()}"
STORE_URL = f"postgresql://postgres:{SECRET}@127.0.0.1:5432/postgres?schema={SCHEMA}"

CONFIG = """
dry_run = false
max_signal_age_s = 3600

[tensordock]
base_url = "{api}"
token_file = "{token_file}"
max_attempts = 1
backoff_initial_s = 0.05
read_timeout_s = 5

[fleet]
ssh_key = "ssh-ed25519 AAAATEST secrets-test"

[store]
url = "{store}"

[scheduler]
interval_s = 1
jitter_s = 0
shutdown_timeout_s = 20

[metrics]
port = {port}

[log]
level = "DEBUG"
json_lines = true

[[signal.sources]]
kind = "redis"
options = {{ timeout_s = 1, url = "redis://:{secret}@127.0.0.1:6379/0", key = "tdas-secrets-queue" }}

[[signal.sources]]
kind = "rabbitmq"
options = {{ timeout_s = 1, url = {{ value = "amqp://guest:{secret}@127.0.0.1:5672/%2F" }}, queue = "tdas-secrets" }}

[[signal.sources]]
kind = "nats"
options = {{ timeout_s = 1, url = {{ env = "SECRETS_TEST_NATS_URL" }}, stream = "tdas-secrets", consumer = "c" }}

[[signal.sources]]
kind = "postgres"
options = {{ timeout_s = 1, dsn = "postgresql://postgres:{secret}@127.0.0.1:5432/postgres", query = "SELECT 1, 0" }}

[[signal.sources]]
kind = "prometheus"
options = {{ timeout_s = 1, url = "http://scrape:{secret}@127.0.0.1:1", queued_query = "q", bearer_token = "{secret}" }}

[[signal.sources]]
kind = "http"
options = {{ timeout_s = 1, url = "{echo}/queue", queued_path = "n", bearer_token = {{ file = "{secret_file}" }} }}
"""


class _EchoHeaders(http.server.BaseHTTPRequestHandler):
    """An error page that repeats the request's headers, as some proxies' pages do."""

    def do_GET(self) -> None:
        body = f"<h1>500 upstream error</h1><pre>{self.headers}</pre>".encode()
        self.send_response(500)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoHeaders)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def drop_schema() -> Iterator[None]:
    yield
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TDAS_")}
    env["SECRETS_TEST_NATS_URL"] = f"nats://user:{SECRET}@127.0.0.1:4222"
    return env


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autoscaler.commands.cli", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
        check=False,
    )


def _store_text() -> str:
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (SCHEMA,)
        ).fetchall()
        dump = []
        for (table,) in rows:
            dump.append(repr(conn.execute(f'SELECT * FROM "{SCHEMA}"."{table}"').fetchall()))
    return "\n".join(dump)


@pytest.mark.timeout(300)
def test_a_planted_secret_appears_in_no_output(tmp_path: Path, echo_server: str, drop_schema: None) -> None:
    token_file, secret_file = tmp_path / "token", tmp_path / "bearer"
    token_file.write_text(API_TOKEN)
    secret_file.write_text(SECRET)
    token_file.chmod(0o600)
    fake = build_fake(API_TOKEN, "observed", clock=SystemClock(), timings=Timings(create_s=1, ip_s=0.5))
    server = FakeServer(fake).start()
    port = free_port()
    values = {
        "token_file": token_file,
        "store": STORE_URL,
        "port": port,
        "secret": SECRET,
        "echo": echo_server,
        "secret_file": secret_file,
    }
    good, echoing = tmp_path / "good.toml", tmp_path / "echo.toml"
    good.write_text(CONFIG.format(api=server.url, **values))
    echoing.write_text(CONFIG.format(api=f"{echo_server}/api/v2", **values))

    outputs: dict[str, str] = {}
    commands = {
        "check-config": ["check-config", str(good)],
        "check-config --connect": ["check-config", "--connect", str(good)],
        "spend": ["spend", "--config", str(good)],
        "spend --json": ["spend", "--config", str(good), "--json"],
        "adopt": ["adopt", "--config", str(good)],
        "adopt --json, echoing API": ["adopt", "--config", str(echoing), "--json"],
        "plan": ["plan", "--config", str(good)],
        "plan --json": ["plan", "--config", str(good), "--json"],
        "status": ["status", "--config", str(good)],
        "status --json": ["status", "--config", str(good), "--json"],
        "plan, echoing API": ["plan", "--config", str(echoing)],
        "plan --json, echoing API": ["plan", "--config", str(echoing), "--json"],
        "status, echoing API": ["status", "--config", str(echoing)],
        "status --json, echoing API": ["status", "--config", str(echoing), "--json"],
    }
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:  # mostly waiting on the sources' timeouts: side by side
            futures: dict[str, Future[subprocess.CompletedProcess[str]]] = {
                name: pool.submit(_cli, *args) for name, args in commands.items()
            }
            for name, future in futures.items():
                done = future.result()
                outputs[name] = done.stdout + done.stderr
        # the echoing API did answer with the secret in its page: the CLI had it and masked it
        assert "***" in outputs["status, echoing API"], outputs["status, echoing API"]

        log = (tmp_path / "run.log").open("w")  # a file, not a pipe: DEBUG lines must never block the daemon
        process = subprocess.Popen(
            [sys.executable, "-m", "autoscaler.commands.cli", "run", "--config", str(good)],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        try:
            deadline = time.monotonic() + 60
            metrics = ""
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                except httpx.HTTPError:
                    metrics = ""
                held = re.search(r'tensordock_autoscaler_cycles_total\{result="hold"\} (\d+)', metrics)
                if held and int(held.group(1)) >= 3:
                    break
                time.sleep(0.3)
            assert 'tensordock_autoscaler_cycles_total{result="hold"}' in metrics, "the daemon ran no cycles"
            process.send_signal(signal.SIGHUP)  # a reload prints its own line
            time.sleep(1.5)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=40)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
            log.close()
        outputs["run"] = (tmp_path / "run.log").read_text()
        outputs["/metrics"] = metrics
        assert "demand_unknown" in outputs["run"]  # the sources did fail, with their messages logged
    finally:
        server.stop()
    outputs["store"] = _store_text()

    leaked = [name for name, text in outputs.items() if SECRET in text]
    assert not leaked, {name: outputs[name][:3000] for name in leaked}
    assert all(text for text in outputs.values())
    assert server.url in outputs["check-config"]  # masking hides passwords, not every URL


def test_the_journal_stores_errors_masked(tmp_path: Path) -> None:
    register_secret("journal-token-4411")
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        entry = store.journal_intent("c1", 0.0, "create", name="tdas-a", reason="grow")
        store.journal_outcome(entry, "failed", 1.0, error="500: <pre>Authorization: Bearer journal-token-4411</pre>")
        store.journal_outcome(entry, "failed", 1.0, error="cannot reach postgresql://u:pw-not-registered@db/x")
        (row,) = store.journal(10)
        store.back_off("loc/host/model", 10.0, "400: echoed Bearer journal-token-4411")
        dump = "\n".join(store._db.iterdump())  # type: ignore[attr-defined]
    finally:
        store.close()
    assert row.error == "cannot reach postgresql://u:***@db/x"
    assert "journal-token-4411" not in dump and "pw-not-registered" not in dump


def test_an_error_page_echoing_the_token_is_masked_before_it_is_cut_to_an_excerpt() -> None:
    """Before: a 200 HTML page echoing `Authorization: Bearer <token>` was cut to 120 characters
    and then masked, so the whole token was not there to match, and its first half was logged."""
    token = "tok-SECRET-abcdef-123456"
    register_secret(token)

    def echo(request: httpx.Request) -> httpx.Response:
        page = "<html><body><pre>GET /api/v2/instances HTTP/1.1 Host: dashboard.tensordock.com Accept: */* "
        return httpx.Response(200, text=page + f"Authorization: {request.headers['authorization']}</pre>")

    client = TensorDockClient("http://fake/api/v2", token, transport=httpx.MockTransport(echo), max_attempts=1)
    with pytest.raises(MalformedResponseError) as caught:
        client.list_instances()
    message = str(caught.value)
    assert "Bearer ***" in message and "tok-SEC" not in message, message
    client.close()


def test_url_passwords_are_masked_registered_or_not() -> None:
    assert mask_secrets("redis://:hunter22@h:6379/0 and amqp://guest:pa@ss@q/%2F") == (
        "redis://:***@h:6379/0 and amqp://guest:***@q/%2F"
    )
    assert mask_secrets('{"url": "http://host:8080/path@x"}') == '{"url": "http://host:8080/path@x"}'


def test_each_json_line_is_written_whole_from_many_threads() -> None:
    """Two threads writing a line in pieces never glue their events onto one line."""
    import io

    target = io.StringIO()
    stream = MaskingStream(target)

    def writer(tag: str) -> None:
        for i in range(300):
            stream.write(json.dumps({"event": tag, "i": i}))
            stream.write("\n")

    threads = [threading.Thread(target=writer, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = target.getvalue().splitlines()
    assert len(lines) == 1200
    assert all(json.loads(line)["event"].startswith("t") for line in lines)


def test_a_secret_echoed_in_another_case_or_percent_encoded_is_masked() -> None:
    """Before: an error reply that echoed the token upper-cased or URL-encoded was logged, journaled
    and stored in the back-off table as it came (found by an adversarial probe of the daemon)."""
    token = "td-Probe-token-abc123XYZ"
    register_secret(token)
    for echoed in (
        token,
        token.upper(),
        token.lower(),
        "td%2DProbe%2Dtoken%2Dabc123XYZ",
        "%74%64%2d%50robe-token-abc123xyz",
    ):
        assert mask_secrets(f'{{"errors": [{{"detail": "bad key {echoed}"}}]}}') == (
            '{"errors": [{"detail": "bad key ***"}]}'
        ), echoed
    assert mask_secrets("td-Probe-token-abc123XY") == "td-Probe-token-abc123XY"  # not the token: kept
    register_secret("pgsecret")  # short: only as written, or every "PGSECRET..." word would go
    assert mask_secrets("pgsecret PGSECRET") == "*** PGSECRET"
