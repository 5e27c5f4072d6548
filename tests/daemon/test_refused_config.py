"""Configuration refused up front: exit 2, one line naming the field, every problem in one pass."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from autoscaler.commands.cli import main
from autoscaler.signals import SignalError
from autoscaler.signals.static import FileSignal
from tests.support import free_port

from ..conftest import TOKEN

Run = Callable[..., tuple[int, str, str]]

BASE = """
{top}
[tensordock]
base_url = "{base_url}"
{token_line}
[fleet]
ssh_key = "ssh-ed25519 AAAATEST refused"
{fleet}
[store]
url = "{store_url}"
[metrics]
port = {port}
{end}
"""


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    def go(*args: str, **values: object) -> tuple[int, str, str]:
        config = tmp_path / "config.toml"
        defaults: dict[str, object] = {
            "top": "",
            "base_url": f"http://127.0.0.1:{free_port()}/api/v2",
            "token_line": f'token = "{TOKEN}"',
            "fleet": "",
            "store_url": f"sqlite:///{tmp_path / 'state.db'}",
            "port": 0,
            "end": "",
        }
        config.write_text(BASE.format(**{**defaults, **values}))
        command, *rest = args
        where = [str(config)] if command == "check-config" else ["--config", str(config)]
        code = main([command, *where, *rest])
        out, err = capsys.readouterr()
        return code, out, err

    return go


def _problems(err: str) -> list[str]:
    return [line.removeprefix("  - ") for line in err.splitlines() if line.startswith("  - ")]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"store_url": "mysql://db/tdas"}, "store.url"),
        ({"store_url": "sqlite:///var/lib/state.db"}, "store.url"),
        ({"end": "[scheduler]\ninterval_s = inf"}, "scheduler.interval_s"),
        ({"base_url": "not a url"}, "tensordock.base_url"),
        ({"top": "max_signal_age_s = inf"}, "max_signal_age_s"),
        ({"fleet": 'cloud_init_file = "/nonexistent/cloud-init.yaml"'}, "fleet.cloud_init_file"),
        ({"end": "[guards]\nmin_gpus = 5\nmax_gpus = 2"}, "guards"),
        ({"end": '[[signal.sources]]\nkind = "static"\noptions = { queued = "3" }'}, "signal.sources[0]"),
        ({"end": '[[signal.sources]]\nkind = "static"\noptions = { queued = true }'}, "signal.sources[0]"),
        ({"end": '[[signal.sources]]\nkind = "static"\noptions = { queued = 3.9 }'}, "signal.sources[0]"),
    ],
    ids=[
        "store-scheme",
        "store-relative",
        "interval-inf",
        "base-url",
        "signal-age-inf",
        "cloud-init",
        "min-above-max",
        "demand-string",
        "demand-bool",
        "demand-fraction",
    ],
)
def test_each_mistake_is_refused_by_check_config_naming_its_field(
    run: Run, override: dict[str, str], field: str
) -> None:
    code, out, err = run("check-config", **override)
    problems = _problems(err)
    assert code == 2, out + err
    assert len(problems) == 1 and problems[0].startswith(field), err
    assert "Traceback" not in err and ": Value error" not in err


def test_a_store_path_under_a_file_is_refused(run: Run, tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    code, _, err = run("check-config", store_url=f"sqlite:///{a_file}/state.db")
    assert code == 2 and any(p.startswith("store.url") and "is a file" in p for p in _problems(err)), err


def test_every_problem_in_one_pass(run: Run) -> None:
    end = """
