"""`tensordock-autoscaler plan`: one dry-run cycle against the configured API, printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoscaler.commands.cli import main
from autoscaler.common.clock import SystemClock
from autoscaler.tensordock.fake import FakeServer, build_fake

from ..conftest import TOKEN


def write_config(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[tensordock]
base_url = "{url}"
token = "{TOKEN}"

[fleet]
name_prefix = "tdas"
ssh_key = "ssh-ed25519 AAAATEST test"

[[signal.sources]]
kind = "static"
options = {{ queued = 3 }}

[store]
url = "sqlite:///{tmp_path}/state.db"
{extra}
"""
    )
    return path


def test_plan_prints_the_snapshot_and_each_action_with_its_reason_and_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = build_fake(TOKEN, "documented", clock=SystemClock())
    with FakeServer(app) as server:
        config = write_config(tmp_path, server.url)
        assert main(["plan", "--config", str(config), "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert main(["plan", "--config", str(config)]) == 0
        text = capsys.readouterr().out
    assert data["snapshot"]["demand"]["queued"] == 3
    assert data["desired_gpus"] == 3
    creates = [a for a in data["actions"] if a["action"] == "create"]
    assert len(creates) == 3 and all(a["usd_per_hour"] > 0 and a["reason"] for a in creates)
    assert {r["outcome"] for r in data["results"]} == {"dry_run"}
    assert app.state.instances() == [] and app.requests["create_instance"] == 0
    assert "desired GPUs: 3" in text and "create" in text and "$/h" in text
    assert TOKEN not in text


def test_plan_refuses_a_bad_config_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/api/v2", "[guards]\nmax_gpus = -3\n")
    assert main(["plan", "--config", str(config)]) == 2
    assert "guards.max_gpus" in capsys.readouterr().err
    bad_policy = write_config(
        tmp_path, "http://127.0.0.1:9/api/v2", '[[policies]]\nname = "queue_target"\noptions = { jobs_per_gpu = 0 }\n'
    )
    assert main(["plan", "--config", str(bad_policy)]) == 2
    assert "jobs_per_gpu" in capsys.readouterr().err


def test_plan_against_an_unreachable_api_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/api/v2")
    config.write_text(config.read_text().replace('token = "', 'max_attempts = 2\nbackoff_initial_s = 0.01\ntoken = "'))
    assert main(["plan", "--config", str(config)]) == 1
    assert "cannot list instances" in capsys.readouterr().out
