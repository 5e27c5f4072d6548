"""The log an operator reads: a summary per cycle, a line per action, a line per refusal rule."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

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
