"""The command line: the fake API as its own process, and the demo walk-through."""

from __future__ import annotations

import io
import time

import httpx
import pytest

from autoscaler.commands.cli import main
from autoscaler.commands.demo import run_walkthrough
from autoscaler.tensordock import InstanceStatus
from autoscaler.tensordock.client import TensorDockClient
from tests.support import start_fake_api

from .conftest import TOKEN, create_request


def test_fake_api_command_serves_the_api_over_a_real_socket() -> None:
    process, url, log = start_fake_api(TOKEN, "--dialect", "spec", "--create-s", "0.5")
    try:
        with TensorDockClient(url, TOKEN, "spec") as client:
            chicago = next(loc.id for loc in client.list_locations() if loc.city == "Chicago")
            created = client.create_instance(create_request(chicago))
            time.sleep(0.6)
            assert client.get_instance(created.id).status is InstanceStatus.RUNNING
            client.delete_instance(created.id)
        counts = httpx.get(url.replace("/api/v2", "/_fake/requests")).json()
        assert counts["operations"]["create_instance"] == 1
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert "GET /api/v2/locations" in log.read_text() and TOKEN not in log.read_text()


def test_fake_api_refuses_to_start_without_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TDAS_FAKE_TOKEN", raising=False)
    assert main(["fake-api", "--port", "0"]) == 2
    assert "--token" in capsys.readouterr().err


def test_fake_api_refuses_bad_faults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fake-api", "--token", TOKEN, "--faults", '{"timeout_rate": 3}']) == 2
    assert "timeout_rate" in capsys.readouterr().err


def test_demo_walks_an_instance_through_its_life_and_prints_the_bill() -> None:
    out = io.StringIO()
    bill = run_walkthrough(out, speed=8.0)
    text = out.getvalue()
    for step in (
        "create  ->",
        "running ->",
        "stop    ->",
        "stopped ->",
        "modify  ->",
        "start   ->",
        "delete  ->",
        "bill",
    ):
        assert step in text
    assert "instances left: 0" in text
    assert bill > 0


def test_the_daemon_demo_serves_the_burst_and_prints_a_summary() -> None:
    from autoscaler.commands.demo import run_daemon_demo

    out = io.StringIO()
    summary = run_daemon_demo(out, wall_seconds=20, speed=420, metrics_port=0)
    text = out.getvalue()
    assert summary["jobs_served"] > 0 and summary["spend_usd"] > 0 and summary["virtual_hours"] > 2
    assert "summary after" in text and "fixed fleet" in text and "jobs arrived" in text
    assert "\033[" not in text  # not a terminal: plain lines, no redraws
    assert summary["jobs_total"] == summary["jobs_arrived"] and "mean wait" in text.split("fixed fleet")[1]
    actions = [line for line in text.splitlines() if line.startswith("> ")]
    assert actions and all(" demo-" in line for line in actions)  # names, never a cut-off UUID
