"""The real daemon as a subprocess against the fake API served from the test process."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from autoscaler.common.clock import SystemClock
from autoscaler.tensordock.fake import FakeServer, FakeTensorDockApp, Timings, build_fake
from tests.support import free_port

from ..conftest import TOKEN

_PR_SET_PDEATHSIG = 1


def dies_with_the_test() -> None:
    """preexec_fn: the kernel kills a daemon whose test process dies (a timeout, a crash, a kill),
    so that no daemon outlives its test, whatever happens to it."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def start_daemon_process(config: Path, env: dict[str, str], **popen: Any) -> subprocess.Popen[Any]:
    """`tensordock-autoscaler run` as a child that cannot outlive the test."""
    return subprocess.Popen(
        [sys.executable, "-m", "autoscaler.commands.cli", "run", "--config", str(config)],
        env=env,
        preexec_fn=dies_with_the_test,  # noqa: PLW1509 - only prctl runs between fork and exec
        **popen,
    )


CONFIG = """
dry_run = false
max_signal_age_s = 3600
offer_refresh_s = 0

[tensordock]
base_url = "{url}"
token = "{token}"
max_attempts = 2
backoff_initial_s = 0.05
read_timeout_s = 5

[fleet]
name_prefix = "tdas"
ssh_key = "ssh-ed25519 AAAATEST daemon-test"

[guards]
max_gpus = {max_gpus}
scale_down_delay_s = 3
scale_down_cooldown_s = 0

[[signal.sources]]
kind = "file"
name = "queue-file"
options = {{ path = "{signal}" }}

[store]
url = "sqlite:///{store}"

[scheduler]
interval_s = 1
jitter_s = 0
shutdown_timeout_s = 20

[metrics]
port = {port}

[log]
level = "INFO"
json_lines = true
"""


@dataclass
class RunningDaemon:
    process: subprocess.Popen[str]
    fake: FakeTensorDockApp
    server: FakeServer
    config: Path
    signal_file: Path
    store: Path
    metrics_url: str
    write_config: Callable[..., None]

    def set_demand(self, queued: int, running: int = 0) -> None:
        self.signal_file.write_text(json.dumps({"queued": queued, "running": running, "observed_at": time.time()}))

    def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"daemon exited ({self.process.returncode}) while waiting for {what}")
            if predicate():
                return
            time.sleep(0.2)
        pytest.fail(f"timed out waiting for {what}")

    def phases(self) -> list[str]:
        with self.fake.state.lock:
            self.fake.state.settle()
            return sorted(i.phase for i in self.fake.state.instances())

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.metrics_url}{path}", timeout=5)

    def metric(self, name: str, **labels: str) -> float | None:
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return None

    def journal_outcomes(self) -> list[str | None]:
        with sqlite3.connect(self.store) as db:
            return [row[0] for row in db.execute("SELECT outcome FROM journal ORDER BY id")]

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines the daemon wrote to stderr (read once it has stopped)."""
        assert self.process.stderr is not None
        return [json.loads(line) for line in self.process.stderr.read().splitlines() if line.startswith("{")]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., RunningDaemon]]:
    started: list[RunningDaemon] = []

    def start(
        fake_faults: Any = None,
        max_gpus: int = 8,
        env_extra: dict[str, str] | None = None,
        interval_s: float = 1,
        scheduler_extra: str = "",
    ) -> RunningDaemon:
        fake = build_fake(
            TOKEN,
            "documented",
            clock=SystemClock(),
            timings=Timings(create_s=1, ip_s=0.5, start_s=1, stop_s=0.5),
            faults=fake_faults,
        )
        server = FakeServer(fake).start()
        port = free_port()
        config, signal_file, store = tmp_path / "config.toml", tmp_path / "queue.json", tmp_path / "state.db"

        def write_config(**overrides: Any) -> None:
            values = {
                "url": server.url,
                "token": TOKEN,
                "signal": signal_file,
                "store": store,
                "port": port,
                "max_gpus": max_gpus,
                **overrides,
            }
            scheduler = f"[scheduler]\ninterval_s = {interval_s:g}\n{scheduler_extra}\n"
            config.write_text(CONFIG.format(**values).replace("[scheduler]\ninterval_s = 1\n", scheduler))

        write_config()
        signal_file.write_text(json.dumps({"queued": 0, "running": 0, "observed_at": time.time()}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("TDAS_")} | (env_extra or {})
        process = start_daemon_process(config, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        running = RunningDaemon(
            process, fake, server, config, signal_file, store, f"http://127.0.0.1:{port}", write_config
        )
        started.append(running)

        def ready() -> bool:
            try:
                return running.get("/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        running.wait_until(ready, "/readyz")
        return running

    yield start
    for running in started:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait(timeout=10)
        running.server.stop()