[scheduler]
interval_s = inf
[guards]
min_gpus = 5
max_gpus = 2
[[policies]]
name = "nope"
[[signal.sources]]
kind = "static"
options = { queued = "3" }
"""
    code, _, err = run(
        "check-config", top="max_signal_age_s = inf", base_url="not a url", store_url="mysql://x", end=end
    )
    fields = {p.split(":")[0].split(" ")[0] for p in _problems(err)}
    assert code == 2
    assert {
        "tensordock.base_url",
        "guards",
        "signal.sources[0]",
        "policies[0].name",
        "store.url",
        "scheduler.interval_s",
        "max_signal_age_s",
    } <= fields, err


def test_an_unreachable_postgres_store_is_refused_only_under_connect(run: Run) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    code, _, err = run("check-config", store_url=dead)
    assert code == 0, err
    code, _, err = run("check-config", "--connect", store_url=dead)
    problems = _problems(err)
    assert code == 2
    assert any(p.startswith("store.url: cannot open postgresql://") for p in problems), err
    assert any(p.startswith("tensordock.base_url") for p in problems), err  # the API was tried: nothing there
    assert "Traceback" not in err


def test_connect_tries_every_source(run: Run) -> None:
    sources = f"""
[[signal.sources]]
kind = "redis"
options = {{ url = "redis://127.0.0.1:{free_port()}/0", key = "q", timeout_s = 1 }}
[[signal.sources]]
kind = "static"
options = {{ queued = 1 }}
"""
    code, _, err = run("check-config", "--connect", end=sources)
    problems = _problems(err)
    assert code == 2
    assert any(p.startswith("signal.sources[0] (redis)") for p in problems), err
    assert not any(p.startswith("signal.sources[1]") for p in problems), err


def test_a_world_readable_token_file_is_warned_about(run: Run, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o644)
    code, _, err = run("check-config", token_line=f'token_file = "{token}"')
    assert code == 0
    assert "warning: tensordock.token_file:" in err and "chmod 600" in err
    holder = socket.socket()  # `run` warns too; the busy port then stops it before it serves
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        code, _, err = run("run", token_line=f'token_file = "{token}"', port=holder.getsockname()[1])
    finally:
        holder.close()
    assert code == 2 and "run: warning: tensordock.token_file:" in err


def test_a_metrics_port_in_use_is_refused_by_name(run: Run) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        port = holder.getsockname()[1]
        code, _, err = run("run", port=port)
    finally:
        holder.close()
    assert code == 2
    assert f"metrics.port: cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "store",
    [
        "sqlite:////proc/tdas-cannot-write/state.db",
        "postgresql://no_such_role_tdas@127.0.0.1:5432/postgres",
    ],
)
def test_a_store_that_cannot_be_opened_is_one_line(run: Run, store: str) -> None:
    code, _, err = run("plan", store_url=store)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("plan: invalid configuration: store.url: cannot open"), err


def test_an_unreadable_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ['"3"', "true", "3.9"])
def test_demand_values_are_never_coerced(tmp_path: Path, value: str) -> None:
    path = tmp_path / "queue.json"
    path.write_text(f'{{"queued": {value}, "observed_at": {time.time()}}}')
    with pytest.raises(SignalError, match="queued"):
        FileSignal(path).read(time.time())
    path.write_text(json.dumps({"queued": 3, "observed_at": time.time()}))
    assert FileSignal(path).read(time.time()).queued_jobs == 3


def _plan_on_queue_file(run: Run, path: Path) -> tuple[int, str, str]:
    """`plan` against the fake, its demand read from the queue file at `path`."""
    from autoscaler.tensordock.fake import FakeServer, build_fake

    source = f'[[signal.sources]]\nkind = "file"\noptions = {{ path = "{path}" }}'
    server = FakeServer(build_fake(TOKEN, "observed")).start()
    try:
        return run("plan", base_url=server.url, end=source)
    finally:
        server.stop()


def test_plan_exits_non_zero_when_demand_is_unknown(run: Run, tmp_path: Path) -> None:
    code, out, err = _plan_on_queue_file(run, tmp_path / "no-queue.json")
    assert code == 1, out + err
    assert "could not plan: demand unknown" in err


def test_a_demand_stamped_at_no_real_time_says_so(run: Run, tmp_path: Path) -> None:
    """Before: `observed_at: -1e308` was reported as "stale by 1000...(300 digits)s"."""
    queue = tmp_path / "queue.json"
    queue.write_text('{"queued": 1, "running": 0, "observed_at": -1e308}')
    code, out, err = _plan_on_queue_file(run, queue)
    assert code == 1 and "observed_at -1e+308 is not a time of the last ten years" in err, out + err


def test_plan_exits_non_zero_when_the_offers_cannot_be_read(run: Run) -> None:
    """Before: discovery answered an HTML page with a 200, and `plan` said `0 offers; actions: none`
    and exit 0, as if nothing were needed (found by an adversarial probe)."""
    from typing import Any

    from autoscaler.common.wsgi import BackgroundServer
    from autoscaler.tensordock.fake import build_fake

    fake = build_fake(TOKEN, "observed")

    def maintenance(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"].endswith(("/locations", "/hostnodes")):
            start_response("200 OK", [("Content-Type", "text/html")])
            return [b"<html><body>Down for maintenance</body></html>"]
        return fake(environ, start_response)

    server = BackgroundServer(maintenance, "127.0.0.1", 0, name="html-discovery")
    server.start()
    try:
        source = '[[signal.sources]]\nkind = "static"\noptions = { queued = 2 }'
        code, out, err = run("plan", base_url=f"http://127.0.0.1:{server.port}/api/v2", end=source)
    finally:
        server.stop()
    assert code == 1, out + err
    assert "could not plan: offers unavailable" in err


def test_simulate_refuses_a_plot_into_a_missing_folder_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("submit_time,duration,gpus\n0,3600,1\n")
    started = time.monotonic()
    code = main(["simulate", "--trace", str(trace), "--plot", str(tmp_path / "missing" / "plot.png")])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - started < 10  # refused up front, not after a run
    assert "missing does not exist" in err and "Traceback" not in err


def test_run_names_every_missing_piece_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bare.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "s.db"}"\n[metrics]\nport = 0\n')
    assert not [k for k in os.environ if k.startswith("TDAS_")], "a TDAS_ variable would change this test"
    assert main(["run", "--config", str(config)]) == 2
    problems = _problems(capsys.readouterr().err)
    assert [p.split(":")[0] for p in problems] == ["tensordock.token", "fleet.ssh_key"]


def test_a_refused_token_is_blamed_on_the_token_not_the_address(run: Run) -> None:
    from autoscaler.tensordock.fake import FakeServer, build_fake

    with FakeServer(build_fake("the-real-token", "documented")) as server:
        code, _, err = run("check-config", "--connect", base_url=server.url)
    problems = _problems(err)
    assert code == 2
    assert any(p.startswith("tensordock.token: TensorDock at") and "refused the token" in p for p in problems), err
    assert not any(p.startswith("tensordock.base_url") for p in problems), err
    assert TOKEN not in err and "Traceback" not in err


BAD_REDIS_URL = """
[[signal.sources]]
kind = "redis"
options = { url = "http://127.0.0.1:6379/0", key = "k" }
"""


@pytest.mark.parametrize("command", ["check-config", "plan", "status"])
def test_an_address_the_source_library_refuses_is_one_line_naming_the_source(run: Run, command: str) -> None:
    """Before: check-config passed it, and plan, status and run died with the library's traceback."""
    code, _, err = run(command, end=BAD_REDIS_URL)
    assert code == 2, err
    assert "signal.sources[0] (redis): Redis URL must specify" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2, err


def test_spend_over_ten_years_back_is_a_usage_error(run: Run) -> None:
    code, _, err = run("spend", "--days", "100000000")
    assert code == 2 and "--days must be from 1 to 3660" in err and "Traceback" not in err


def test_a_store_file_that_is_not_a_database_says_how_to_recover(run: Run, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"\x00not a sqlite database\xff" * 500)
    code, _, err = run("plan", store_url=f"sqlite:///{damaged}")
    assert code == 2 and "store.url: cannot open" in err and "restore it from a backup" in err, err
    assert "Traceback" not in err
