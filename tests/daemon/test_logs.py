"""The log an operator reads: a summary per cycle, a line per action, a line per refusal rule."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from .conftest import RunningDaemon


def test_one_summary_per_cycle_one_line_per_action_and_per_refusal_rule(
    daemon: Callable[..., RunningDaemon],
) -> None:
    d = daemon(max_gpus=1)
    d.set_demand(queued=6)
    d.wait_until(lambda: d.phases() == ["running"], "one running instance under max_gpus = 1")
    d.wait_until(
        lambda: (d.metric("tensordock_autoscaler_cycles_total", result="ok") or 0) >= 4, "a few cycles at the cap"
    )
    assert d.stop() == 0
    events = d.events()

    summaries = [e for e in events if e["event"] == "cycle"]
    per_cycle = Counter(str(e["cycle"]) for e in summaries)
    assert len(per_cycle) >= 4 and set(per_cycle.values()) == {1}  # exactly one summary line per cycle
    for key in ("demand", "desired_gpus", "active_gpus", "usd_per_hour", "actions", "refused"):
        assert key in summaries[-1], summaries[-1]

    refusals = [e for e in events if e["event"] == "action_refused"]
    assert refusals, "the cap refused nothing?"
    assert set(Counter((str(e["cycle"]), e["rule"]) for e in refusals).values()) == {1}  # one line per rule
    for summary in summaries:
        counted = sum(int(e["count"]) for e in refusals if e["cycle"] == summary["cycle"])  # type: ignore[call-overload]
        assert counted == summary["refused"], summary

    (create,) = [e for e in events if e["event"] == "decision"]
    assert create["name"] and str(create["name"]).startswith("tdas-") and create["instance"] != create["name"]

    per_call = [e for e in events if str(e.get("logger", "")).startswith(("apscheduler", "httpx", "httpcore"))]
    assert not per_call, per_call[:3]


def test_a_poll_still_running_when_the_next_is_due_is_not_warned_about_but_a_cycle_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A slow source keeps the queue watch reading past its next run: APScheduler skipped it with a
    WARNING every watch_s. The daemon's filter drops that for the polls and keeps it for the cycle."""
    import autoscaler.service.daemon  # noqa: F401 - installs the filter on APScheduler's logger

    release = threading.Event()
    scheduler = BackgroundScheduler()
    for job_id in ("watch-queue", "cycle"):
        scheduler.add_job(release.wait, "interval", id=job_id, name=job_id, seconds=0.05, max_instances=1, args=(30,))
    with caplog.at_level(logging.WARNING, logger="apscheduler.scheduler"):
        scheduler.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any('job "cycle' in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
        time.sleep(0.3)  # more due runs of both
        release.set()
        scheduler.shutdown(wait=True)
    skipped = [r.getMessage() for r in caplog.records if "maximum number of running instances" in r.getMessage()]
    assert any('job "cycle' in m for m in skipped)
    assert not any('job "watch-queue' in m for m in skipped), skipped
