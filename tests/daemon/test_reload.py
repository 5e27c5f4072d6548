"""SIGHUP applies what can change live, refuses by name what cannot, and says what changed."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from autoscaler.common.clock import SystemClock
from autoscaler.common.logging import configure_logging
from autoscaler.config import load_settings
from autoscaler.service.daemon import Daemon
from autoscaler.tensordock.fake import FakeServer, build_fake

from ..conftest import TOKEN
from ..core.conftest import pg_store_url  # noqa: F401 - the fixture
from .conftest import CONFIG, RunningDaemon


def test_sighup_applies_live_settings_and_refuses_restart_only_ones(daemon: Callable[..., RunningDaemon]) -> None:
    d = daemon(max_gpus=8)
    text = d.config.read_text()
    d.config.write_text(text.replace("max_gpus = 8", "max_gpus = 2").replace('level = "INFO"', 'level = "WARNING"'))
    d.process.send_signal(signal.SIGHUP)
    d.wait_until(lambda: d.metric("tensordock_autoscaler_config_reloads_total", result="ok") == 1, "the reload")
    time.sleep(2.5)  # two more cycles at the new level

    port_line = next(line for line in d.config.read_text().splitlines() if line.startswith("port = "))
    d.config.write_text(d.config.read_text().replace(port_line, "port = 1"))
    d.process.send_signal(signal.SIGHUP)
    d.wait_until(
        lambda: d.metric("tensordock_autoscaler_config_reloads_total", result="refused") == 1, "the refused reload"
    )
    assert d.get("/readyz").status_code == 200  # the old port still serves
    assert d.stop() == 0
    events = d.events()
    reloaded = next(e for e in events if e["event"] == "reloaded")
    assert reloaded["changed"] == ["guards.max_gpus", "log.level"]
    after = events[events.index(reloaded) + 1 :]
    assert not [e for e in after if e["level"] == "info"], after[:5]  # WARNING applied live
    refused = next(e for e in events if e["event"] == "reload_refused")
    assert str(refused["reason"]).startswith("metrics.port: cannot change while running")


def test_a_reload_whose_source_address_cannot_be_parsed_is_refused_not_fatal(
    daemon: Callable[..., RunningDaemon],
) -> None:
    """Before: the Redis client's ValueError escaped the reload and the daemon died."""
    d = daemon(max_gpus=2)
    text = d.config.read_text()
    start, end = text.index("[[signal.sources]]"), text.index("[store]")
    bad = '[[signal.sources]]\nkind = "redis"\noptions = { url = "http://127.0.0.1:6379/0", key = "k" }\n\n'
    d.config.write_text(text[:start] + bad + text[end:])
    d.process.send_signal(signal.SIGHUP)
    d.wait_until(
        lambda: d.metric("tensordock_autoscaler_config_reloads_total", result="refused") == 1, "the refused reload"
    )
    assert d.process.poll() is None and d.get("/readyz").status_code == 200
    assert d.stop() == 0
    refused = next(e for e in d.events() if e["event"] == "reload_refused")
    assert str(refused["reason"]).startswith("signal.sources[0] (redis): Redis URL must specify")


def test_a_token_file_rewritten_in_place_is_reported_as_a_changed_token(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Before: the new token was applied but the reload said `changed: nothing`; never its value."""
    server = FakeServer(build_fake(TOKEN, "documented", clock=SystemClock())).start()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    text = CONFIG.format(
        url=server.url, token=TOKEN, signal=tmp_path / "q.json", store=tmp_path / "s.db", port=0, max_gpus=2
    )
    config = tmp_path / "c.toml"
    config.write_text(text.replace(f'token = "{TOKEN}"', f'token_file = "{token_file}"'))
    configure_logging("INFO", json_lines=True)
    made = Daemon(load_settings(config), config)
    made.scheduler.add_job(made.run_one_cycle, "interval", id="cycle", seconds=600, next_run_time=None)
    try:
        assert made.reload()
        token_file.write_text("a-rotated-token-5678\n")
        assert made.reload()
        assert made.reload()
    finally:
        made.runtime.close()
        server.stop()
    err = capfd.readouterr().err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [e["changed"] for e in events if e["event"] == "reloaded"] == ["nothing", ["tensordock.token"], "nothing"]
    assert "a-rotated-token-5678" not in err


def test_a_reload_that_changes_the_interval_gives_the_leader_the_new_lease(
    tmp_path: Path,
    pg_store_url: str,  # noqa: F811
) -> None:
    """Before: the lease stayed as derived from the old interval: after `interval_s` 2 -> 15 a lone
    replica lost leadership every other cycle, its 10-s lease lapsing between cycles."""
    server = FakeServer(build_fake(TOKEN, "documented", clock=SystemClock())).start()
    text = CONFIG.format(url=server.url, token=TOKEN, signal=tmp_path / "q.json", store="unused", port=0, max_gpus=2)
    text = text.replace('url = "sqlite:///unused"', f'url = "{pg_store_url}"')
    text = text.replace("read_timeout_s = 5\n", "read_timeout_s = 1\ncreate_timeout_s = 1\ncall_deadline_s = 1\n")
    config = tmp_path / "c.toml"
    config.write_text(text.replace("interval_s = 1\n", "interval_s = 2\n"))
    made = Daemon(load_settings(config), config)
    made.scheduler.add_job(made.run_one_cycle, "interval", id="cycle", seconds=600, next_run_time=None)
    try:
        assert made.elector is not None and made.elector.lease_s == 10.0
        config.write_text(text.replace("interval_s = 1\n", "interval_s = 15\n"))
        assert made.reload()
        assert made.elector.lease_s == 45.0  # 3 x (15 s + 0 jitter)
        config.write_text("leader_lease_s = 90\n" + text.replace("interval_s = 1\n", "interval_s = 15\n"))
        assert made.reload()
        assert made.elector.lease_s == 90.0
    finally:
        if made.elector is not None:
            made.elector.step_down()
        made.runtime.close()
        server.stop()
