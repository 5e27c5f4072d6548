"""Local servers for tests and benchmarks (not installed with the package): a real Prometheus
scraping an exporter we run, and the fake TensorDock API as its own process."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from autoscaler.common.wsgi import free_port

__all__ = ["LocalPrometheus", "free_port", "start_fake_api"]


@dataclass
class LocalPrometheus:
    """Debian's `prometheus` on a loopback port, scraping (every second) gauges this process sets."""

    url: str = ""
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _process: subprocess.Popen[bytes] | None = None
    _workdir: Path | None = None
    _exporter: Any = None

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, list(labels), registry=self.registry)

    def start(self, timeout_s: float = 30.0) -> LocalPrometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("the prometheus binary is missing; install Debian's 'prometheus' package")
        exporter_port = free_port()
        self._exporter = start_http_server(exporter_port, addr="127.0.0.1", registry=self.registry)
        port = free_port()
        self._workdir = Path(tempfile.mkdtemp(prefix="tdas-prom-"))
        config = self._workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: queue\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n"
        )
        self._process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self._workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                err = self._process.stderr.read().decode()[-500:] if self._process.stderr else ""
                self.stop()
                raise RuntimeError(f"Prometheus did not start: {err}")
            time.sleep(0.2)

    def wait_for(self, query: str, expected: float, timeout_s: float = 20.0) -> None:
        """Block until the query's summed value equals `expected` (scrapes lag by a second or two)."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                result = httpx.get(f"{self.url}/api/v1/query", params={"query": query}, timeout=2).json()
                last = [float(r["value"][1]) for r in result["data"]["result"]]
                if last and abs(sum(last) - expected) < 1e-9:
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"Prometheus never showed {query} == {expected} (last {last})")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
        if self._exporter is not None:
            server, thread = self._exporter
            server.shutdown()
            thread.join(timeout=5)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)


def start_fake_api(token: str, *flags: str, timeout_s: float = 20.0) -> tuple[subprocess.Popen[str], str, Path]:
    """`tensordock-autoscaler fake-api` as its own process on a free port.

    Returns the process, its API URL and the file its log goes to (a pipe would fill and stall it).
    """
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="tdas-fake-api-", suffix=".log")[1])
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "autoscaler.commands.cli",
                "fake-api",
                "--port",
                str(port),
                "--token",
                token,
                *flags,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/_fake/faults", timeout=1)
            return process, f"http://127.0.0.1:{port}/api/v2", log_path
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"fake-api did not come up: {log_path.read_text()[-500:]}") from None
            time.sleep(0.1)
