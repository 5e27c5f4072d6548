"""Configuration as operators write it: durations with units, plain strings for credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoscaler.config import ConfigError, load_settings
from autoscaler.signals.base import Secret
from autoscaler.signals.registry import SignalSettings, SignalSpec, validate_signal_settings

FILE = """
[tensordock]
read_timeout_s = "1m30s"
[scheduler]
interval_s = "10m"
[guards]
scale_down_cooldown_s = "1h30m"
[[policies]]
name = "idle"
options = { idle_timeout_s = "15m" }
[[signal.sources]]
kind = "redis"
options = { url = "redis://127.0.0.1:6379/0", key = "q", timeout_s = "2s", heartbeat_ttl_s = "2m" }
"""


def test_durations_with_units_in_the_file_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text(FILE)
    monkeypatch.setenv("TDAS_GUARDS__SCALE_DOWN_DELAY_S", "90s")
    monkeypatch.setenv("TDAS_MAX_SIGNAL_AGE_S", "1h")
    settings = load_settings(config)
    assert settings.tensordock.read_timeout_s == 90
    assert settings.scheduler.interval_s == 600
    assert settings.guards.scale_down_cooldown_s == 5400
    assert settings.guards.scale_down_delay_s == 90
    assert settings.max_signal_age_s == 3600
    from autoscaler.core.policy import build_chain

    (idle,) = build_chain(settings.policies)
    assert idle.options.idle_timeout_s == 900  # type: ignore[attr-defined]
    ((_, options, _),) = validate_signal_settings(settings.signal)
    assert options.timeout_s == 2 and options.heartbeat_ttl_s == 120  # type: ignore[attr-defined]


def test_a_malformed_duration_names_its_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TDAS_SCHEDULER__INTERVAL_S", "ten minutes")
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    assert str(caught.value).startswith("scheduler.interval_s: 'ten minutes' is not a duration")


@pytest.mark.parametrize(
    ("kind", "options", "field"),
    [
        ("redis", {"url": "redis://:pw-1@127.0.0.1/0", "key": "q"}, "url"),
        ("rabbitmq", {"url": "amqp://u:pw-1@127.0.0.1/%2F", "queue": "q"}, "url"),
        ("nats", {"url": "nats://u:pw-1@127.0.0.1:4222", "stream": "s", "consumer": "c"}, "url"),
        ("postgres", {"dsn": "postgresql://u:pw-1@127.0.0.1/db", "query": "SELECT 1, 0"}, "dsn"),
        ("prometheus", {"queued_query": "q", "bearer_token": "pw-1"}, "bearer_token"),
        ("http", {"url": "http://127.0.0.1/q", "queued_path": "n", "bearer_token": "pw-1"}, "bearer_token"),
    ],
)
def test_a_plain_string_is_a_credential_for_every_source(kind: str, options: dict[str, str], field: str) -> None:
    ((_, checked, _),) = validate_signal_settings(SignalSettings(sources=[SignalSpec(kind=kind, options=options)]))
    secret = getattr(checked, field)
    assert isinstance(secret, Secret) and secret.value is not None
    assert "pw-1" in secret.value.get_secret_value() and "pw-1" not in repr(checked)
