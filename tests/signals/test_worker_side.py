"""The shipped worker cloud-init: valid, named per instance, and its heartbeat feeds the Redis source."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis
import yaml

from autoscaler.actuator import _with_name
from autoscaler.runtime import _cloud_init
from autoscaler.signals.base import Secret
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


def test_the_heartbeat_script_reports_busy_and_idle_to_the_redis_source(tmp_path: Path) -> None:
    require_server("Redis", 6379)
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli is missing (Debian package redis-tools)")
    data = yaml.safe_load(CLOUD_INIT.read_text())
    for entry in data["write_files"]:
        if entry["path"].startswith("/usr/local/bin/"):
            script = tmp_path / Path(entry["path"]).name
            script.write_text(entry["content"])
            script.chmod(0o755)
    key = f"tdas-test-workers-{os.getpid()}"
    env = {
        **os.environ,
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "TDAS_ENV_FILE": "/nonexistent",
        "REDIS_URL": "redis://127.0.0.1:6379/15",
        "HEARTBEAT_KEY": key,
        "TDAS_INSTANCE_NAME": "tdas-w1",
        "TDAS_STATE_FILE": str(tmp_path / "state"),
    }
    source = RedisSignal(
        RedisOptions(
            url=Secret.model_validate({"value": "redis://127.0.0.1:6379/15"}),
            key="tdas-test-no-queue",
            heartbeat_key=key,
        )
    )
    client = redis.Redis.from_url("redis://127.0.0.1:6379/15")
    try:
        marker = tmp_path / "seen-busy"
        job = f"redis-cli -u redis://127.0.0.1:6379/15 HGET {key} tdas-w1 > {marker}"
        subprocess.run(["tdas-run-job", "bash", "-c", job], env=env, check=True, timeout=30)
        assert marker.read_text().startswith("busy:")  # busy while the job ran
        assert source.read(time.time()).busy == {"tdas-w1": False}  # idle once it finished
        subprocess.run(["tdas-heartbeat"], env=env, check=True, timeout=30)  # the timer's refresh
        assert source.read(time.time()).busy == {"tdas-w1": False}
    finally:
        client.delete(key)
