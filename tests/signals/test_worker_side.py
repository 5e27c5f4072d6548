"""The shipped worker cloud-init: valid, named per instance, and its heartbeat feeds the Redis source."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import yaml

from autoscaler.engine.actuator import _with_name
from autoscaler.service.runtime import _cloud_init
from autoscaler.signals.redis_queue import RedisOptions, RedisSignal

from ..conftest import REPO
from .conftest import require_server

CLOUD_INIT = REPO / "deploy/worker/cloud-init.yaml"


def test_cloud_init_is_a_mapping_and_gets_each_instance_name() -> None:
    data = _cloud_init(CLOUD_INIT)
    assert data is not None and {"write_files", "runcmd", "packages"} <= set(data)
    named = _with_name(data, "tdas-0a1b2c3d4e")
    name_file = next(f for f in named["write_files"] if f["path"] == "/etc/tdas/instance-name")
    assert name_file["content"] == "tdas-0a1b2c3d4e"
    assert "${TDAS_INSTANCE_NAME}" not in yaml.safe_dump(named)


def test_each_instance_is_told_its_width_and_the_worker_takes_only_its_class(tmp_path: Path) -> None:
    from autoscaler.core.widths import takes

    named = _with_name(_cloud_init(CLOUD_INIT), "tdas-w8", 8)
    gpus_file = next(f for f in named["write_files"] if f["path"] == "/etc/tdas/instance-gpus")
    assert gpus_file["content"] == "8"
    assert "${TDAS_INSTANCE_GPUS}" not in yaml.safe_dump(named)
    _install_scripts(tmp_path)
    script = str(tmp_path / "tdas-takes-job")
    base = {**os.environ, "TDAS_ENV_FILE": "/nonexistent"}
    for classes in ("1", "0"):
        for have in (1, 2, 4, 8):
            for want in range(1, 10):
                env = {**base, "TDAS_INSTANCE_GPUS": str(have), "WIDTH_CLASSES": classes}
                took = subprocess.run([script, str(want)], env=env, check=False).returncode == 0
                # the worker's rule is the one the simulator and the policy assume
                expected = takes(have, want) if classes == "1" else want <= have
                assert took == expected, (classes, have, want)


def _install_scripts(tmp_path: Path) -> None:
    data = yaml.safe_load(CLOUD_INIT.read_text())
    for entry in data["write_files"]:
        if entry["path"].startswith("/usr/local/bin/"):
            script = tmp_path / Path(entry["path"]).name
            script.write_text(entry["content"])
            script.chmod(0o755)


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_a_worker_stays_busy_while_any_of_its_jobs_runs(tmp_path: Path) -> None:
    """Two overlapping jobs: the first to end must not mark the worker idle; a killed job expires."""
    require_server("Redis", 6379)
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli is missing (Debian package redis-tools)")
    _install_scripts(tmp_path)
    key = f"tdas-test-workers-{os.getpid()}"
    env = {
        **os.environ,
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "TDAS_ENV_FILE": "/nonexistent",
        "TDAS_REDIS_PASSWORD_FILE": "/nonexistent",
        "REDIS_URL": "redis://127.0.0.1:6379/15",
        "HEARTBEAT_KEY": key,
        "TDAS_INSTANCE_NAME": "tdas-w1",
        "JOB_TTL_S": "3",
    }
    source = RedisSignal(RedisOptions(url="redis://127.0.0.1:6379/15", key="tdas-test-no-queue", heartbeat_key=key))
    client = redis.Redis.from_url("redis://127.0.0.1:6379/15")
    jobs: list[subprocess.Popen[bytes]] = []

    def job(release: str) -> subprocess.Popen[bytes]:
        wait = f"while [ ! -e {tmp_path / release} ]; do sleep 0.1; done"
        process = subprocess.Popen(["tdas-run-job", "bash", "-c", wait], env=env, start_new_session=True)
        jobs.append(process)
        return process

    def running() -> int:
        return int(client.zcard(f"{key}:jobs:tdas-w1"))

    def busy() -> bool | None:
        return (source.read(time.time()).busy or {}).get("tdas-w1")

    try:
        first, second = job("release-1"), job("release-2")
        _wait(lambda: running() == 2, "both jobs to register")
        assert busy() is True
        (tmp_path / "release-1").touch()
        assert first.wait(timeout=20) == 0
        assert busy() is True  # the second job still runs: the first one's end did not mark it idle
        subprocess.run(["tdas-heartbeat"], env=env, check=True, timeout=30)  # the timer's refresh
        assert busy() is True
        time.sleep(4)  # past JOB_TTL_S: the running job's entry was renewed, not left to expire
        subprocess.run(["tdas-heartbeat"], env=env, check=True, timeout=30)
        assert busy() is True and running() == 1
        (tmp_path / "release-2").touch()
        assert second.wait(timeout=20) == 0
        assert busy() is False

        crashed = job("release-never")
        _wait(lambda: running() == 1, "the third job to register")
        os.killpg(crashed.pid, signal.SIGKILL)  # the wrapper dies with its job: no 'end' is written
        crashed.wait(timeout=10)
        subprocess.run(["tdas-heartbeat"], env=env, check=True, timeout=30)
        assert busy() is True  # its entry has not expired yet

        def idle_after_refresh() -> bool:
            subprocess.run(["tdas-heartbeat"], env=env, check=True, timeout=30)
            return busy() is False

        _wait(idle_after_refresh, "the killed job's entry to expire")
    finally:
        for process in jobs:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        client.delete(key, f"{key}:jobs:tdas-w1")


def test_the_redis_password_never_reaches_a_command_line() -> None:
    """redis-cli gets the password through REDISCLI_AUTH from a root-only file, not from `-u` or argv."""
    data = yaml.safe_load(CLOUD_INIT.read_text())
    files = {entry["path"]: entry for entry in data["write_files"]}
    assert "@" not in files["/etc/tdas/worker.env"]["content"]  # no password inside the URL
    assert files["/etc/tdas/redis-password"]["permissions"] == "0600"
    assert "REDISCLI_AUTH" in files["/usr/local/bin/tdas-heartbeat"]["content"]
