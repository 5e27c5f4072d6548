"""`status`: the fleet as a table and as JSON, managed and unmanaged, with $/h and spend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoscaler.commands.cli import main
from autoscaler.common.clock import SystemClock
from autoscaler.config import load_settings
from autoscaler.service.runtime import build_runtime
from autoscaler.tensordock.fake import FakeServer, Timings, build_fake

from ..conftest import TOKEN, create_request


def _config(tmp_path: Path, server: FakeServer, *, queued: int) -> Path:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[tensordock]\nbase_url = "{server.url}"\ntoken = "{TOKEN}"\n[fleet]\nssh_key = "k"\n'
        f'[[signal.sources]]\nkind = "static"\noptions = {{ queued = {queued} }}\n'
        f'[store]\nurl = "sqlite:///{tmp_path}/s.db"\n'
    )
    return config


def test_status_shows_managed_and_unmanaged_instances(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = build_fake(TOKEN, "documented", clock=SystemClock(), timings=Timings(create_s=0, ip_s=0))
    with FakeServer(fake) as server:
        config = _config(tmp_path, server, queued=1)
        runtime = build_runtime(load_settings(config))
        runtime.engine.run_cycle()
        chicago = next(loc.id for loc in fake.state.catalog.locations if loc.city == "Chicago")
        runtime.client.create_instance(create_request(chicago, name="someone-elses"))
        runtime.close()
        assert main(["status", "--config", str(config), "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert main(["status", "--config", str(config)]) == 0
        table = capsys.readouterr().out
    managed = {row["name"]: row["managed"] for row in data["instances"]}
    assert sorted(managed.values()) == [False, True] and managed["someone-elses"] is False
    assert data["managed_usd_per_hour"] > 0 and data["unmanaged_usd_per_hour"] > 0
    assert "MANAGED" in table and "someone-elses" in table and "spent today" in table
    assert "ID" in table.splitlines()[0]
    for row in data["instances"]:  # every line about an instance gives its name and its id
        line = next(line for line in table.splitlines() if row["name"] in line)
        assert row["id"] in line


def test_a_rate_that_is_not_a_number_is_said_unknown_and_the_json_stays_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: an unmanaged instance whose GET said rateHourly NaN gave `"unmanaged_usd_per_hour": NaN`
    (not JSON) and `$nan/h` (found by an adversarial probe)."""
    fake = build_fake(TOKEN, "documented", clock=SystemClock(), timings=Timings(create_s=0, ip_s=0))
    with FakeServer(fake) as server:
        config = _config(tmp_path, server, queued=0)
        chicago = next(loc.id for loc in fake.state.catalog.locations if loc.city == "Chicago")
        runtime = build_runtime(load_settings(config))
        runtime.client.create_instance(create_request(chicago, name="someone-elses"))
        runtime.close()
        with fake.state.lock:
            (stranger,) = fake.state.instances()
            stranger.rate_hourly = float("nan")
        assert main(["status", "--config", str(config), "--json"]) == 0
        out = capsys.readouterr().out
        assert main(["status", "--config", str(config)]) == 0
        table = capsys.readouterr().out

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    data = json.loads(out, parse_constant=refuse)
    assert data["instances"][0]["usd_per_hour"] is None and data["unmanaged_usd_per_hour"] == 0
    assert "nan" not in table.lower()
